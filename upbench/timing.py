"""Latency: warm-up, calibrated samples, and a stopping rule on IQR/median or a time budget.

CPU samples use ``time.perf_counter`` around an inner loop calibrated so one sample lasts ≥ ``min_sample_s``
(the timer's resolution and Python's call overhead then stay below 1 %); garbage collection is off while
sampling. Beside wall time each CPU sample reads the process's CPU time and involuntary context switches
(``getrusage``): a sample during which the scheduler took the CPU away (a switch, and the process's threads
got less CPU than wall time × threads by more than ``PREEMPT_MARGIN``) is discarded and counted, and a row
whose samples were mostly preempted is ``contended``, never ``stable`` — on a shared machine every sample
can wait for a time slice consistently, which a spread test alone cannot see. CUDA samples use CUDA events
around one call each, after an L2 flush with a buffer of the device's L2 size unless ``cold=False``. Both
stop when IQR/median ≤ target after ``min_samples``, or when the budget ends — then the row's noise verdict
says so instead of pretending.
"""

from __future__ import annotations

import gc
import math
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

try:
    import resource
except ImportError:  # not on Windows: the CPU-time check then runs without the switch count
    resource = None  # type: ignore[assignment]

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
    preempted: int = 0  # CPU samples discarded because the scheduler took the CPU away
    cpu_over_wall: float = math.nan  # CPU: median over samples of process CPU time / wall time
    minor_faults_per_call: float = math.nan  # CPU: page faults of the sampled calls / calls
    contended: bool = False  # most samples were preempted: the time is the machine's load, not the call's

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
        """'contended', 'stable', or 'noisy' with the measured spread (the report prints it)."""
        if self.contended:
            return "contended"
        if len(self.samples) < 3:
            return "too-few-samples"
        return "stable" if self.rel_iqr <= target else "noisy"


def _converged(samples: list[float], st: Stopping) -> bool:
    if len(samples) < st.min_samples:
        return False
    q = statistics.quantiles(samples, n=4, method="inclusive")
    med = statistics.median(samples)
    return med > 0 and (q[2] - q[0]) / med <= st.target_rel_iqr


PREEMPT_MARGIN = 0.05  # CPU time may fall this fraction short of wall × threads before a switch counts


def usage() -> tuple[float, int, int]:
    """(process CPU seconds, involuntary context switches, minor page faults) of this process so far."""
    cpu = time.process_time()
    if resource is None:
        return cpu, -1, -1
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return cpu, ru.ru_nivcsw, ru.ru_minflt


def preempted(wall: float, cpu: float, switches: int, threads: int) -> bool:
    """The scheduler took the CPU away during a sample: an involuntary switch (where the OS counts them), and
    the threads got less CPU than wall × threads by more than the margin. One thread: the test is exact; more
    threads: a call's serial parts also leave CPU unused, so it counts only together with a switch."""
    if switches == 0 or (switches < 0 and threads > 1):  # < 0: the OS does not count switches
        return False
    return cpu < wall * max(threads, 1) * (1 - PREEMPT_MARGIN)


def time_cpu(fn: Callable[[], object], st: Stopping = Stopping(), clock: Callable[[], float] = time.perf_counter,
             usage: Callable[[], tuple[float, int, int]] = usage, threads: int | None = None) -> Latency:
    """Time ``fn`` on the CPU. ``clock`` and ``usage`` are injectable so the tests can check the arithmetic;
    ``threads`` (default torch's) is what the CPU-time check expects busy."""
    threads = threads or torch.get_num_threads()
    t0 = clock()
    fn()  # first call: lazy initialisation, caches
    first = max(clock() - t0, 1e-9)
    warm = 1
    start = clock()
    # at least three calls as well as warmup_s: a warm allocator pool (alloc = warm) settles by calls, and on
    # a loaded machine warmup_s can be a single call
    while clock() - start < st.warmup_s or warm < 3:
        fn()
        warm += 1
    per_call = (clock() - start) / max(warm - 1, 1) if warm > 1 else first
    inner = max(1, math.ceil(st.min_sample_s / max(per_call, 1e-9)))
    samples: list[float] = []
    dropped: list[float] = []
    utils: list[float] = []
    stop = "max_samples"
    gc_was = gc.isenabled()
    gc.disable()
    try:
        begin = clock()
        u_begin = usage()
        while len(samples) + len(dropped) < st.max_samples:
            u0 = usage()
            t = clock()
            for _ in range(inner):
                fn()
            wall = clock() - t
            u1 = usage()
            utils.append((u1[0] - u0[0]) / wall if wall > 0 else math.nan)
            if preempted(wall, u1[0] - u0[0], u1[1] - u0[1] if u1[1] >= 0 else -1, threads):
                dropped.append(wall / inner)
            else:
                samples.append(wall / inner)
            if _converged(samples, st):
                stop = "converged"
                break
            if clock() - begin > st.budget_s and len(samples) + len(dropped) >= min(st.min_samples, 3):
                stop = "budget"
                break
        u_end = usage()
    finally:
        if gc_was:
            gc.enable()
    calls = (len(samples) + len(dropped)) * inner
    faults = (u_end[2] - u_begin[2]) / calls if u_end[2] >= 0 else math.nan
    kept = samples if len(samples) >= 3 else samples + dropped  # too few clean ones: keep all, say contended
    return Latency(kept, inner, warm, stop, "cpu", preempted=len(dropped), contended=len(dropped) > len(samples)
                   or (len(samples) < 3 and bool(dropped)),
                   cpu_over_wall=statistics.median(utils) if utils else math.nan, minor_faults_per_call=faults)


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


def contention_columns(lat: Latency, device: str) -> dict[str, object]:
    """The CPU row's contention and first-touch columns (declared together in metrics.py)."""
    if device != "cpu":
        return {}
    return {"latency_preempted": lat.preempted, "latency_cpu_over_wall": lat.cpu_over_wall,
            "minor_faults_per_call": lat.minor_faults_per_call,
            # torch's CPU allocator reads it at start-up: 1 = 2 MiB-aligned blocks (transparent huge pages)
            "thp_mem_alloc": os.environ.get("THP_MEM_ALLOC_ENABLE", "") or "unset"}


BUSY_LOAD_PER_CORE = 0.5  # a run is "busy" when the 1-minute load average beyond its own threads exceeds this


def machine_load() -> dict[str, object]:
    """1/5/15-minute load averages and the core count now (stored before and after a run)."""
    try:
        one, five, fifteen = os.getloadavg()
    except (OSError, AttributeError):
        return {"reason": "the OS gives no load average"}
    return {"load1": round(one, 2), "load5": round(five, 2), "load15": round(fifteen, 2),
            "cores": os.cpu_count(), "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def busy(load: dict[str, object], own_threads: int = 1) -> str | None:
    """Why the machine was busy by this load record (others' runnable tasks per core), or None."""
    one, cores = load.get("load1"), load.get("cores")
    if not isinstance(one, (int, float)) or not isinstance(cores, int) or cores <= 0:
        return None
    others = max(one - own_threads, 0.0)
    if others / cores > BUSY_LOAD_PER_CORE:
        return f"load average {one:g} on {cores} cores"
    return None
