"""A run directory while a run writes it: the lock, the start record and the stream of finished rows.

- ``run.lock`` — ``{"pid", "host", "start_ticks"}`` of the process writing here; created exclusively, so a
  second run on the same directory is refused while the first lives, and a lock whose process is gone (a
  SIGKILL, the OOM killer) marks the run as dead instead of "running".
- ``run.json`` — the run's metadata as it started: what ``--resume`` checks and rebuilds the cells from.
- ``rows.jsonl`` — one JSON object per finished cell, appended and flushed to the OS per cell, so a killed
  process (SIGKILL, the OOM killer) loses no finished cell; synced to disk per cell unless the last sync is
  under ``SYNC_EVERY_S`` old (a sync costs 2–4 ms on a busy shared disk, as long as a tiny cell), so a power
  loss costs at most that second of rows. Constant time per cell however long the sweep. A torn last line
  (the machine died mid-write) is dropped on reading.

``results.json``, ``results.csv`` and ``report.md`` are written once, at the end, from the stream.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
from pathlib import Path
from typing import Any

from .errors import UsageError

LOCK = "run.lock"
START = "run.json"
STREAM = "rows.jsonl"


def _start_ticks(pid: int) -> str | None:
    """The process's start time in clock ticks (Linux): tells a live pid from a reused one."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _alive(lock: dict[str, Any]) -> bool:
    pid = lock.get("pid")
    if not isinstance(pid, int) or lock.get("host") != socket.gethostname():
        return lock.get("host") != socket.gethostname()  # another machine's lock: cannot tell, assume alive
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    ticks = _start_ticks(pid)
    return ticks is None or lock.get("start_ticks") in (None, ticks)


def read_lock(run_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((run_dir / LOCK).read_text())
    except (OSError, ValueError):
        return None


def state(run_dir: Path) -> str:
    """``running`` (a live process holds the lock), ``dead`` (its process is gone) or ``idle`` (no lock)."""
    lock = read_lock(run_dir)
    if lock is None:
        return "idle" if not (run_dir / LOCK).exists() else "dead"
    return "running" if _alive(lock) else "dead"


class Lock:
    """Exclusive ownership of a run directory by this process (a context manager)."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK
        self.held = False

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "start_ticks": _start_ticks(os.getpid())}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                other = read_lock(self.path.parent) or {}
                if other and _alive(other):
                    raise UsageError(f"--out {self.path.parent}",
                                     f"another upbench run (pid {other.get('pid')} on {other.get('host')}) is "
                                     "writing here", "wait for it, or choose another directory") from None
                self.path.unlink(missing_ok=True)  # the writer died: its lock is stale
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            return
        raise UsageError(f"--out {self.path.parent}", "could not take the run directory's lock", "try again")

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> Lock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def clean(v: Any) -> Any:
    """JSON has no NaN or infinity: NaN → null, ±inf → "inf"/"-inf" (results.load_run turns them back)."""
    if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
        return None if math.isnan(v) else ("inf" if v > 0 else "-inf")
    return v


SYNC_EVERY_S = 1.0


class RowStream:
    """Append-only ``rows.jsonl``: one line per finished cell, flushed per cell, synced (see above)."""

    def __init__(self, run_dir: Path, sync_every_s: float = SYNC_EVERY_S) -> None:
        self.path = run_dir / STREAM
        _drop_torn_tail(self.path)
        self._f = open(self.path, "a", encoding="utf-8")  # noqa: SIM115  # held for the run's lifetime
        self.sync_every_s = sync_every_s
        self._synced = -math.inf
        self.bytes_written = 0
        self.appends = 0
        self.syncs = 0

    def append(self, row: dict[str, Any]) -> None:
        line = json.dumps({k: clean(v) for k, v in row.items()}, default=str, allow_nan=False) + "\n"
        self._f.write(line)
        self._f.flush()
        self.bytes_written += len(line.encode())
        self.appends += 1
        if time.monotonic() - self._synced >= self.sync_every_s:
            self._sync()

    def _sync(self) -> None:
        os.fsync(self._f.fileno())
        self._synced = time.monotonic()
        self.syncs += 1

    def close(self) -> None:
        if not self._f.closed:
            self._f.flush()
            self._sync()
            self._f.close()


def _drop_torn_tail(path: Path) -> None:
    """Cut a last line that does not end in a newline: the writer died mid-line; it is no data."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return
    if data and not data.endswith(b"\n"):
        with open(path, "r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)


def read_rows(run_dir: Path) -> list[dict[str, Any]]:
    """The streamed rows, later rows of a cell replacing earlier ones; a torn last line is dropped."""
    path = run_dir / STREAM
    try:
        data = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    lines = data.split("\n")
    tail = lines.pop()  # "" when the file ends in a newline; otherwise the torn last line
    del tail
    rows: dict[str, dict[str, Any]] = {}
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            raise UsageError(f"run {run_dir}", f"{STREAM} line {n} is not JSON (the file was edited or damaged)",
                             "start the run again with --force") from None
        rows[row["cell_id"]] = row
    return list(rows.values())


def read_start(run_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((run_dir / START).read_text())
    except FileNotFoundError:
        return None
    except ValueError:
        raise UsageError(f"run {run_dir}", f"{START} is not JSON", "start the run again with --force") from None
