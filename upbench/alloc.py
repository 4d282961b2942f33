"""Allocation modes for CPU timing: what a plain call pays for its output's memory, or the kernel alone.

glibc serves a block this large (≥ 128 KiB by default) with a fresh ``mmap`` and returns it to the OS on
free, so every call that returns a large new tensor faults its pages in again: on the development machine a
32 MiB SAPA output costs 8,193 minor faults per call, half the call's time. Two modes, so a report can
separate kernel time from first-touch cost and say which it shows:

- ``fresh``: the allocator as configured (what a user's plain call sees);
- ``warm``: glibc keeps freed memory (no ``mmap`` for large blocks, no trimming), so the next call reuses
  pages already faulted in — the time of the kernel and a warm pool, as a caching allocator would give.

The mode is process-wide while it is active, so it wraps one cell's timing pass at a time. Wiring as a sweep
axis (``alloc = ["fresh", "warm"]``) belongs to the axis table; :func:`allocation_mode` is the measurement.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Iterator
from contextlib import contextmanager

MODES = ("fresh", "warm")
# mallopt parameters (malloc.h) and glibc's defaults, restored afterwards
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4
_DEFAULTS = ((_M_MMAP_MAX, 65536), (_M_MMAP_THRESHOLD, 128 * 1024), (_M_TRIM_THRESHOLD, 128 * 1024))


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        lib = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return lib if lib is not None and hasattr(lib, "mallopt") else None


def unavailable(mode: str) -> str | None:
    """Why ``mode`` cannot be set here, or None."""
    if mode not in MODES:
        return f"unknown allocation mode {mode!r}; modes are {', '.join(MODES)}"
    if mode == "warm" and _libc() is None:
        return "the warm mode needs glibc's mallopt"
    return None


@contextmanager
def allocation_mode(mode: str) -> Iterator[None]:
    """Run the body with the CPU allocator in ``mode``; raises ValueError for a mode unavailable here."""
    why = unavailable(mode)
    if why:
        raise ValueError(why)
    if mode == "fresh":
        yield
        return
    libc = _libc()
    assert libc is not None
    ok = libc.mallopt(_M_MMAP_MAX, 0) and libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)
    if not ok:
        raise ValueError("mallopt refused the warm allocation mode")
    try:
        yield
    finally:
        for param, value in _DEFAULTS:
            libc.mallopt(param, value)
        libc.malloc_trim(0)
