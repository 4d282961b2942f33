"""Run cells: prepare, then measure agreement, latency and peak memory, each in its own pass.

A cell that raises is recorded as ``failed`` (or ``oom``) with its message and the sweep goes on; a cell
that cannot run here is ``skipped`` with its reason. Nothing in here names an operator.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import torch

from . import memory, registry, timing
from ._nvml import throttle_events, throttle_snapshot
from .accuracy import Agreement, agreement
from .cases import Case
from .ceilings import roof_columns
from .contract import check_stages
from .plugin import Impl, Operator
from .sweeps import Cell, Suite
from .workload import Stage, make_callable, prepare_stage, reference_outputs


@dataclass(frozen=True)
class Options:
    metrics: frozenset[str]
    stopping: timing.Stopping
    calibration: dict[str, float] | None = None  # this run's calibrate() result, with "score_ms"


@cache
def impl_hash(op_name: str, impl_name: str) -> str:
    """Hash of the files that define the operator and impl (Python and kernel sources)."""
    op = registry.get(op_name)
    impl = op.impl(impl_name)
    paths = {inspect.getsourcefile(type(op)), inspect.getsourcefile(impl.factory), *impl.sources}
    h = hashlib.sha256()
    for p in sorted(str(p) for p in paths if p):
        try:
            h.update(Path(p).read_bytes())
        except OSError:
            h.update(p.encode())
    return h.hexdigest()[:12]


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


def base_row(suite: Suite, cell: Cell) -> dict[str, Any]:
    c = cell.case
    row: dict[str, Any] = {"suite": suite.name, "cell_id": cell.id, "impl": cell.impl, **c.axes()}
    if len(cell.stages) > 1:
        row["stages"] = json.dumps([f"{s.C}x{s.H}x{s.w}" for s in cell.stages])
        for k in ("C", "Cy", "H", "W", "K"):
            if len({getattr(s, k) for s in cell.stages}) > 1:
                row[k] = None
    row["impl_hash"] = impl_hash(cell.op, cell.impl)
    return row


def counts(op: Operator, stages: tuple[Case, ...], pass_: str) -> dict[str, Any]:
    fwd = sum(op.macs(c) for c in stages)
    bwd = sum(op.bwd_macs(c) for c in stages)
    macs = {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd + bwd}[pass_]
    return {"params": sum(op.params(c) for c in stages), "macs": macs, "flops": 2 * macs,
            "min_bytes": sum(op.min_bytes(c) for c in stages)}


def _agreement(op: Operator, stages: list[Stage], pass_: str) -> Agreement:
    results = []
    for st in stages:
        got, want = reference_outputs(op, st, pass_, st.case.seed() + 2)
        tol = (op.tolerance if pass_ == "fwd" else op.bwd_tolerance)[st.case.dtype]
        border = op.border_mask(st.case)
        for a, b in zip(got, want, strict=True):
            out_like = tuple(b.shape[-3:-1] if op.channels_last else b.shape[-2:]) == tuple(border.shape)
            mask = border if out_like else torch.zeros(b.shape[-2:], dtype=torch.bool)
            results.append(agreement(a, b, mask, tol, op.channels_last and out_like))
    return Agreement.worst(results)


def measure(cell: Cell, opts: Options) -> dict[str, Any]:
    """The metric columns of one runnable cell; raises on failure (the caller records it)."""
    op = registry.get(cell.op)
    impl: Impl = op.impl(cell.impl)
    case = cell.case
    row: dict[str, Any] = {}
    with _threads(case.threads):
        row["torch_threads"] = torch.get_num_threads()
        stages = [prepare_stage(op, impl, c) for c in cell.stages]
        check_stages(stages, cell.impl)  # the plugin contract and finite outputs, before any metric
        if "accuracy" in opts.metrics:
            a = _agreement(op, stages, case.pass_)
            row.update(err_max_abs=a.max_abs, err_rel_rms=a.rel_rms, err_max_rel=a.max_rel,
                       err_border_max_rel=a.border_max_rel, err_interior_max_rel=a.interior_max_rel,
                       err_tol=a.tol, agree=a.ok)
        fn: Callable[[], object] = make_callable(stages, case.pass_, cell.op, cell.impl)
        if "latency" in opts.metrics:
            before = throttle_snapshot(case.device)
            lat = timing.time_fn(fn, case.device, opts.stopping)
            row.update(throttle_events(before, throttle_snapshot(case.device)))
            row.update(latency_median_ms=lat.median * 1e3, latency_iqr_ms=lat.iqr * 1e3,
                       latency_min_ms=lat.min * 1e3, latency_rel_iqr=lat.rel_iqr, latency_n=len(lat.samples),
                       latency_inner=lat.inner, latency_stop=lat.stop,
                       latency_noise=lat.verdict(opts.stopping.target_rel_iqr), latency_mode=lat.mode,
                       latency_samples_ms=json.dumps([round(s * 1e3, 6) for s in lat.samples]))
            row.update(timing.contention_columns(lat, case.device))
        if "memory" in opts.metrics:
            row["ideal_bytes"] = memory.result_bytes(fn())  # also the warm call: lazy caches are not the op's
            row["peak_mem_bytes"] = memory.peak(fn, case.device)
            row["peak_over_ideal"] = row["peak_mem_bytes"] / row["ideal_bytes"] if row["ideal_bytes"] else None
            if case.device == "cpu":
                row["vm_hwm_delta_bytes"] = memory.hwm_delta_cpu(fn)
        if "determinism" in opts.metrics:
            row["bitwise_repeatable"] = _same_bits(fn(), fn())
    return row


def _same_bits(a: object, b: object) -> bool:
    """Two results equal bit for bit (NaNs included): the determinism metric."""
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and a.dtype == b.dtype and bool(
            torch.equal(a.detach().contiguous().view(torch.uint8), b.detach().contiguous().view(torch.uint8)))
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same_bits(x, y) for x, y in zip(a, b, strict=True))
    return a is None and b is None


def run_cell(suite: Suite, cell: Cell, opts: Options) -> dict[str, Any]:
    row = base_row(suite, cell)
    op = registry.get(cell.op)
    row.update(counts(op, cell.stages, cell.case.pass_))
    if cell.skip:
        row.update(status="skipped", reason=cell.skip)
        return row
    try:
        row.update(measure(cell, opts))
        row.update(status="ok", reason="")
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        row.update(status="oom" if _is_oom(exc) else "failed",
                   reason=f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}")
        if "UPBENCH_DEBUG" in os.environ:
            traceback.print_exc(file=sys.stderr)
    finally:
        if cell.case.device == "cuda" and torch.cuda.is_available():
            torch.cuda.empty_cache()
    lat = row.get("latency_median_ms")
    if row.get("status") == "ok" and lat:
        row.update(roof_columns(row, cell.case.device, cell.case.dtype, cell.case.pass_))
        if opts.calibration:
            row["latency_norm"] = lat / opts.calibration["score_ms"]
    return row
