"""Latency: warm-up, calibrated samples, and a stopping rule on IQR/median or a time budget.

CPU samples use ``time.perf_counter`` around an inner loop calibrated so one sample lasts ≥ ``min_sample_s``
(the timer's resolution and Python's call overhead then stay below 1 %); garbage collection is off while
sampling. CUDA samples use CUDA events around one call each, after an L2 flush with a buffer of the
device's L2 size unless ``cold=False``. Both stop when IQR/median ≤ target after ``min_samples``, or when
the budget ends — then the row's noise verdict says so instead of pretending.
"""

from __future__ import annotations

import gc
import math
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .errors import UsageError


@dataclass(frozen=True)
class Stopping:
    budget_s: float = 1.0
    target_rel_iqr: float = 0.03
    min_samples: int = 5
    max_samples: int = 200
    warmup_s: float = 0.05
    min_sample_s: float = 1e-3
    cold: bool = True  # CUDA: flush L2 before every sample (False: warm-cache timing)
    cuda_graph: bool = False  # CUDA: capture the call once and time graph replays (no launch overhead)


@dataclass
class Latency:
    """Per-call seconds of each sample, and how they were taken."""

    samples: list[float]
    inner: int
    warmup_calls: int
    stop: str  # "converged", "budget" or "max_samples"
    mode: str  # "cpu", "cuda-cold", "cuda-warm"
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def iqr(self) -> float:
        if len(self.samples) < 2:
            return math.nan
        q = statistics.quantiles(self.samples, n=4, method="inclusive")
        return q[2] - q[0]

    @property
    def min(self) -> float:
        return min(self.samples)

    @property
    def rel_iqr(self) -> float:
        return self.iqr / self.median if self.median > 0 else math.nan

    def verdict(self, target: float) -> str:
        """'stable', or 'noisy' with the measured spread (the report prints it)."""
        if len(self.samples) < 3:
            return "too-few-samples"
        return "stable" if self.rel_iqr <= target else "noisy"


def _converged(samples: list[float], st: Stopping) -> bool:
    if len(samples) < st.min_samples:
        return False
    q = statistics.quantiles(samples, n=4, method="inclusive")
    med = statistics.median(samples)
    return med > 0 and (q[2] - q[0]) / med <= st.target_rel_iqr


def time_cpu(fn: Callable[[], object], st: Stopping = Stopping(), clock: Callable[[], float] = time.perf_counter
             ) -> Latency:
    """Time ``fn`` on the CPU. ``clock`` is injectable so the tests can check the arithmetic."""
    t0 = clock()
    fn()  # first call: lazy initialisation, caches
    first = max(clock() - t0, 1e-9)
    warm = 1
    start = clock()
    while clock() - start < st.warmup_s:
        fn()
        warm += 1
    per_call = (clock() - start) / max(warm - 1, 1) if warm > 1 else first
    inner = max(1, math.ceil(st.min_sample_s / max(per_call, 1e-9)))
    samples: list[float] = []
    stop = "max_samples"
    gc_was = gc.isenabled()
    gc.disable()
    try:
        begin = clock()
        while len(samples) < st.max_samples:
            t = clock()
            for _ in range(inner):
                fn()
            samples.append((clock() - t) / inner)
            if _converged(samples, st):
                stop = "converged"
                break
            if clock() - begin > st.budget_s and len(samples) >= min(st.min_samples, 3):
                stop = "budget"
                break
    finally:
        if gc_was:
            gc.enable()
    return Latency(samples, inner, warm, stop, "cpu")


def check_cuda_timing_allowed() -> None:
    if os.environ.get("CUDA_LAUNCH_BLOCKING", "0") not in ("", "0"):
        raise UsageError("CUDA_LAUNCH_BLOCKING", "is set; it serialises every launch and distorts timings",
                         "unset it before timing")


def _l2_flush_buffer(device: torch.device) -> torch.Tensor:
    l2 = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0) or 64 * 2**20
    return torch.empty(2 * l2, dtype=torch.uint8, device=device)  # twice L2: every line is evicted


def _graphed(fn: Callable[[], object]) -> Callable[[], object]:
    """Capture ``fn`` into a CUDA graph (after side-stream warm-up, as capture requires); replay it."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        keep = fn()  # outputs live in the graph's pool; kept alive with the graph
    graph._upbench_outputs = keep  # type: ignore[attr-defined]
    return graph.replay


def time_cuda(fn: Callable[[], object], st: Stopping = Stopping()) -> Latency:
    """Time ``fn`` with CUDA events, one call per sample; ``st.cold`` flushes L2 before each sample."""
    check_cuda_timing_allowed()
    dev = torch.device("cuda", torch.cuda.current_device())
    cold = st.cold
    if st.cuda_graph:
        fn = _graphed(fn)
    flush = _l2_flush_buffer(dev) if cold else None
    # Warm up until two successive batches of calls agree within 5 % (not a fixed count), ≤ warm-up budget·10.
    warm, prev, t_end = 0, None, time.perf_counter() + max(st.warmup_s * 10, 0.2)
    while True:
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(5):
            fn()
        torch.cuda.synchronize()
        cur = (time.perf_counter() - t) / 5
        warm += 5
        if (prev is not None and abs(cur - prev) <= 0.05 * prev) or time.perf_counter() > t_end:
            break
        prev = cur
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(st.max_samples)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(st.max_samples)]
    samples: list[float] = []
    stop = "max_samples"
    begin = time.perf_counter()
    for i in range(st.max_samples):
        if flush is not None:
            flush.zero_()
        starts[i].record()
        fn()
        ends[i].record()
        if (i + 1) % 5 == 0 or i + 1 == st.max_samples:
            torch.cuda.synchronize()
            samples = [s.elapsed_time(e) / 1e3 for s, e in zip(starts[: i + 1], ends[: i + 1], strict=True)]
            if _converged(samples, st):
                stop = "converged"
                break
            if time.perf_counter() - begin > st.budget_s and len(samples) >= st.min_samples:
                stop = "budget"
                break
    torch.cuda.synchronize()
    mode = ("cuda-cold" if cold else "cuda-warm") + ("-graph" if st.cuda_graph else "")
    return Latency(samples, 1, warm, stop, mode)


def time_fn(fn: Callable[[], object], device: str, st: Stopping = Stopping()) -> Latency:
    return time_cuda(fn, st) if device == "cuda" else time_cpu(fn, st)
