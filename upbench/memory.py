"""Peak memory: the extra bytes a callable allocates at its worst moment, over what was live before it.

Measured in its own pass (the profiler slows the op, so it never shares a pass with timing).
CPU: the torch profiler with ``profile_memory=True`` records every allocation and free of torch's CPU
allocator as a ``[memory]`` event; the running total of those events is the exact allocator peak. Only
allocations inside the window count, so the inputs created beforehand are excluded, and the callable's
result is dropped inside the window so it counts once. CUDA: the caching allocator's
``requested_bytes.all.peak`` minus the bytes requested before the call (block rounding excluded).
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils._python_dispatch import TorchDispatchMode


def result_bytes(out: object) -> int:
    """Bytes of the tensors a call returns (outputs or gradients): the floor of any impl's footprint."""
    if isinstance(out, torch.Tensor):
        return out.numel() * out.element_size()
    if isinstance(out, (list, tuple)):
        return sum(result_bytes(o) for o in out)
    return 0


def _run_and_drop(fn: Callable[[], object]) -> None:
    out = fn()
    del out


@contextmanager
def _kineto_quiet() -> Iterator[None]:
    """Kineto prints a line to fd 2 at every profiler start and stop; keep every other line."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            for line in tmp.read().decode(errors="replace").splitlines(keepends=True):
                if not _KINETO_NOISE.match(line):
                    sys.stderr.write(line)


_KINETO_NOISE = re.compile(r"^(USDT|INFO|WARNING):\d{4}-\d\d-\d\d .*(profiler_st|init\.cpp|Activity)")


def peak_cpu(fn: Callable[[], object]) -> int:
    """Exact extra peak of torch's CPU allocator while ``fn`` runs, in bytes."""
    with _kineto_quiet(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        _run_and_drop(fn)
    events = [e for e in prof.profiler.kineto_results.events()
              if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU]
    events.sort(key=lambda e: e.start_ns())
    total = peak = 0
    for e in events:
        total += e.nbytes()
        peak = max(peak, total)
    return peak


def peak_cuda(fn: Callable[[], object]) -> int:
    """Extra peak of requested bytes on the current CUDA device while ``fn`` runs."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_stats().get("requested_bytes.all.current", torch.cuda.memory_allocated())
    _run_and_drop(fn)
    torch.cuda.synchronize()
    stats = torch.cuda.memory_stats()
    return int(stats.get("requested_bytes.all.peak", torch.cuda.max_memory_allocated()) - base)


def peak(fn: Callable[[], object], device: str) -> int:
    return peak_cuda(fn) if device == "cuda" else peak_cpu(fn)


def hwm_delta_cpu(fn: Callable[[], object]) -> int | None:
    """Physical cross-check: VmHWM after ``fn`` minus VmRSS before it, with the high-water mark reset.

    Includes what torch's allocator count cannot see (malloc arenas, page granularity) and misses memory
    reused from freed-but-kept pages, so it agrees with the allocator peak only roughly. None where
    /proc/self/clear_refs is not writable.
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return None
    before = _status_kb("VmRSS")
    _run_and_drop(fn)
    after = _status_kb("VmHWM")
    return None if before is None or after is None else (after - before) * 1024


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def vm_hwm_bytes() -> int | None:
    """Linux VmHWM of this process (physical peak); None elsewhere."""
    kb = _status_kb("VmHWM")
    return None if kb is None else kb * 1024


class _OpCalls(TorchDispatchMode):
    def __init__(self, match: Callable[[str], bool]) -> None:
        super().__init__()
        self.match, self.calls = match, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if self.match(func.name()):
            self.calls.append((func, args, kwargs or {}))
        return func(*args, **(kwargs or {}))


def op_calls(fn: Callable[[], object], match: Callable[[str], bool]) -> list[tuple[object, tuple, dict]]:
    """(op, args, kwargs) of every dispatcher op whose qualified name (``upbench::sapa_fused``) ``match``
    accepts, as ``fn`` calls it: so one op of a whole impl can be re-run alone, on the very inputs it got,
    e.g. under :func:`peak_cpu`. Custom ops show as themselves (their bodies run below the mode)."""
    with _OpCalls(match) as mode:
        _run_and_drop(fn)
    return mode.calls
