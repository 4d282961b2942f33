"""Run upbench's CUDA kernel sources on the CPU: g++ through kernels/cpu_shim.h, loaded with ctypes.

A generic loader: a kernel family (``kernels/<family>.cu``) is compiled with the lane-model defines its
binding passes (``UPB_LANES``, ``UPB_WARPS``, …); nothing here knows a family. Each (family, variant,
defines) is built on first use into a shared library cached under ``$UPBENCH_CACHE_DIR`` (default
``~/.cache/upbench``) in a folder named by a hash of the sources, the flags, the compiler's version and (for
``-march=native``) the CPU, so an edit or another machine never reuses a stale build. A build goes to a
temporary file that is renamed into place, so concurrent builds are safe.

Variants (the ``cpu_shim.h`` launch models): ``fast`` (one-lane warps, OpenMP over blocks, vectorised
channel loops; what the ``cpu-kernel`` impls use), ``simt`` (32-lane warps, one OS thread per CUDA thread:
runs the GPU lane logic — shuffles, warp scratch — on tiny shapes), ``weak`` (SIMT under a weak-memory
model: shared memory private to a thread until a barrier publishes it, seeded random thread and block order,
poisoned shared memory; see cpu_shim.h), ``race`` (SIMT under ThreadSanitizer, shuffles ordering no memory;
loadable only with libtsan preloaded) and ``asan`` / ``asan-simt`` (under -fsanitize=address,undefined;
loadable only in a process started with libasan preloaded). Every launch runs in the GPU build's float mode:
fp32 subnormals flushed (x86 MXCSR FTZ+DAZ), except for float64 entries.
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

_SAN = ("-O0", "-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined", "-fno-sanitize-recover=all",
        "-DUPB_DEBUG=1")  # with the kernels' device-side argument checks


Defines = tuple[tuple[str, int], ...]  # ordered (name, value) pairs, as the bindings pass them


@dataclass(frozen=True)
class Variant:
    """A build of the shim: compiler flags and the launch model (``simt``: one OS thread per CUDA thread)."""

    name: str
    flags: tuple[str, ...]
    simt: bool  # the family's defines must then say UPB_LANES=32


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("fast", ("-O3", "-march=native", "-fopenmp"), simt=False),
        Variant("simt", ("-O1", "-pthread"), simt=True),
        # upbench.instructions: `fast` for AVX2 (x86-64-v3), which valgrind can run (it has no AVX-512).
        Variant("count", ("-O3", "-march=x86-64-v3", "-fopenmp"), simt=False),
        Variant("weak", ("-O1", "-pthread", "-DUPB_WEAK=1"), simt=True),
        Variant("asan", (*_SAN, "-march=native", "-fopenmp"), simt=False),
        Variant("asan-simt", (*_SAN, "-pthread"), simt=True),
        # ThreadSanitizer with shuffles that order no memory: reports shared-memory races that only a missing
        # barrier allows (loadable only with libtsan preloaded)
        Variant("race", ("-O1", "-g", "-fsanitize=thread", "-pthread", "-DUPB_RACE=1"), simt=True),
    )
}
# -fno-trapping-math: GCC will not if-convert a float compare (the exp's clamp in the softmax loops) while
# compares may trap, which left every `omp simd` softmax scalar; no kernel reads the FP exception flags, and no
# value changes.
COMMON_FLAGS = ("-std=gnu++17", "-shared", "-fPIC", "-fno-math-errno", "-fno-trapping-math", "-Wall",
                "-Wno-unknown-pragmas")

_local = threading.local()
_libs: dict[tuple[str, str, Defines, str], ctypes.CDLL] = {}
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


def sanitizer_runtime(lib: str = "libasan.so") -> str | None:
    """Path of a sanitizer runtime (libasan.so, libtsan.so) for LD_PRELOAD, or None when the compiler has none."""
    if shutil.which(compiler()) is None:
        return None
    out = subprocess.run([compiler(), f"-print-file-name={lib}"], capture_output=True, text=True).stdout.strip()
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


def cpu_flags() -> set[str]:
    """The host CPU's feature flags (e.g. ``avx512f``) as /proc/cpuinfo lists them; empty where unknown."""
    line = _cpu_id()
    return set(line.split(":", 1)[1].split()) if line.startswith("flags") else set()


def _sources(family: str, kdir: Path) -> list[Path]:
    return [kdir / f"{family}.cu", *sorted(p for p in kdir.iterdir() if p.suffix in (".h", ".cuh"))]


SHIM_HEADER = "cpu_shim.h"  # included before every family's .cu in the CPU builds


def build(family: str, variant: str, defines: Defines, kdir: Path | None = None) -> Path:
    """Compile ``kernels/<family>.cu`` (or ``kdir/<family>.cu``: a mutated copy) for the CPU, cached; the
    shared library's path."""
    reason = unavailable_reason()
    if reason:
        raise RuntimeError(f"cpu-kernel: {reason}")
    v = VARIANTS[variant]
    lanes = dict(defines).get("UPB_LANES")
    if lanes != (32 if v.simt else 1):
        raise ValueError(f"cpu-kernel: variant {variant!r} runs {'32' if v.simt else '1'}-lane warps, "
                         f"but the defines say UPB_LANES={lanes}")
    kdir = kdir or kernel_dir()
    flags = [*COMMON_FLAGS, *v.flags, *(f"-D{k}={val}" for k, val in defines)]
    h = hashlib.sha256()
    for p in _sources(family, kdir):
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
        cmd = [compiler(), *flags, f"-I{kdir}", str(src), "-o", str(tmp_lib)]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"cpu-kernel: building {family}.cu failed:\n{' '.join(cmd)}\n{res.stderr[-4000:]}")
        os.replace(tmp_lib, lib)  # atomic: a concurrent build of the same hash writes the same bytes
    return lib


def load(family: str, variant: str, defines: Defines, kdir: Path | None = None) -> ctypes.CDLL:
    key = (family, variant, defines, str(kdir))
    with _lock:
        if key not in _libs:
            _libs[key] = ctypes.CDLL(str(build(family, variant, defines, kdir)))
        return _libs[key]


def current_variant() -> str:
    return getattr(_local, "variant", None) or os.environ.get("UPBENCH_CPU_SHIM", "fast")


def current_kernel_dir() -> Path | None:
    return getattr(_local, "kdir", None)


@contextlib.contextmanager
def use_variant(name: str, kdir: Path | None = None) -> Iterator[None]:
    """Run the CPU paths of the custom ops on another shim build (tests: ``simt``, ``weak``), optionally of
    the kernel sources in ``kdir`` instead of the package's (tests: mutated copies)."""
    if name not in VARIANTS:
        raise ValueError(f"unknown shim variant {name!r}; known: {', '.join(VARIANTS)}")
    old = getattr(_local, "variant", None), getattr(_local, "kdir", None)
    _local.variant, _local.kdir = name, kdir
    try:
        yield
    finally:
        _local.variant, _local.kdir = old


def launch(family: str, entry: str, defines: Defines, items: int, *args: torch.Tensor | int, grid_y: int = 1,
           variant: str | None = None, ftz: bool = True, kdir: Path | None = None) -> None:
    """Run kernel ``entry`` over ``items`` warp work items (× ``grid_y``); tensors by data pointer, ints as int64.

    ``ftz``: flush fp32 subnormals as the GPU build does (off for float64 entries, which the GPU never flushes).
    ``UPBENCH_SHIM_SEED`` seeds the ``weak`` variant's thread and block order (default 1)."""
    variant = variant or current_variant()
    if items <= 0 or grid_y <= 0:
        return
    d = dict(defines)
    block = d["UPB_LANES"] * d["UPB_WARPS"]
    grid = min(-(-items // d["UPB_WARPS"]), 2**31 - 1)  # the kernels grid-stride past this
    seed = int(os.environ.get("UPBENCH_SHIM_SEED", "1"))
    cfg = (ctypes.c_longlong * 9)(grid, grid_y, 1, block, 1, 1, max(1, torch.get_num_threads()), int(ftz), seed)
    cargs = []
    for a in args:
        if isinstance(a, torch.Tensor):
            if a.device.type != "cpu" or not a.is_contiguous():
                raise ValueError(f"{entry}: tensors must be contiguous CPU tensors")
            cargs.append(ctypes.c_void_p(a.data_ptr()))
        else:
            cargs.append(ctypes.c_int64(int(a)))
    getattr(load(family, variant, defines, kdir or current_kernel_dir()), entry)(cfg, *cargs)
