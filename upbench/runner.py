"""Run one cell: its identity columns, then every declared metric that applies (metrics.METRICS), in order.

A cell that raises is recorded as ``failed`` (or ``oom``) with its message and the sweep goes on; a cell
that cannot run here is ``skipped`` with its reason. Nothing in here names an operator or a metric column:
the metrics declare their columns, and a metric that returns a column it did not declare is a bug that fails
the cell.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from typing import Any

import torch

from . import registry
from .alloc import allocation_mode
from .axes import STAGE_KEYS
from .contract import check_stages
from .metrics import METRICS, Context, Metric, Options
from .prepare import prepare
from .provenance import impl_hash
from .sweeps import Cell

__all__ = ["Options", "identity", "run_cell"]


@cache
def _hash(op_name: str, impl_name: str) -> str:  # sources do not change within one process's run
    op = registry.get(op_name)
    return impl_hash(op, op.impl(impl_name))


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    msg = str(exc).lower()
    return "out of memory" in msg or "can't allocate memory" in msg


@contextmanager
def _threads(n: int | None) -> Iterator[None]:
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def identity(suite: str, cell: Cell) -> dict[str, Any]:
    """The identity columns of a cell's row: the same for every outcome."""
    c = cell.case
    row: dict[str, Any] = {"suite": suite, "cell_id": cell.id, "impl": cell.impl, **c.axes()}
    if len(cell.stages) > 1:
        row["stages"] = json.dumps([f"{s.C}x{s.H}x{s.w}" for s in cell.stages])
        for k in STAGE_KEYS:  # an axis the stages disagree on has no one value
            if len({getattr(s, k) for s in cell.stages}) > 1:
                row[k] = None
    row["impl_hash"] = _hash(cell.op, cell.impl)
    return row


def _apply(metric: Metric, ctx: Context) -> None:
    out = metric.measure(ctx)
    undeclared = set(out) - {c.name for c in metric.columns}
    if undeclared:
        raise AssertionError(f"metric {metric.name} returned undeclared column(s) {sorted(undeclared)}")
    ctx.row.update(out)


def run_cell(cell: Cell, opts: Options) -> dict[str, Any]:
    """The row of one cell. Raises only KeyboardInterrupt (and its subclasses): the caller stops the run."""
    row = identity(opts.suite, cell)
    ctx = Context(cell, opts, row)
    for m in METRICS:
        if not m.needs_run and not m.after_status and m.applies(ctx):
            _apply(m, ctx)
    if cell.skip:
        row.update(status="skipped", reason=cell.skip)
        return row
    try:
        with _threads(cell.case.threads), allocation_mode(cell.case.alloc or "fresh"):
            row["torch_threads"] = torch.get_num_threads()
            ctx.prepared = prepare(cell)
            check_stages(ctx.prepared.stages, cell.impl)  # the plugin contract and finite outputs, before any metric
            for m in METRICS:
                if m.needs_run and m.applies(ctx):
                    _apply(m, ctx)
        row.update(status="ok", reason="")
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        row.update(status="oom" if _is_oom(exc) else "failed", reason=f"{type(exc).__name__}: {first}")
        if "UPBENCH_DEBUG" in os.environ:
            traceback.print_exc(file=sys.stderr)
    finally:
        ctx.prepared = None  # free the cell's tensors before the next one
        if cell.case.device == "cuda" and torch.cuda.is_available():
            torch.cuda.empty_cache()
    for m in METRICS:  # read the finished row (trust): a failed cell has a status to judge too
        if m.after_status and m.applies(ctx):
            _apply(m, ctx)
    return row
