"""Speed of light: the fastest a row could possibly run, and the verdict on a latency below it.

A row's floor is the roofline bound of its analytic counts on the device's probed ceilings: the time to
do its FLOPs at the matmul ceiling, or to move its minimal bytes at the copy ceiling, whichever is longer
(bytes only for forward passes, whose ``min_bytes`` they are). A measured latency below the floor is
impossible: the impl skipped work, the counts are wrong, or the timer missed the work. Probed ceilings are
best samples of a short probe and can sit under the true peak, so the verdict leaves a slack on top of the
row's own spread before it calls a row ``implausible``.

A second, softer check (report only): a speed-up over the operator's reference impl (its first declared
impl, the plain torch form by convention) beyond a per-suite limit is listed for a human to look at.
"""

from __future__ import annotations

import math
from typing import Any

# A row must beat the floor by more than this (and its own IQR) to be implausible. The probed matmul is not
# the hardware's peak: in the committed CPU latency report a oneDNN 3×3 conv (pixelshuffle) ran at 111 % of
# it. Ceilings probed under load sit lower still (upbench.ceilings keeps the best probe; see its notes).
CEILING_SLACK = 0.25
DEFAULT_MAX_SPEEDUP = 100.0  # × over the reference impl; KernelBench-style "104×" wins deserve a look
MAX_SPEEDUP: dict[str, float] = {}  # per-suite limits, by suite name


def floor_ms(flops: float, min_bytes: float | None, gflops: float | None, gbps: float | None) -> float | None:
    """max(flops / ceiling, bytes / bandwidth) in ms; None when neither term is known."""
    terms = []
    if flops and gflops and gflops > 0:
        terms.append(flops / (gflops * 1e9))
    if min_bytes and gbps and gbps > 0:
        terms.append(min_bytes / (gbps * 1e9))
    return max(terms) * 1e3 if terms else None


def verdict(latency_ms: float, rel_iqr: float | None, floor: float | None, slack: float = CEILING_SLACK) -> str:
    """``implausible`` when the latency beats the floor beyond noise and ceiling slack, ``ok`` otherwise,
    ``""`` without a floor."""
    if floor is None or not floor > 0:
        return ""
    spread = rel_iqr if rel_iqr is not None and math.isfinite(rel_iqr) else 0.0
    return "implausible" if latency_ms * (1 + 2 * spread) < floor * (1 - slack) else "ok"


def floor_columns(row: dict[str, Any], roof: dict[str, Any]) -> dict[str, Any]:
    """``floor_ms``, ``latency_over_floor`` and ``floor_verdict`` for a measured row and its ceilings."""
    lat = row.get("latency_median_ms")
    f = floor_ms(row.get("flops") or 0, row.get("min_bytes") if row.get("pass") == "fwd" else None,
                 roof.get("matmul_GFLOPs"), roof.get("copy_GBps"))
    if not lat or f is None:
        return {}
    return {"floor_ms": f, "latency_over_floor": lat / f,
            "floor_verdict": verdict(lat, row.get("latency_rel_iqr"), f)}


def max_speedup(suite: str) -> float:
    return MAX_SPEEDUP.get(suite, DEFAULT_MAX_SPEEDUP)


def speedup_flags(rows: list[dict[str, Any]], reference_impl: dict[str, str],
                  key_cols: tuple[str, ...]) -> dict[int, str]:
    """Row index → note, for ok rows faster than their operator's reference impl beyond the suite's limit.

    ``reference_impl`` maps an operator to its reference impl; ``key_cols`` identify a case (every axis but
    the impl). Rows without a reference row of the same case are not judged.
    """
    ref_lat: dict[tuple[Any, ...], float] = {}
    for r in rows:
        if r.get("status") == "ok" and r.get("impl") == reference_impl.get(r.get("op", "")) \
                and r.get("latency_median_ms"):
            ref_lat[tuple(str(r.get(c)) for c in key_cols)] = float(r["latency_median_ms"])
    flags = {}
    for i, r in enumerate(rows):
        lat = r.get("latency_median_ms")
        ref = ref_lat.get(tuple(str(r.get(c)) for c in key_cols))
        if r.get("status") != "ok" or not lat or not ref or r.get("impl") == reference_impl.get(r.get("op", "")):
            continue
        limit = max_speedup(str(r.get("suite")))
        if ref / float(lat) > limit:
            flags[i] = (f"speed-up {ref / float(lat):.0f}× over {reference_impl[r['op']]} "
                        f"(limit {limit:.0f}×)")
    return flags
