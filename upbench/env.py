"""The environment fingerprint stored with every run: enough to tell two machines and two builds apart.

A field that cannot be read here is present with the reason, never omitted or zeroed.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy
import pandas
import torch

from . import __version__
from ._nvml import gpu_info

CACHE_ENV = "UPBENCH_CACHE_DIR"


def cache_root() -> Path:
    """The one cache directory (probed ceilings, compiled CPU kernels): ``$UPBENCH_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/upbench``, else ``~/.cache/upbench``."""
    root = os.environ.get(CACHE_ENV)
    if root:
        return Path(root).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "upbench"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _cpu_freq() -> dict[str, Any]:
    base = Path("/sys/devices/system/cpu/cpu0/cpufreq")
    out: dict[str, Any] = {}
    for key, fname in (("governor", "scaling_governor"), ("cur_khz", "scaling_cur_freq"),
                       ("max_khz", "cpuinfo_max_freq")):
        try:
            out[key] = (base / fname).read_text().strip()
        except OSError:
            out[key] = None
    if all(v is None for v in out.values()):
        return {"reason": "cpufreq is not exposed on this machine"}
    return out


def _git() -> dict[str, Any]:
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return {"reason": "not run from a git checkout"}
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip() != ""
        return {"commit": commit, "dirty": dirty}
    except (OSError, subprocess.SubprocessError) as exc:
        return {"reason": f"git failed: {exc}"}


def _cupy_version() -> str:
    from ._optional import cupy_reason, try_cupy

    cp = try_cupy()
    return cp.__version__ if cp is not None else f"unavailable: {cupy_reason()}"


def fingerprint() -> dict[str, Any]:
    return {
        "upbench": __version__,
        "cpu_model": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "cpu_freq": _cpu_freq(),
        "torch_threads": torch.get_num_threads(),
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "numpy": numpy.__version__,
        "pandas": pandas.__version__,
        "cupy": _cupy_version(),
        "git": _git(),
        "gpu": gpu_info(),
        # Settings that change timings without changing code (THP: fresh large CPU outputs fault in 2 MiB
        # pages instead of 4 KiB ones; thread counts; which GPUs are visible).
        "env_vars": {k: os.environ.get(k) for k in ("THP_MEM_ALLOC_ENABLE", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                                                    "CUDA_VISIBLE_DEVICES", "OPENBLAS_CORETYPE")},
    }


def device_class(device: str, env: dict[str, Any] | None = None, threads: int | None = None) -> str:
    """What makes timings comparable: the GPU's name, or "<CPU model> / <N> threads".

    From a stored fingerprint ``env`` (an old run without per-row classes), else from this process; ``threads``:
    the torch threads a row ran with (a one-thread suite's rows are a one-thread class), else this process's.
    The one spelling of a device class: baselines, compare, reports and the ceilings cache all use it.
    """
    if env is None:
        if device == "cuda":
            return torch.cuda.get_device_name()
        return f"{_cpu_model()} / {threads or torch.get_num_threads()} threads"
    gpus = env.get("gpu", {}).get("devices") or []
    if device == "cuda" and gpus:
        return gpus[0]["name"]
    return f"{env.get('cpu_model')} / {env.get('torch_threads')} threads"
