"""Where cells run: in this process (default), a deterministic shard of them, or as Ray tasks.

upbench grows no scheduler of its own. ``--shard i/n`` works under any batch system (Slurm arrays, CI
matrices) and ``upbench merge`` joins the shards; ``--executor ray`` hands cells to an existing Ray cluster,
one whole GPU per timed CUDA cell so no two timed cells ever share a GPU, and CPU cells limited to their
thread budget. Every path produces the same rows as a local run.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterator
from typing import Any

from .errors import UsageError
from .metrics import Options
from .runner import run_cell
from .sweeps import Cell

Row = dict[str, Any]


def fingerprint(cells: list[Cell]) -> str:
    """Identifies a suite's expansion: same cells (ids cover ops, impls and every axis value), same order."""
    return hashlib.sha256("\n".join(c.id for c in cells).encode()).hexdigest()[:16]


def parse_shard(spec: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d+)/(\d+)", spec.strip())
    if not m or int(m[2]) < 1 or int(m[1]) >= int(m[2]):
        raise UsageError(f"--shard {spec}", "expected i/n with 0 ≤ i < n", "e.g. --shard 0/4 … --shard 3/4")
    return int(m[1]), int(m[2])


def shard(cells: list[Cell], index: int, count: int) -> list[Cell]:
    """Every count-th cell from ``index``: deterministic, balanced over the sweep's order."""
    return cells[index::count]


def run_local(cells: list[Cell], opts: Options,
              on_start: Callable[[int], None] | None = None) -> Iterator[tuple[int, Row]]:
    """Cells one after another in this process; ``on_start(i)`` before each (the progress display)."""
    for i, cell in enumerate(cells):
        if on_start:
            on_start(i)
        yield i, run_cell(cell, opts)


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UsageError("--executor ray", "Ray is not installed", "pip install 'upbench[ray]'") from None
    return ray


def _resources(cell: Cell) -> dict[str, float]:
    if cell.case.device == "cuda":
        return {"num_gpus": 1, "num_cpus": 1}
    threads = cell.case.threads or 1
    return {"num_cpus": threads}


def run_ray(cells: list[Cell], opts: Options, address: str | None,
            on_start: Callable[[int], None] | None = None) -> Iterator[tuple[int, Row]]:
    """Cells as Ray tasks; rows stream back as tasks finish. A lost or crashed task is retried once, then
    recorded as failed — the sweep never loses a cell silently."""
    ray = _ray()
    started_here = not ray.is_initialized()
    if started_here:
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False,
                     ignore_reinit_error=True)
        except Exception as exc:  # ConnectionError and Ray's own errors: an unreachable cluster is user input
            raise UsageError(f"--address {address or 'auto'}", f"cannot reach a Ray cluster ({exc})") from None
    remote = ray.remote(max_retries=1, retry_exceptions=False)(_run_cell_task)
    pending: dict[Any, int] = {}
    for i, cell in enumerate(cells):
        if cell.skip:  # nothing to run: no task
            yield i, run_cell(cell, opts)
            continue
        pending[remote.options(**_resources(cell)).remote(cell, opts)] = i
    try:
        while pending:
            if on_start:
                on_start(min(pending.values()))  # the oldest task still out: the one most worth naming
            done, _ = ray.wait(list(pending), num_returns=1)
            ref = done[0]
            i = pending.pop(ref)
            try:
                yield i, ray.get(ref)
            except Exception as exc:  # the task was lost twice (worker crash, node loss)
                row = run_cell(_as_failed(cells[i]), opts)
                row.update(status="failed", reason=f"ray task lost: {type(exc).__name__}: "
                                                   f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}")
                yield i, row
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)
        if started_here:
            ray.shutdown()


def _as_failed(cell: Cell) -> Cell:
    return Cell(cell.op, cell.impl, cell.stages, "lost", cell.id)


def _run_cell_task(cell: Cell, opts: Options) -> Row:
    from .env import device_class

    row = run_cell(cell, opts)
    # the worker's device, not the driver's; the threads the row ran with
    row["device_class"] = device_class(cell.case.device, threads=row.get("torch_threads"))
    return row
