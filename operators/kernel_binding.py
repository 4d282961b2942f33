"""The one binding of upbench's .cu kernel families to torch: lane models, dtype suffixes, argument checks,
launching, and the source closure of each family (provenance).

Every family (``kernels/<family>.cu``, bound in ``operators/<family>_kernels.py``; today the one family
``window_attn``, which SAPA's and CARAFE's bindings also launch) goes through
:class:`Family`: ``family.launch(kernel, items, *args, grid_y=…)`` runs ``<family>_<kernel>_<suffix>`` on the
tensors' device — the CuPy build on CUDA (``upbench._cuda``), the host shim on the CPU (``upbench._cpu_shim``)
— with the lane model that build needs. The lane models live here, once: the GPU's (``GPU_DEFINES``, also
what the ``weak`` shim variant and ``kernel_stats`` compile with) and the CPU variants'.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from upbench import _cpu_shim, _cuda

MAX_K = 15  # UPB_MAX_K in kernels/upb_common.cuh: the per-warp similarity scratch holds K² ≤ 225 slots
SUFFIX: dict[torch.dtype, str] = {torch.float64: "f64", torch.float32: "f32", torch.float16: "f16",
                                  torch.bfloat16: "bf16"}

Defines = tuple[tuple[str, int], ...]


def _defs(**kw: int) -> Defines:
    return tuple((f"UPB_{k}", v) for k, v in kw.items())


# The GPU build's lane model (kernels/upb_common.cuh): 32-lane warps, 4 warps a block, 8 channels per lane per
# chunk (also for atn_t's chunks), children in pairs.
GPU_DEFINES: Defines = _defs(LANES=32, WARPS=4, VPT=8, VPT_T=8, NC=2)
# The CPU shim's builds. fast: measured fastest on the 2-core AVX-512 development machine (NC=4 × VPT=64: 16 zmm
# accumulators; atn_t with 256-channel chunks reads its high-res rows in fewer passes); on a CPU without AVX-512
# (16 ymm registers of 8 floats) NC=2 × VPT=32 (8 ymm accumulators; the fused dot products hold NC × 4) and
# 64-channel atn_t chunks measured fastest (Zen 3) — the AVX-512 blocking spilled there in every inner loop —
# and the unfused sim takes 4 children × 3 slots (NC_SIM=4: 12 accumulators, each key row loaded once for all
# s² = 4 children of SAPA's ×2; 8–12 % faster than 2 × 4 there). The CPU builds' prefetch (UPB_SPREAD_PF in
# window_attn.cu) needs no define. count is built for AVX2 (valgrind), so it takes the AVX2 blocking.
# simt/asan-simt: 2 warps and 2 channels per lane so tiny shapes still have chunk tails. weak: exactly the GPU's
# lane model.
_FAST_AVX512 = _defs(LANES=1, WARPS=1, VPT=64, VPT_T=256, NC=4, T_SCATTER_BYTES=64)
_FAST_AVX2 = _defs(LANES=1, WARPS=1, VPT=32, VPT_T=64, NC=2, NC_SIM=4, T_SCATTER_BYTES=64)
CPU_DEFINES: dict[str, Defines] = {
    "fast": _FAST_AVX512 if "avx512f" in _cpu_shim.cpu_flags() else _FAST_AVX2,
    "count": _FAST_AVX2,
    "simt": _defs(LANES=32, WARPS=2, VPT=2, VPT_T=2, NC=2),
    "weak": GPU_DEFINES,
    "asan": _defs(LANES=1, WARPS=1, VPT=32, VPT_T=32, NC=2, T_SCATTER_BYTES=64),
    "asan-simt": _defs(LANES=32, WARPS=2, VPT=2, VPT_T=2, NC=2),
    "race": GPU_DEFINES,
}


def defines_for(device_type: str, variant: str | None = None) -> Defines:
    """The lane model of the build that runs on ``device_type`` (the current shim variant on the CPU), with
    the kernels' device-side argument checks when ``UPBENCH_KERNEL_DEBUG=1``."""
    d = GPU_DEFINES if device_type == "cuda" else CPU_DEFINES[variant or _cpu_shim.current_variant()]
    return (*d, ("UPB_DEBUG", 1)) if os.environ.get("UPBENCH_KERNEL_DEBUG") == "1" else d


def atn_t_grid(t: Tensor, pixels: int, C: int, G: int) -> tuple[int, int]:
    """atn_t's launch shape (items, grid.y) for ``pixels`` low-res pixels and ``G`` groups of ``C`` channels of
    ``t`` (the high-res input): a scatter over (group, part of the channels) items where the build has it for
    ``t``'s dtype (``UPB_T_SCATTER_BYTES``: CPU builds, fp32/fp64), else a gather over pixels × G × chunks of
    the lane model. atn_t and band_atn_t alike."""
    d = dict(defines_for(t.device.type))
    if d.get("UPB_T_SCATTER_BYTES") and t.dtype in (torch.float32, torch.float64):
        chunks = -(-C // max(1, d["UPB_T_SCATTER_BYTES"] // t.element_size()))
        return G * min(chunks, max(1, torch.get_num_threads())), 1  # a part of the channels per thread
    return pixels, G * -(-C // (d["UPB_LANES"] * d["UPB_VPT_T"]))


# -- argument checks: one message per problem, naming the op --------------------------------------------
def check_k(op: str, K: int, s: int) -> None:
    if isinstance(K, bool) or not isinstance(K, int) or not (1 <= K <= MAX_K and K % 2 == 1):
        raise ValueError(f"upbench::{op}: K={K!r}; the kernels need an odd K from 1 to {MAX_K}")
    if isinstance(s, bool) or not isinstance(s, int) or s < 1:
        raise ValueError(f"upbench::{op}: s={s!r}; the scale must be a positive integer")


def check_tensors(op: str, named: Mapping[str, Tensor], *, contiguous: bool = False) -> None:
    """4-d tensors of one supported dtype on one device (CPU or CUDA); ``contiguous``: as the kernels index them."""
    first_name, first = next(iter(named.items()))
    for name, t in named.items():
        if not isinstance(t, Tensor):
            raise TypeError(f"upbench::{op}: {name} must be a tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"upbench::{op}: {name} must be 4-d, got shape {tuple(t.shape)}")
        if t.dtype != first.dtype or t.device != first.device:
            raise ValueError(f"upbench::{op}: all tensors must share dtype and device ({first_name}: {first.dtype} "
                             f"on {first.device}, {name}: {t.dtype} on {t.device})")
        if contiguous and not t.is_contiguous():
            raise ValueError(f"upbench::{op}: {name} must be contiguous (strides {t.stride()} for shape "
                             f"{tuple(t.shape)}); call .contiguous() first")
    if first.dtype not in SUFFIX:
        raise ValueError(f"upbench::{op}: dtype {first.dtype} is not supported; use float64/32/16 or bfloat16")
    if first.device.type not in ("cpu", "cuda"):
        raise ValueError(f"upbench::{op}: no kernel build for device {first.device}")


def check_shape(op: str, name: str, t: Tensor, want: tuple[int | None, ...]) -> None:
    """``t.shape`` must match ``want`` (None: any size)."""
    if len(want) != t.dim() or any(w is not None and w != n for w, n in zip(want, t.shape, strict=True)):
        shown = "(" + ", ".join("·" if w is None else str(w) for w in want) + ")"
        raise ValueError(f"upbench::{op}: {name} has shape {tuple(t.shape)}, expected {shown}")


def check_grid_y(op: str, grid_y: int) -> None:
    if grid_y > 65535:
        raise ValueError(f"upbench::{op}: {grid_y} channel chunks × groups exceed CUDA's grid.y limit of 65535")


# -- families -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Family:
    """One kernel family: ``kernels/<name>.cu``, entries ``<name>_<kernel>_<dtype suffix>``."""

    name: str

    def entry(self, kernel: str, dtype: torch.dtype) -> str:
        return f"{self.name}_{kernel}_{SUFFIX[dtype]}"

    def launch(self, kernel: str, items: int, *args: Tensor | int, grid_y: int = 1) -> None:
        """Run ``kernel`` over ``items`` warp work items (× ``grid_y``) on the device of the tensors in ``args``."""
        t = next(a for a in args if isinstance(a, Tensor))
        entry = self.entry(kernel, t.dtype)
        check_grid_y(entry, grid_y)
        if t.device.type == "cuda":
            _cuda.launch(self.name, entry, defines_for("cuda"), items, *args, grid_y=grid_y)
        elif t.device.type == "cpu":
            _cpu_shim.launch(self.name, entry, defines_for("cpu"), items, *args, grid_y=grid_y,
                             ftz=t.dtype != torch.float64)
        else:
            raise ValueError(f"upbench::{entry}: no kernel build for device {t.device}")

    def prepare(self, device: str, kernels: tuple[str, ...], dtype: torch.dtype) -> None:
        """Compile now (an impl's prepare step), so that no timer or memory probe sees the build."""
        if device == "cuda":
            idx = torch.cuda.current_device()
            for k in kernels:
                _cuda.function(self.name, self.entry(k, dtype), idx, defines_for("cuda"))
        else:
            variant = _cpu_shim.current_variant()
            _cpu_shim.load(self.name, variant, defines_for("cpu", variant), _cpu_shim.current_kernel_dir())

    def sources(self, device: str, bindings: tuple[str, ...] = ()) -> tuple[str, ...]:
        return kernel_sources(self.name, device, bindings)


def available(device: str) -> str | None:
    """None when kernels can run on ``device`` here, else why not."""
    return _cuda.unavailable_reason() if device == "cuda" else _cpu_shim.unavailable_reason()


_BARRIER = re.compile(r"^(?!\s*#)(.*?)\b(UPB_SYNCWARP\(\)|__syncwarp\([^)]*\)|__syncthreads\(\))", re.MULTILINE)


def barrier_sites(kdir: Path | None = None) -> list[tuple[str, int, str]]:
    """Every barrier call in the kernel sources (not in macro definitions): (file name, line number, call).
    The barrier mutation tests remove each in turn."""
    kdir = kdir or _cpu_shim.kernel_dir()
    sites = []
    for p in sorted(kdir.iterdir()):
        if p.suffix in (".cu", ".cuh") or (p.suffix == ".h" and p.name != _cpu_shim.SHIM_HEADER):
            text = p.read_text()
            for m in _BARRIER.finditer(text):
                if "//" in m.group(1):  # in a comment
                    continue
                sites.append((p.name, text.count("\n", 0, m.start()) + 1, m.group(2)))
    return sites


def families_using(file_name: str, families: tuple[str, ...]) -> list[str]:
    """The families among ``families`` whose include closure holds ``file_name``."""
    return [f for f in families if file_name in _cuda.include_closure(f)]


def kernel_sources(family: str, device: str | None = None, bindings: tuple[str, ...] = ()) -> tuple[str, ...]:
    """Every file whose bytes decide what ``family``'s kernels compute on ``device`` (both when None): the
    .cu and every header it includes (the closure the loader inlines), the CPU shim header for CPU builds,
    the loader module that holds the compile options, this binding, the family's binding module and the
    operator bindings in ``bindings`` (module names, e.g. ``"sapa_kernels"``, that launch the family's entries).

    Impls that run the family list these in ``Impl.sources``, so that their ``impl_hash`` changes with them."""
    kdir = _cpu_shim.kernel_dir()
    files = [kdir / name for name in _cuda.include_closure(family)]
    if device in (None, "cpu"):
        files += [kdir / _cpu_shim.SHIM_HEADER, Path(_cpu_shim.__file__)]
    if device in (None, "cuda"):
        files.append(Path(_cuda.__file__))
    here = Path(__file__).resolve().parent
    files += [here / "kernel_binding.py", here / f"{family}_kernels.py", *(here / f"{b}.py" for b in bindings)]
    return tuple(str(p.resolve()) for p in files)
