"""Resource use of upbench's CUDA kernels, read from ptxas without a GPU.

``compile_stats(path, arch)`` compiles one ``.cu`` file with ``nvcc -cubin -Xptxas -v`` using the CUDA
build's own defines and float mode (kernel_binding.GPU_DEFINES, upbench._cuda.nvcc_options: -ftz=true as
CuPy compiles) and returns, per kernel entry point, its registers, stack frame, spill stores/loads and
shared memory. A spill or a stack frame in a hot kernel means local-memory traffic on the
GPU; the tests fail on either, and reports can show the table.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from upbench._cpu_shim import kernel_dir
from upbench._cuda import nvcc_options

from .kernel_binding import GPU_DEFINES

_ENTRY = re.compile(r"Compiling entry function '([^']+)' for '([^']+)'")
_PROPS = re.compile(r"Function properties for (\S+)")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers(?:.*?(\d+) bytes smem)?")


def nvcc() -> str | None:
    """Path of nvcc ($UPBENCH_NVCC, PATH, $CUDA_HOME/bin), or None."""
    for cand in (os.environ.get("UPBENCH_NVCC"), shutil.which("nvcc")):
        if cand and Path(cand).exists():
            return cand
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or "/usr/local/cuda"
    p = Path(home) / "bin" / "nvcc"
    return str(p) if p.exists() else None


def parse_ptxas(text: str) -> list[dict[str, Any]]:
    """Per-entry statistics from ``ptxas -v`` output (entry points only; device functions are inlined)."""
    stats: dict[str, dict[str, Any]] = {}
    current: str | None = None
    for line in text.splitlines():
        if m := _ENTRY.search(line):
            current = m.group(1)
            stats[current] = {"kernel": current, "arch": m.group(2), "registers": 0, "stack_bytes": 0,
                              "spill_stores": 0, "spill_loads": 0, "smem_bytes": 0}
        elif m := _PROPS.search(line):
            current = m.group(1) if m.group(1) in stats else None
        elif current and (m := _FRAME.search(line)):
            s = stats[current]
            s["stack_bytes"], s["spill_stores"], s["spill_loads"] = (int(g) for g in m.groups())
        elif current and (m := _USED.search(line)):
            stats[current]["registers"] = int(m.group(1))
            stats[current]["smem_bytes"] = int(m.group(2) or 0)
    return list(stats.values())


def compile_stats(path: str | os.PathLike[str], arch: str = "sm_90", extra: tuple[str, ...] = ()) -> list[dict]:
    """Compile ``path`` for ``arch`` (e.g. ``sm_80``) and return one dict per kernel entry point.

    Keys: kernel, arch, registers, stack_bytes, spill_stores, spill_loads, smem_bytes. Raises RuntimeError
    with nvcc's message when nvcc is missing or the compile fails.
    """
    exe = nvcc()
    if exe is None:
        raise RuntimeError("nvcc not found (set UPBENCH_NVCC or CUDA_HOME, or put nvcc on PATH)")
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [exe, "-cubin", f"-arch={arch}", "-Xptxas", "-v", *nvcc_options(GPU_DEFINES), f"-I{kernel_dir()}", *extra,
               "-o", str(Path(tmp) / "out.cubin"), str(path)]
        res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"nvcc failed ({' '.join(cmd)}):\n{res.stderr[-4000:]}")
    return parse_ptxas(res.stdout + res.stderr)


def family_stats(family: str, arch: str = "sm_90") -> list[dict]:
    """:func:`compile_stats` of ``kernels/<family>.cu``."""
    return compile_stats(kernel_dir() / f"{family}.cu", arch)
