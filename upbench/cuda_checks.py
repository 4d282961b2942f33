"""CUDA-only trust checks: work the timer cannot see, host syncs inside a call, the backend that ran, energy.

Each check is split into a measuring function (needs a GPU; not run in the CPU tests) and a pure function on
the recorded numbers (tested on the CPU):

- **timing check**: the same batch of calls timed with CUDA events on a fresh non-blocking stream and with
  device-wide synchronisation and the host clock. Work launched on another stream, or on the legacy default
  stream, finishes outside the events but inside the host window; a large gap marks the row
  ``escaped-stream``. A call queued behind a long GPU spin kernel must return at once; if it returns only
  after the spin, the call synchronised with the host (``host-sync``).
- **backend**: an impl that can fall back (an optional library missing) says what ran through an
  ``upbench_backend`` attribute of its callable (a string, or a function returning one).
- **energy**: NVML's total-energy counter (mJ, updated every 20–100 ms) read around a window of at least one
  second of repeated calls, with the enforced power limit, the clocks and whether clocks were locked.
  Absent, with the reason, on the CPU or where NVML lacks the counter.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ._optional import pynvml_reason, try_pynvml

ESCAPE_RATIO = 1.5  # host/events above this, and …
ESCAPE_MIN_MS = 0.02  # … by at least this much per call, marks escaped work
SPIN_MS = 50.0  # the spin kernel a call is queued behind in the host-sync test
HOST_SYNC_FRACTION = 0.5  # the call returned after this fraction of the spin: it waited for the GPU
ENERGY_WINDOW_S = 1.0  # ≥ 10 updates of the counter: ≤ 10 % quantisation error


# -- stream and host-sync check --------------------------------------------------------------------------------
@dataclass(frozen=True)
class PairedTiming:
    """Per-call ms of the same batches of calls, timed both ways, and the host-sync probe."""

    events_ms: list[float]  # CUDA events on the timing stream
    host_ms: list[float]  # device-wide synchronize before and after, host clock
    return_ms: float  # host time for one call to return when queued behind the spin kernel
    spin_ms: float  # how long the spin kernel ran


def timing_check(t: PairedTiming) -> str:
    """``ok``, or what is wrong with timing this impl by CUDA events (pure: tested on the CPU)."""
    problems = []
    ev, host = statistics.median(t.events_ms), statistics.median(t.host_ms)
    if host > ESCAPE_RATIO * ev and host - ev > ESCAPE_MIN_MS:
        problems.append(f"escaped-stream (events {ev:.3g} ms vs synchronised host clock {host:.3g} ms per call)")
    if t.spin_ms > 0 and t.return_ms > HOST_SYNC_FRACTION * t.spin_ms:
        problems.append(f"host-sync (the call returned after {t.return_ms:.3g} ms queued behind a "
                        f"{t.spin_ms:.3g} ms kernel)")
    return "; ".join(problems) or "ok"


def measure_paired(fn: Callable[[], object], calls: int = 20, batches: int = 5) -> PairedTiming:  # pragma: no cover
    """Record a :class:`PairedTiming` for ``fn`` on the current CUDA device (needs a GPU)."""
    import torch

    side = torch.cuda.Stream()  # torch's pool streams are non-blocking: legacy-stream work escapes them
    side.wait_stream(torch.cuda.current_stream())
    ev_ms, host_ms = [], []
    with torch.cuda.stream(side):
        fn()
        torch.cuda.synchronize()
        for _ in range(batches):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            for _ in range(calls):
                fn()
            b.record()
            torch.cuda.synchronize()
            ev_ms.append(a.elapsed_time(b) / calls)
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            torch.cuda.synchronize()
            host_ms.append((time.perf_counter() - t0) * 1e3 / calls)
        # host-sync probe: spin the stream for SPIN_MS, then time how long one call takes to return
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        cycles = int(SPIN_MS * _spin_cycles_per_ms())
        start.record()
        torch.cuda._sleep(cycles)
        end.record()
        t0 = time.perf_counter()
        fn()
        ret = (time.perf_counter() - t0) * 1e3
        torch.cuda.synchronize()
        spin = start.elapsed_time(end)
    torch.cuda.current_stream().wait_stream(side)
    return PairedTiming(ev_ms, host_ms, ret, spin)


def _spin_cycles_per_ms() -> float:  # pragma: no cover - GPU only
    """Calibrate torch.cuda._sleep (a spin of N clock cycles) against CUDA events."""
    import torch

    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    torch.cuda._sleep(1_000_000)
    b.record()
    b.synchronize()
    return 1_000_000 / max(a.elapsed_time(b), 1e-3)


# -- backend that ran ------------------------------------------------------------------------------------------
def backend_of(fn: Any) -> str | None:
    """What an impl's callable reports it ran (``upbench_backend``: a string or a function), or None."""
    b = getattr(fn, "upbench_backend", None)
    if callable(b):
        b = b()
    return None if b is None else str(b)


# -- energy ------------------------------------------------------------------------------------------------------
def joules_per_call(energy_mj_before: int, energy_mj_after: int, calls: int, window_s: float) -> dict[str, Any]:
    """Energy columns from two readings of NVML's counter (pure: tested on the CPU)."""
    if calls <= 0 or window_s < ENERGY_WINDOW_S:
        return {"energy_reason": f"window {window_s:.2f} s with {calls} calls is under {ENERGY_WINDOW_S} s"}
    if energy_mj_after < energy_mj_before:
        return {"energy_reason": "NVML energy counter went backwards (driver reloaded during the window)"}
    return {"energy_j_per_call": (energy_mj_after - energy_mj_before) / 1e3 / calls,
            "energy_window_s": window_s, "energy_calls": calls}


def clocks_locked(reasons: int, app_clock_mhz: int | None, default_app_clock_mhz: int | None) -> bool:
    """Clocks pinned by an application-clock or locked-clock setting (NVML reason bit 0x2, or a changed
    application clock)."""
    if reasons & 0x2:
        return True
    return app_clock_mhz is not None and default_app_clock_mhz is not None and app_clock_mhz != default_app_clock_mhz


def energy_unavailable(device: str) -> str | None:
    """Why energy cannot be measured for ``device`` here, or None."""
    if device != "cuda":
        return "no energy counter on the CPU (NVML's counter is GPU-only)"
    if try_pynvml() is None:
        return pynvml_reason()
    return None


def measure_energy(fn: Callable[[], object], device: str) -> dict[str, Any]:  # pragma: no cover - GPU only
    """Energy columns for ``fn``: joules per call over ≥ ENERGY_WINDOW_S, power limit, clocks, locked."""
    why = energy_unavailable(device)
    if why:
        return {"energy_reason": why}
    import torch

    nv = try_pynvml()
    assert nv is not None
    try:
        nv.nvmlInit()
    except Exception as exc:
        return {"energy_reason": f"NVML unavailable: {exc}"}
    try:
        h = nv.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
        try:
            e0 = nv.nvmlDeviceGetTotalEnergyConsumption(h)
        except Exception as exc:  # pre-Volta GPUs, or a driver without the counter
            return {"energy_reason": f"NVML has no total-energy counter here: {exc}"}
        torch.cuda.synchronize()
        t0, calls = time.perf_counter(), 0
        while time.perf_counter() - t0 < ENERGY_WINDOW_S:
            for _ in range(10):
                fn()
            calls += 10
            torch.cuda.synchronize()
        window = time.perf_counter() - t0
        e1 = nv.nvmlDeviceGetTotalEnergyConsumption(h)
        row = joules_per_call(e0, e1, calls, window)
        row["power_limit_w"] = _try(lambda: nv.nvmlDeviceGetEnforcedPowerLimit(h) / 1e3)
        row["energy_sm_clock_mhz"] = _try(lambda: nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM))
        row["energy_mem_clock_mhz"] = _try(lambda: nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_MEM))
        reasons = _try(lambda: nv.nvmlDeviceGetCurrentClocksEventReasons(h)) or 0
        app = _try(lambda: nv.nvmlDeviceGetApplicationsClock(h, nv.NVML_CLOCK_SM))
        default = _try(lambda: nv.nvmlDeviceGetDefaultApplicationsClock(h, nv.NVML_CLOCK_SM))
        row["clocks_locked"] = clocks_locked(int(reasons), app, default)
        return row
    finally:
        nv.nvmlShutdown()


def _try(read: Callable[[], Any]) -> Any:  # pragma: no cover - GPU only
    try:
        return read()
    except Exception:
        return None


def cuda_trust_columns(fn: Callable[[], object]) -> dict[str, Any]:  # pragma: no cover - GPU only
    """The timing-check column of a CUDA cell (called after its latency pass)."""
    return {"timing_check": timing_check(measure_paired(fn))}


# -- GPU self-check (called by upbench.selfcheck; needs a GPU) -----------------------------------------------------
def selfcheck_trust(device: str) -> list[tuple[str, bool, str]]:  # pragma: no cover - GPU only
    """(name, ok, detail) for each trust check against planted CUDA behaviour; empty on the CPU."""
    if device != "cuda":
        return []
    import torch

    from .adversarial import poison_free_memory

    out: list[tuple[str, bool, str]] = []
    x = torch.randn(1 << 22, device="cuda")
    other = torch.cuda.Stream()

    def honest() -> object:
        return x.sum()

    def escaped() -> None:  # work on a second stream that the caller's stream never waits for
        with torch.cuda.stream(other):
            torch.cuda._sleep(500_000)

    def legacy() -> None:  # work on the legacy default stream while the caller times its own stream
        with torch.cuda.stream(torch.cuda.default_stream()):
            torch.cuda._sleep(500_000)

    def synced() -> float:  # a host sync inside the call
        return float(x.sum().item())

    for name, fn, want in (("honest call", honest, "ok"), ("work on another stream", escaped, "escaped-stream"),
                           ("work on the legacy default stream", legacy, "escaped-stream"),
                           ("host sync inside the call", synced, "host-sync")):
        got = timing_check(measure_paired(fn))
        out.append((f"timing_check: {name} → {want}", got.split(" ")[0] == want, got))
    n = 1 << 20
    poison_free_memory([n], "cuda", torch.float32)
    fresh = torch.empty(n, device="cuda")
    out.append(("poisoned caching-allocator block reaches the next torch.empty", bool(torch.isnan(fresh).any()),
                f"{int(torch.isnan(fresh).sum())} NaN of {n}"))
    a = torch.randn(2048, 2048, device="cuda")
    e = measure_energy(lambda: a @ a, "cuda")
    j = e.get("energy_j_per_call")
    out.append(("energy per call of a 2048² matmul over ≥ 1 s", j is not None and 0 < j < 10,
                ", ".join(f"{k}={v}" for k, v in e.items())))
    return out
