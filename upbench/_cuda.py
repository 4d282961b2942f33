"""Compile and launch upbench's .cu kernels on CUDA through CuPy (NVRTC): a generic loader.

A kernel family (``kernels/<family>.cu``) is compiled with the preprocessor defines its binding passes (its
lane model: ``UPB_LANES``, ``UPB_WARPS``, …); nothing here knows a family. One compiled module per (family,
defines, device), built on first use and cached; CuPy's own disk cache keeps
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

Defines = tuple[tuple[str, int], ...]  # ordered (name, value) pairs: hashable, so a cache key

STD = "c++17"
# The floating-point mode of every GPU build, stated once. CuPy appends -ftz=true to whatever options it is
# given (and NVRTC honours the last occurrence), so the kernels always run with fp32 subnormals flushed; we
# say so explicitly, and kernel_stats (nvcc) and the CPU shim (MXCSR FTZ+DAZ) use the same mode
# (docs/kernels.md, "Floating-point mode").
FLOAT_OPTIONS: tuple[str, ...] = ("--ftz=true", "--prec-div=true", "--prec-sqrt=true", "--fmad=true")


def _defines(defines: Defines) -> list[str]:
    return [f"-D{k}={v}" for k, v in defines]


def nvrtc_options(defines: Defines) -> tuple[str, ...]:
    """NVRTC options of a family's build (what CuPy compiles with, before its own trailing -ftz=true)."""
    # -default-device: NVRTC treats the lambdas inside device functions as host code without it (nvcc does not).
    return (f"--std={STD}", "-default-device", *FLOAT_OPTIONS, *_defines(defines))


def nvcc_options(defines: Defines) -> list[str]:
    """The same build for nvcc (kernel_stats): identical defines, language standard and float mode."""
    return [f"-std={STD}", *FLOAT_OPTIONS, *_defines(defines)]


def unavailable_reason() -> str | None:
    """None when CUDA kernels can run here, else why not."""
    if not torch.cuda.is_available():
        return "needs a CUDA device (torch.cuda.is_available() is False)"
    return _optional.reason("cupy")


_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"\s*$', re.MULTILINE)


def _expand(family: str) -> tuple[str, list[str]]:
    seen: list[str] = []

    def expand(name: str) -> str:
        if name in seen:
            return ""
        seen.append(name)
        text = (kernel_dir() / name).read_text()
        return _INCLUDE.sub(lambda m: expand(m.group(1)), text)

    return expand(f"{family}.cu"), seen


@cache
def source(family: str) -> str:
    """``kernels/<family>.cu`` with its local includes inlined (each once, as ``#pragma once`` would)."""
    return _expand(family)[0]


def include_closure(family: str) -> list[str]:
    """File names (in kernels/) that the GPU build of ``family`` reads: the .cu and every header it includes."""
    return _expand(family)[1]


_lock = threading.Lock()
_functions: dict[tuple[str, Defines, str, int], Any] = {}
_modules: dict[tuple[str, Defines, int], Any] = {}


def function(family: str, entry: str, device: int, defines: Defines) -> Any:
    """The compiled kernel ``entry`` of ``family`` built with ``defines`` on CUDA device ``device``."""
    key = (family, defines, entry, device)
    fn = _functions.get(key)
    if fn is not None:
        return fn
    reason = unavailable_reason()
    if reason:
        raise RuntimeError(f"cupy kernels: {reason}")
    cp = _optional.require("cupy")
    with _lock:
        with cp.cuda.Device(device):
            mod = _modules.get((family, defines, device))
            if mod is None:
                mod = cp.RawModule(code=source(family), options=nvrtc_options(defines), backend="nvrtc")
                _modules[(family, defines, device)] = mod
            fn = _functions[key] = mod.get_function(entry)
    return fn


def launch(family: str, entry: str, defines: Defines, items: int, *args: torch.Tensor | int,
           grid_y: int = 1) -> None:
    """Run kernel ``entry`` over ``items`` warp work items (× ``grid_y``) on torch's current stream.

    The block is ``UPB_LANES × UPB_WARPS`` threads (from ``defines``), one warp per item."""
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
    d = dict(defines)
    grid = min(-(-items // d["UPB_WARPS"]), 2**31 - 1)  # the kernels grid-stride past this
    cp = _optional.require("cupy")
    fn = function(family, entry, device.index, defines)
    with cp.cuda.Device(device.index), cp.cuda.ExternalStream(torch.cuda.current_stream(device).cuda_stream):
        fn((grid, grid_y), (d["UPB_LANES"] * d["UPB_WARPS"],), tuple(packed))
