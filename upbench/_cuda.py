"""Compile and launch upbench's .cu kernels on CUDA through CuPy (NVRTC).

One compiled module per (kernel family, device), built on first use and cached; CuPy's own disk cache keeps
the cubin across processes (its key covers the full source text, which is why local ``#include``s are
inlined here rather than left to NVRTC). Kernels run on torch's current stream, every buffer comes from
torch (CuPy never allocates, so torch's memory statistics see everything), and scalars are packed as numpy
int64 — a Python int would be packed by CuPy with a width of its own choosing.
"""

from __future__ import annotations

import re
import threading
from functools import cache
from typing import Any

import numpy as np
import torch

from . import _optional
from ._cpu_shim import kernel_dir

# The CUDA build's lane model (kernels/upb_common.cuh): 32-lane warps, 4 warps a block, 8 channels per lane
# per chunk, children in pairs. The launch geometry below and kernel_stats use the same numbers.
DEFINES: dict[str, int] = {"UPB_LANES": 32, "UPB_WARPS": 4, "UPB_VPT": 8, "UPB_VPT_T": 8, "UPB_NC": 2}
BLOCK = DEFINES["UPB_LANES"] * DEFINES["UPB_WARPS"]
CHUNK_T = DEFINES["UPB_LANES"] * DEFINES["UPB_VPT_T"]  # channels per warp per atn_t chunk (its grid.y)
STD = "c++17"
# -default-device: NVRTC treats the lambdas inside device functions as host code without it (nvcc does not).
NVRTC_OPTIONS: tuple[str, ...] = (f"--std={STD}", "-default-device", *(f"-D{k}={v}" for k, v in DEFINES.items()))


def nvcc_options() -> list[str]:
    """The same build for nvcc (kernel_stats): identical defines and language standard."""
    return [f"-std={STD}", *(f"-D{k}={v}" for k, v in DEFINES.items())]


def unavailable_reason() -> str | None:
    """None when CUDA kernels can run here, else why not."""
    if not torch.cuda.is_available():
        return "needs a CUDA device (torch.cuda.is_available() is False)"
    return _optional.reason("cupy")


_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"\s*$', re.MULTILINE)


@cache
def source(family: str) -> str:
    """``kernels/<family>.cu`` with its local includes inlined (each once, as ``#pragma once`` would)."""
    seen: set[str] = set()

    def expand(name: str) -> str:
        if name in seen:
            return ""
        seen.add(name)
        text = (kernel_dir() / name).read_text()
        return _INCLUDE.sub(lambda m: expand(m.group(1)), text)

    return expand(f"{family}.cu")


_lock = threading.Lock()
_functions: dict[tuple[str, str, int], Any] = {}
_modules: dict[tuple[str, int], Any] = {}


def function(family: str, entry: str, device: int) -> Any:
    """The compiled kernel ``entry`` of ``family`` on CUDA device ``device`` (compiled on first use)."""
    key = (family, entry, device)
    fn = _functions.get(key)
    if fn is not None:
        return fn
    reason = unavailable_reason()
    if reason:
        raise RuntimeError(f"cupy kernels: {reason}")
    cp = _optional.require("cupy")
    with _lock:
        with cp.cuda.Device(device):
            mod = _modules.get((family, device))
            if mod is None:
                mod = cp.RawModule(code=source(family), options=NVRTC_OPTIONS, backend="nvrtc")
                _modules[(family, device)] = mod
            fn = _functions[key] = mod.get_function(entry)
    return fn


def launch(family: str, entry: str, items: int, *args: torch.Tensor | int, grid_y: int = 1) -> None:
    """Run kernel ``entry`` over ``items`` warp work items (× ``grid_y``) on torch's current stream."""
    if items <= 0 or grid_y <= 0:
        return
    if grid_y > 65535:
        raise ValueError(f"{entry}: grid.y={grid_y} exceeds CUDA's 65535")
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    device = tensors[0].device
    packed = []
    for a in args:
        if isinstance(a, torch.Tensor):
            if a.device != device or not a.is_contiguous():
                raise ValueError(f"{entry}: tensors must be contiguous and on one CUDA device ({device})")
            packed.append(np.uint64(a.data_ptr()))
        else:
            packed.append(np.int64(a))
    grid = min(-(-items // DEFINES["UPB_WARPS"]), 2**31 - 1)  # the kernels grid-stride past this
    cp = _optional.require("cupy")
    fn = function(family, entry, device.index)
    with cp.cuda.Device(device.index), cp.cuda.ExternalStream(torch.cuda.current_stream(device).cuda_stream):
        fn((grid, grid_y), (BLOCK,), tuple(packed))
