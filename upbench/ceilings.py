"""Device ceilings and the per-run calibration workload, both the robust best of repeated probes.

``ceilings(device, dtype)`` gives the copy bandwidth and matmul throughput every row's achieved GB/s and
GFLOP/s are divided by. They are kept on disk per machine (host name), device and dtype, and only ever
raised: a later probe that beats the kept value replaces it. A probe taken while the machine was busy (load
average, or repeated probes that disagree) is used for that run but never kept, and a row that comes out
above 100 % of a roof makes :func:`roof_columns` probe again before anything is reported. Every row names the
ceiling it used and when that was probed.

``calibrate(device)`` times a fixed memory-bound copy and a small matmul in every run, so latencies can be
normalised by the machine's state of the day (``upbench compare --normalise``); it records its own spread,
and compare refuses to normalise by a calibration that was not steady.
"""

from __future__ import annotations

import json
import platform
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .cases import DTYPES
from .timing import Stopping, busy, machine_load, time_fn

_PROBE = Stopping(budget_s=0.5, min_samples=5, target_rel_iqr=0.05, warmup_s=0.05)
_CAL = Stopping(budget_s=0.15, min_samples=5, target_rel_iqr=0.05, warmup_s=0.02)  # in every run: kept short
PROBES = 3  # repeated probes per value; the robust best of them is the value
AGREE = 0.15  # repeated probes within this fraction of each other count as steady
PROBE_VERSION = "ladder"  # in the cache key: values kept by the older one-size matmul probe read low
TRIES = 2  # a busy probe is tried again once after a pause before it is used (not kept)


def cache_dir() -> Path:
    from .env import cache_root

    return cache_root()


def copy_gbps(device: str, nbytes: int) -> float:
    """Achieved read+write bandwidth of a large tensor copy, GB/s (best sample of one probe)."""
    n = nbytes // 4
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    lat = time_fn(lambda: dst.copy_(src), device, _PROBE)
    return 2 * n * 4 / lat.min / 1e9


def matmul_gflops(device: str, dtype: str, n: int) -> float:
    dt = DTYPES[dtype]
    a = torch.randn(n, n, device=device).to(dt)
    b = torch.randn(n, n, device=device).to(dt)
    lat = time_fn(lambda: a @ b, device, _PROBE)
    return 2 * n**3 / lat.min / 1e9


def matmul_ladder(device: str, dtype: str, largest: int, budget_s: float = 0.1) -> dict[int, list[float]]:
    """GFLOP/s of PROBES probes at each size of a doubling ladder of square matrices, 256 up to ``largest``.

    A BLAS reaches its peak only past some size, which differs by machine and dtype, so the ceiling is the
    best size's value, not one size's. The next size is tried only while one product at it would take
    ≲ ``budget_s`` at the best rate seen at the current size: fp16 on a CPU without half-precision units
    stays small (a fixed 2048² once spent ~220 s probing), and a neighbour slowing one quick 256² estimate
    can no longer stop the ladder at the bottom (that single estimate once left a probe that read this CPU's
    fp32 peak at half, so oneDNN convolutions came out at 180 % of the "ceiling")."""
    if device == "cuda":
        return {largest: [matmul_gflops(device, dtype, largest) for _ in range(PROBES)]}
    ladder: dict[int, list[float]] = {}
    n = 256
    while n <= largest:
        ladder[n] = [matmul_gflops(device, dtype, n) for _ in range(PROBES)]
        if 2 * (2 * n) ** 3 / (max(ladder[n]) * 1e9) > budget_s:
            break
        n *= 2
    return ladder


def ladder_best(ladder: dict[int, list[float]]) -> tuple[int, float]:
    """The ladder's best size and its robust best GFLOP/s."""
    return max(((n, robust_best(v)) for n, v in ladder.items()), key=lambda nv: nv[1])


def robust_best(values: list[float]) -> float:
    """The highest value that another probe confirms (within AGREE); with no such pair, the median.

    A lone high value is a timer artefact more often than the hardware's best, and one probe slowed by a
    neighbour must not drag the ceiling down: the best value two probes agree on is neither."""
    v = sorted(values, reverse=True)
    for i in range(len(v) - 1):
        if v[i + 1] >= v[i] * (1 - AGREE):
            return v[i]
    return v[len(v) // 2]


def spread(values: list[float]) -> float:
    """(max − min) / min of repeated probes: 0 on a steady machine."""
    return (max(values) - min(values)) / min(values) if min(values) > 0 else float("inf")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-")[:80]


def device_key(device: str) -> str:
    from .env import device_class  # one spelling of a device class

    return device_class(device)


def _path(key: str) -> Path:
    return cache_dir() / f"ceilings-{_slug(key)}.json"


def _steady(values: dict[str, list[float]], load: dict[str, Any]) -> str | None:
    """Why this probe cannot be kept (the machine was busy), or None."""
    why = busy(load, torch.get_num_threads())
    if why:
        return why
    for name, v in values.items():
        if spread(v) > AGREE:
            return f"{name} probes disagree by {spread(v):.0%}"
    return None


def _probe(device: str, dtype: str, say: Callable[[str], None]) -> dict[str, Any]:
    big = device == "cuda"
    say(f"probing the {device} {dtype} copy and matmul ceilings ({PROBES} probes each; kept per machine)")
    values: dict[str, list[float]] = {}
    why: str | None = None
    for attempt in range(TRIES):
        if attempt:
            say(f"machine busy ({why}); probing again in 2 s")
            time.sleep(2)
        copies = [copy_gbps(device, (1 << 30) if big else (256 << 20)) for _ in range(PROBES)]
        ladder = matmul_ladder(device, dtype, 8192 if big else 2048)
        n, _ = ladder_best(ladder)
        values = {"copy_GBps": copies, "matmul_GFLOPs": ladder[n]}
        why = _steady(values, machine_load())
        if why is None:
            break
    res: dict[str, Any] = {k: robust_best(v) for k, v in values.items()}
    res["matmul_n"] = n
    res["matmul_ladder"] = {str(k): v for k, v in ladder.items()}
    res["probed_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    res["probes"] = values
    if why:
        res["not_kept"] = why
    return res


def _say(text: str) -> None:
    print(f"upbench: {text}…", file=sys.stderr, flush=True)


_unkept: dict[str, dict[str, Any]] = {}  # this process's busy probes: used for its run, never written to disk


def ceilings(device: str, dtype: str = "float32", reprobe: bool = False,
             say: Callable[[str], None] = _say) -> dict[str, Any]:
    """{'copy_GBps', 'matmul_GFLOPs', 'key', 'probed_at'}: kept per machine, device class, torch and dtype.

    ``reprobe``: probe again even if a value is kept (a row above 100 % of a roof); the kept value only rises.
    """
    key = f"{platform.node()} {device_key(device)} torch{torch.__version__} {dtype} {PROBE_VERSION}"
    path = _path(key)
    try:
        kept = json.loads(path.read_text())
    except (OSError, ValueError):
        kept = _unkept.get(key)
    if kept and not reprobe:
        return kept
    new = {"key": key, **_probe(device, dtype, say)}
    if kept:  # raised, never lowered: keep the better of each value with its own probe time
        for k in ("copy_GBps", "matmul_GFLOPs"):
            if kept.get(k, 0) > new[k]:
                new[k] = kept[k]
    if "not_kept" in new:
        _unkept[key] = new
        return new
    try:
        from .results import atomic_write

        atomic_write(path, json.dumps(new))
    except OSError:
        pass  # a read-only home: probe again next time
    return new


def roof_columns(row: dict[str, Any], device: str, dtype: str, pass_: str,
                 get: Callable[..., dict[str, Any]] = ceilings) -> dict[str, Any]:
    """Achieved GFLOP/s and GB/s of an ok row and their share of the device's roofs; above 100 % of a roof
    the ceilings are probed again first (a ceiling probed under load is too low), and the row names the
    ceiling it used and when that was probed."""
    lat = row["latency_median_ms"] * 1e-3
    out: dict[str, Any] = {"gflops_per_s": row["flops"] / lat / 1e9}
    if pass_ == "fwd":
        out["gbytes_per_s"] = row["min_bytes"] / lat / 1e9

    def shares(roof: dict[str, Any]) -> dict[str, Any]:
        s = {"pct_compute_roof": 100 * out["gflops_per_s"] / roof["matmul_GFLOPs"]}
        if "gbytes_per_s" in out:
            s["pct_bw_roof"] = 100 * out["gbytes_per_s"] / roof["copy_GBps"]
        return s

    roof = get(device, dtype)
    pct = shares(roof)
    if any(v > 100 for v in pct.values()):
        roof = get(device, dtype, reprobe=True)
        pct = shares(roof)
    out.update(pct)
    out["roof_probed_at"] = roof.get("probed_at") or "unknown"
    out["roof_key"] = roof.get("key", "") + (f" (not kept: {roof['not_kept']})" if roof.get("not_kept") else "")
    return out


def calibrate(device: str, say: Callable[[str], None] = _say) -> dict[str, Any]:
    """A fixed reference workload timed in every run (ms): a 4 MiB copy and a 512² fp32 matmul.

    The copy is sized to stay in the last-level cache: a DRAM-sized copy on a shared machine swings by a
    third with the neighbours' traffic. Each is probed PROBES times and the robust best (fastest time two
    probes agree on) kept; ``*_spread`` says how far the probes disagreed and ``busy`` what the load was —
    ``compare --normalise`` falls back to raw times when either spread is too high or the machine was busy.
    Probes that disagree are tried again once.
    """
    src = torch.randn(1 << 20, device=device)
    dst = torch.empty_like(src)
    a = torch.randn(512, 512, device=device)
    res: dict[str, Any] = {}
    for attempt in range(TRIES):
        copies = [time_fn(lambda: dst.copy_(src), device, _CAL) for _ in range(PROBES)]
        mms = [time_fn(lambda: a @ a, device, _CAL) for _ in range(PROBES)]
        load = machine_load()
        res = {"copy_ms": 1e3 / robust_best([1 / c.min for c in copies]),
               "matmul_ms": 1e3 / robust_best([1 / m.min for m in mms]),
               "copy_rel_iqr": min(c.rel_iqr for c in copies), "matmul_rel_iqr": min(m.rel_iqr for m in mms),
               "copy_spread": spread([c.min for c in copies]), "matmul_spread": spread([m.min for m in mms]),
               "load": load}
        disagree = next((f"{k} probes disagree by {res[k]:.0%}" for k in ("copy_spread", "matmul_spread")
                         if res[k] > AGREE), None)
        why = busy(load, torch.get_num_threads()) or disagree
        if why:
            res["busy"] = why
        if disagree is None:
            break
        if attempt + 1 < TRIES:
            say(f"calibration disturbed ({disagree}); calibrating again")
    return res
