"""Device ceilings and the per-run calibration workload.

``ceilings(device, dtype)`` probes, once per device class and cached on disk, the copy bandwidth and the
matmul throughput: the roofs every row's achieved GB/s and GFLOP/s are divided by. ``calibrate(device)``
times a fixed memory-bound copy and a small matmul in every run, so latencies can be normalised by the
machine's state of the day when a baseline from a sibling machine is compared (``upbench compare
--normalise``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from .cases import DTYPES
from .timing import Stopping, time_fn

_PROBE = Stopping(budget_s=0.5, min_samples=5, target_rel_iqr=0.05, warmup_s=0.05)


def cache_dir() -> Path:
    from .env import cache_root

    return cache_root()


def copy_gbps(device: str, nbytes: int) -> float:
    """Achieved read+write bandwidth of a large tensor copy, GB/s."""
    n = nbytes // 4
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    lat = time_fn(lambda: dst.copy_(src), device, _PROBE)
    return 2 * n * 4 / lat.min / 1e9  # a ceiling: the best the machine did, not its typical


def matmul_gflops(device: str, dtype: str, n: int) -> float:
    dt = DTYPES[dtype]
    a = torch.randn(n, n, device=device).to(dt)
    b = torch.randn(n, n, device=device).to(dt)
    lat = time_fn(lambda: a @ b, device, _PROBE)
    return 2 * n**3 / lat.min / 1e9


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-")[:80]


def device_key(device: str) -> str:
    from .env import device_class  # one spelling of a device class

    return device_class(device)


def ceilings(device: str, dtype: str = "float32") -> dict[str, Any]:
    """{'copy_GBps', 'matmul_GFLOPs', 'key'}; probed once per device class, torch version and dtype."""
    key = f"{device_key(device)} torch{torch.__version__} {dtype}"
    path = cache_dir() / f"ceilings-{_slug(key)}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        pass
    big = device == "cuda"
    res = {"key": key, "copy_GBps": copy_gbps(device, (1 << 30) if big else (256 << 20)),
           "matmul_GFLOPs": matmul_gflops(device, dtype, 8192 if big else 2048)}
    try:
        from .results import atomic_write

        atomic_write(path, json.dumps(res))
    except OSError:
        pass  # a read-only home: probe again next time
    return res


def calibrate(device: str) -> dict[str, float]:
    """A fixed reference workload timed in every run (ms, best sample): a 4 MiB copy and a 512² fp32 matmul.

    The copy is sized to stay in the last-level cache: a DRAM-sized copy on a shared machine swings by a
    third with the neighbours' traffic (measured here: 4.2–5.7 ms for 64 MiB), which would make normalised
    times noisier than raw ones. The best sample, not the median, is the machine's capability that day.
    """
    src = torch.randn(1 << 20, device=device)
    dst = torch.empty_like(src)
    a = torch.randn(512, 512, device=device)
    copy = time_fn(lambda: dst.copy_(src), device, _PROBE)
    mm = time_fn(lambda: a @ a, device, _PROBE)
    return {"copy_ms": copy.min * 1e3, "matmul_ms": mm.min * 1e3,
            "copy_rel_iqr": copy.rel_iqr, "matmul_rel_iqr": mm.rel_iqr}
