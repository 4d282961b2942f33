"""Run upbench's CUDA kernel sources on the CPU: g++ through kernels/cpu_shim.h, loaded with ctypes.

Each kernel family (``kernels/<family>.cu``) is built on first use into a shared library cached under
``$UPBENCH_CACHE_DIR`` (default ``~/.cache/upbench``) in a folder named by a hash of the sources, the flags,
the compiler's version and (for ``-march=native``) the CPU, so an edit or another machine never reuses a
stale build. A build goes to a temporary file that is renamed into place, so concurrent builds are safe.

Variants (the ``cpu_shim.h`` launch models): ``fast`` (one-lane warps, OpenMP over blocks, vectorised
channel loops; what the ``cpu-kernel`` impls use), ``simt`` (32-lane warps, one OS thread per CUDA thread:
runs the GPU lane logic — shuffles, warp scratch — on tiny shapes) and ``asan`` / ``asan-simt`` (the same
under -fsanitize=address,undefined; loadable only in a process started with libasan preloaded).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

import torch

_SAN = ("-O0", "-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined", "-fno-sanitize-recover=all")


@dataclass(frozen=True)
class Variant:
    """A build of the shim: compiler flags and the lane model the kernels are compiled for."""

    name: str
    flags: tuple[str, ...]
    lanes: int  # UPB_LANES: 1 (fast) or 32 (SIMT emulation)
    warps: int  # UPB_WARPS: warps per block
    vpt: int  # UPB_VPT: channels per lane per chunk (small in test builds so chunk tails are exercised)
    nc: int  # UPB_NC: high-res pixels that share each loaded row
    vpt_t: int = 0  # UPB_VPT_T: channels per lane per chunk of atn_t (0: as vpt)

    @property
    def chunk_t(self) -> int:
        """Channels per atn_t chunk (its grid.y counts them)."""
        return (self.vpt_t or self.vpt) * self.lanes

    @property
    def defines(self) -> tuple[str, ...]:
        pairs = (("LANES", self.lanes), ("WARPS", self.warps), ("VPT", self.vpt), ("VPT_T", self.vpt_t or self.vpt),
                 ("NC", self.nc))
        return tuple(f"-DUPB_{k}={v}" for k, v in pairs)


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        # Measured fastest on the 2-core AVX-512 development machine: NC=4 × VPT=64 (16 zmm accumulators);
        # atn_t with 256-channel chunks reads its high-res rows in fewer passes.
        Variant("fast", ("-O3", "-march=native", "-fopenmp"), lanes=1, warps=1, vpt=64, nc=4, vpt_t=256),
        Variant("simt", ("-O1", "-pthread"), lanes=32, warps=2, vpt=2, nc=2),
        # upbench.instructions: `fast` for AVX2 (x86-64-v3), which valgrind can run (it has no AVX-512).
        Variant("count", ("-O3", "-march=x86-64-v3", "-fopenmp"), lanes=1, warps=1, vpt=64, nc=4, vpt_t=256),
        Variant("asan", (*_SAN, "-march=native", "-fopenmp"), lanes=1, warps=1, vpt=32, nc=2),
        Variant("asan-simt", (*_SAN, "-pthread"), lanes=32, warps=2, vpt=2, nc=2),
    )
}
COMMON_FLAGS = ("-std=gnu++17", "-shared", "-fPIC", "-fno-math-errno", "-Wall", "-Wno-unknown-pragmas")

_local = threading.local()
_libs: dict[tuple[str, str], ctypes.CDLL] = {}
_lock = threading.Lock()


def compiler() -> str:
    return os.environ.get("UPBENCH_CXX", "g++")


def kernel_dir() -> Path:
    return Path(str(resources.files("upbench.kernels")))


def cache_dir() -> Path:
    from .env import cache_root  # one cache root, one environment variable

    return cache_root()


def unavailable_reason() -> str | None:
    """None when the CPU kernels can be built here, else why not."""
    if shutil.which(compiler()) is None:
        return f"needs a C++ compiler with OpenMP ({compiler()} not found; set UPBENCH_CXX or install g++)"
    return None


def sanitizer_runtime() -> str | None:
    """Path of libasan.so for LD_PRELOAD, or None when the compiler has no ASan runtime."""
    if shutil.which(compiler()) is None:
        return None
    out = subprocess.run([compiler(), "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    return out if os.path.isabs(out) and os.path.exists(out) else None


@lru_cache(maxsize=1)
def _compiler_id() -> str:
    return subprocess.run([compiler(), "--version"], capture_output=True, text=True).stdout


@lru_cache(maxsize=1)
def _cpu_id() -> str:
    # -march=native code is only valid on a CPU with the same features
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return platform.processor() + platform.machine()


def _sources(family: str) -> list[Path]:
    d = kernel_dir()
    return [d / f"{family}.cu", *sorted(p for p in d.iterdir() if p.suffix in (".h", ".cuh"))]


def build(family: str, variant: str = "fast") -> Path:
    """Compile ``kernels/<family>.cu`` for the CPU (cached) and return the shared library's path."""
    reason = unavailable_reason()
    if reason:
        raise RuntimeError(f"cpu-kernel: {reason}")
    v = VARIANTS[variant]
    flags = [*COMMON_FLAGS, *v.flags, *v.defines]
    h = hashlib.sha256()
    for p in _sources(family):
        h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    h.update(" ".join(flags).encode() + _compiler_id().encode())
    if "-march=native" in flags:
        h.update(_cpu_id().encode())
    out_dir = cache_dir() / "cpu-kernels" / f"{family}-{variant}-{h.hexdigest()[:16]}"
    lib = out_dir / f"lib{family}.so"
    if lib.exists():
        return lib
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        src = Path(tmp) / f"{family}_cpu.cpp"
        src.write_text(f'#include "cpu_shim.h"\n#include "{family}.cu"\n')
        tmp_lib = Path(tmp) / lib.name
        cmd = [compiler(), *flags, f"-I{kernel_dir()}", str(src), "-o", str(tmp_lib)]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"cpu-kernel: building {family}.cu failed:\n{' '.join(cmd)}\n{res.stderr[-4000:]}")
        os.replace(tmp_lib, lib)  # atomic: a concurrent build of the same hash writes the same bytes
    return lib


def load(family: str, variant: str = "fast") -> ctypes.CDLL:
    key = (family, variant)
    with _lock:
        if key not in _libs:
            _libs[key] = ctypes.CDLL(str(build(family, variant)))
        return _libs[key]


def current_variant() -> str:
    return getattr(_local, "variant", None) or os.environ.get("UPBENCH_CPU_SHIM", "fast")


@contextlib.contextmanager
def use_variant(name: str) -> Iterator[None]:
    """Run the CPU paths of the custom ops on another shim build (tests: ``simt``)."""
    if name not in VARIANTS:
        raise ValueError(f"unknown shim variant {name!r}; known: {', '.join(VARIANTS)}")
    old = getattr(_local, "variant", None)
    _local.variant = name
    try:
        yield
    finally:
        _local.variant = old


def launch(family: str, entry: str, items: int, *args: torch.Tensor | int, grid_y: int = 1,
           variant: str | None = None) -> None:
    """Run kernel ``entry`` over ``items`` warp work items (× ``grid_y``); tensors by data pointer, ints as int64."""
    v = VARIANTS[variant or current_variant()]
    if items <= 0 or grid_y <= 0:
        return
    block = v.lanes * v.warps
    grid = min(-(-items // v.warps), 2**31 - 1)  # the kernels grid-stride past this
    cfg = (ctypes.c_longlong * 7)(grid, grid_y, 1, block, 1, 1, max(1, torch.get_num_threads()))
    cargs = []
    for a in args:
        if isinstance(a, torch.Tensor):
            if a.device.type != "cpu" or not a.is_contiguous():
                raise ValueError(f"{entry}: tensors must be contiguous CPU tensors")
            cargs.append(ctypes.c_void_p(a.data_ptr()))
        else:
            cargs.append(ctypes.c_int64(int(a)))
    getattr(load(family, variant or current_variant()), entry)(cfg, *cargs)
