"""The run engine: one object owns a run from the suite to the files.

:func:`plan` turns a :class:`Request` (what the user asked for: suite, filters, overrides) into the cells;
:class:`Engine` owns the rest — the run directory's lock, the typed metadata (:class:`RunMeta`: suite,
command, environment, calibration and its score, ceilings, impl hashes, status), the executor (local, a
shard, Ray), the stream of finished rows, ``--resume``, signals, and the final ``results.json``,
``results.csv`` and ``report.md``, written once at the end (or after an interrupt, from the stream).

The data path of one cell: ``Engine.run`` → ``execute.run_local`` → ``runner.run_cell`` →
``prepare.prepare`` → each declared metric of ``metrics.METRICS`` → ``rundir.RowStream.append``. A suite that
lists ``instructions`` first gets one valgrind pass over all its cells (before the cell loop, so the counts
ride in :class:`~upbench.metrics.Options` and the ``instructions`` metric files them in each row).
"""

from __future__ import annotations

import hashlib
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import __version__, execute, rundir, sweeps
from .errors import UsageError
from .metrics import Options
from .results import RESULTS_CSV, RESULTS_JSON, atomic_write, write_run
from .sweeps import Cell, Suite
from .timing import Stopping

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 2, 130, 143
REPORT = "report.md"


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: finished cells kept, status ``interrupted``, the report written."""


@contextmanager
def signals() -> Iterator[None]:
    """SIGTERM raises :class:`Terminated` in the main thread for the duration (restored afterwards)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_term(signum: int, frame: object) -> None:
        raise Terminated()

    old = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def exit_code_of(exc: KeyboardInterrupt) -> int:
    return EXIT_TERMINATED if isinstance(exc, Terminated) else EXIT_INTERRUPTED


@dataclass(frozen=True)
class Request:
    """What the user asked to run: stored in run.json, so ``--resume`` rebuilds exactly the same cells."""

    suite: str
    ops: tuple[str, ...] | None = None
    impls: tuple[str, ...] | None = None
    sets: tuple[str, ...] = ()
    params: tuple[str, ...] = ()
    device: str | None = None
    budget: float | None = None
    shard: str | None = None
    executor: str = "local"
    address: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Request:
        kw = {f.name: d.get(f.name) for f in fields(cls) if f.name in d}
        for k in ("ops", "impls", "sets", "params"):
            if kw.get(k) is not None:
                kw[k] = tuple(kw[k])
        return cls(**kw)


@dataclass
class Plan:
    request: Request
    suite: Suite
    suite_sha256: str
    cells: list[Cell]  # this run's cells (this shard's, with --shard), in sweep order
    sweep_id: str  # fingerprint of the whole sweep's cell ids
    shard: dict[str, Any] | None
    stopping: Stopping


def _resolve_device(choice: str | None) -> str | None:
    import torch

    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda", "no CUDA device here (torch.cuda.is_available() is False)",
                         "use --device cpu or auto")
    return choice


def plan(req: Request) -> Plan:
    """The cells of a request; every bad input is a UsageError here, before anything is written."""
    from .axes import parse_param, parse_set

    suite = sweeps.load(req.suite)
    overrides = dict(parse_set(s) for s in req.sets)
    device = _resolve_device(req.device)
    if device:
        overrides["device"] = (device,)
    if "cuda" in overrides.get("device", suite.axes.get("device", ())):
        _resolve_device("cuda")
        from .timing import check_cuda_timing_allowed

        check_cuda_timing_allowed()
    params = dict(parse_param(p) for p in req.params)
    cells = sweeps.expand(suite, req.ops, req.impls, overrides, params)
    sweep_id = execute.fingerprint(cells)
    shard_info = None
    if req.shard:
        index, count = execute.parse_shard(req.shard)
        cells = execute.shard(cells, index, count)
        shard_info = {"index": index, "count": count, "cells": [c.id for c in cells]}
    if req.budget is not None and req.budget <= 0:
        raise UsageError("--budget", f"{req.budget} must be > 0 seconds")
    stopping = replace(suite.timing, budget_s=req.budget) if req.budget is not None else suite.timing
    if req.executor == "ray":
        execute._ray()  # not installed: say so now, before anything is written
    digest = hashlib.sha256(Path(suite.source).read_bytes()).hexdigest() if Path(suite.source).is_file() else ""
    return Plan(req, suite, digest, cells, sweep_id, shard_info, stopping)


@dataclass
class RunMeta:
    """The metadata of a run, stored as ``meta`` in results.json (and as run.json while it runs)."""

    suite: dict[str, Any]
    command: str
    started: str
    status: str
    stopping: dict[str, Any]
    env: dict[str, Any]
    cells: int
    shard: dict[str, Any] | None
    executor: str
    upbench: str
    request: dict[str, Any]
    impl_hashes: dict[str, str]
    cell_ids: list[str]
    calibration: dict[str, Any] | None = None
    ceilings: dict[str, Any] | None = None
    elapsed_s: float = 0.0
    write_s: float = 0.0  # seconds spent appending rows to the stream
    resumed: list[str] = field(default_factory=list)  # the commands that continued this run

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("calibration", "ceilings"):
            if d[k] is None:
                del d[k]
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> RunMeta:
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})


@dataclass
class Outcome:
    run_dir: Path
    status: str
    rows: list[dict[str, Any]]
    exit_code: int
    disagreed: list[dict[str, Any]] = field(default_factory=list)  # rows off their reference, not [[expect]]ed
    baseline: Path | None = None

    @property
    def failed(self) -> int:
        return sum(r["status"] in ("failed", "oom") for r in self.rows)


def _calibrate(suite: Suite, cells: list[Cell]) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    from .ceilings import calibrate, ceilings

    if "latency" not in suite.metrics:
        return None, None
    devices = sorted({c.case.device for c in cells if not c.skip})
    cal: dict[str, Any] = {d: calibrate(d) for d in devices}
    ceil = {f"{c.case.device}/{c.case.dtype}": ceilings(c.case.device, c.case.dtype) for c in cells if not c.skip}
    if len(devices) == 1:
        c0 = cal[devices[0]]
        c0["score_ms"] = (c0["copy_ms"] * c0["matmul_ms"]) ** 0.5
    return cal, ceil


class Engine:
    """One run, from its plan to its files. ``run()`` returns the :class:`Outcome`."""

    def __init__(self, plan: Plan, run_dir: Path, command: str, *, force: bool = False,
                 progress: bool = True, save_baseline: str | None = None) -> None:
        self.plan, self.run_dir, self.command = plan, run_dir, command
        self.force, self.progress, self.save_baseline = force, progress, save_baseline
        self.resuming = False
        self.retry_failed = False
        self.kept: dict[str, dict[str, Any]] = {}
        self.meta: RunMeta | None = None

    # -- resume ------------------------------------------------------------------------------------------------
    @classmethod
    def resume(cls, run_dir: Path, command: str, *, retry_failed: bool = False, progress: bool = True) -> Engine:
        """An engine that continues the run in ``run_dir``; refuses (UsageError) if its code or suite changed."""
        start = rundir.read_start(run_dir)
        if start is None or "request" not in start:
            what = "was not written by a resumable upbench run" if (run_dir / RESULTS_JSON).exists() \
                else "holds no run to resume"
            raise UsageError(f"--resume {run_dir}", what, "start a new run with --out")
        if rundir.state(run_dir) == "running":
            lock = rundir.read_lock(run_dir) or {}
            raise UsageError(f"--resume {run_dir}", f"the run is still going (pid {lock.get('pid')})",
                             "wait for it to end")
        meta = RunMeta.from_json(start)
        p = plan(Request.from_json(meta.request))
        checks = [("upbench version", meta.upbench, __version__),
                  ("suite file", meta.suite.get("sha256"), p.suite_sha256),
                  ("suite's cells (axes, operators or impls)", meta.suite.get("fingerprint"), p.sweep_id)]
        now = _hashes(p.cells)
        for key in sorted(set(meta.impl_hashes) | set(now)):
            checks.append((f"source of {key} (impl hash)", meta.impl_hashes.get(key), now.get(key)))
        for what, then, today in checks:
            if then != today:
                raise UsageError(f"--resume {run_dir}", f"the {what} changed since the run started "
                                 f"({then} → {today})", "start a new run (another --out, or --force)")
        eng = cls(p, run_dir, meta.command, progress=progress)
        eng.resuming, eng.retry_failed, eng.meta = True, retry_failed, meta
        meta.resumed.append(command)
        return eng

    # -- the run -----------------------------------------------------------------------------------------------
    def _claim(self) -> rundir.Lock:
        """Take the directory: refuse a live writer, and (without --force) a directory that holds results."""
        created = not self.run_dir.exists()
        lock = rundir.Lock(self.run_dir)
        try:
            lock.acquire()
            if not self.resuming:
                old = [n for n in (RESULTS_JSON, rundir.STREAM, rundir.START) if (self.run_dir / n).exists()]
                if old and not self.force:
                    raise UsageError(f"--out {self.run_dir}", "already holds results",
                                     "choose another directory, add --force, or continue it with --resume")
                for n in (*old, RESULTS_CSV, REPORT):
                    (self.run_dir / n).unlink(missing_ok=True)
        except BaseException:
            lock.release()
            if created:
                with suppress(OSError):
                    self.run_dir.rmdir()
            raise
        return lock

    def _start_meta(self) -> RunMeta:
        from .env import fingerprint
        from .timing import machine_load

        p = self.plan
        load = machine_load()  # before any probe: what the neighbours were doing
        cal, ceil = _calibrate(p.suite, p.cells)
        env = fingerprint()
        env["load"] = {"before": load}
        return RunMeta(
            suite={"name": p.suite.name, "description": p.suite.description, "source": p.suite.source,
                   "kind": p.suite.kind, "metrics": sorted(p.suite.metrics), "fingerprint": p.sweep_id,
                   "sha256": p.suite_sha256, "baseline": p.suite.baseline},
            command=self.command, started=datetime.now(UTC).isoformat(timespec="seconds"), status="running",
            stopping=p.stopping.__dict__, env=env, cells=len(p.cells), shard=p.shard,
            executor=p.request.executor, upbench=__version__, request=p.request.to_json(),
            impl_hashes=_hashes(p.cells), cell_ids=[c.id for c in p.cells], calibration=cal, ceilings=ceil)

    def run(self) -> Outcome:
        lock = self._claim()
        try:
            if self.resuming:
                assert self.meta is not None
                self.kept = {r["cell_id"]: r for r in rundir.read_rows(self.run_dir)
                             if self.retry_failed is False or r.get("status") not in ("failed", "oom")}
            else:
                self.meta = self._start_meta()  # calibration: Ctrl-C here leaves nothing behind
            atomic_write(self.run_dir / rundir.START, _json(self.meta.to_json()))
            return self._measure()
        finally:
            lock.release()
            with suppress(OSError):  # interrupted before anything was written: leave no empty directory
                self.run_dir.rmdir()

    def _measure(self) -> Outcome:
        from .env import device_class
        from .progress import Progress

        meta, cells = self.meta, self.plan.cells
        assert meta is not None
        cal = meta.calibration or {}
        todo = [c for c in cells if c.id not in self.kept]
        try:
            instr = _count_instructions(todo) if "instructions" in self.plan.suite.metrics else None
        except KeyboardInterrupt as exc:
            meta.status = "interrupted"
            return self._finish(exit_code_of(exc))
        opts = Options(self.plan.suite.name, self.plan.suite.metrics, self.plan.stopping,
                       next(iter(cal.values())) if len(cal) == 1 else None, instr)
        bar = Progress(len(cells), len(cells) - len(todo), self.progress)
        classes: dict[str, str] = {}
        stream = rundir.RowStream(self.run_dir)
        rows = execute.run_ray(todo, opts, self.plan.request.address, lambda j: bar.running(_label(todo[j]))) \
            if self.plan.request.executor == "ray" else \
            execute.run_local(todo, opts, lambda j: bar.running(_label(todo[j])))
        t0 = time.perf_counter()
        code = EXIT_OK
        try:
            for j, row in rows:
                dev, threads = todo[j].case.device, row.get("torch_threads")
                row.setdefault("device_class", classes.setdefault(f"{dev}/{threads}",
                                                                  device_class(dev, threads=threads)))
                self.kept[row["cell_id"]] = row  # first: a SIGTERM inside append must not lose a streamed row
                t = time.perf_counter()
                stream.append(row)
                meta.write_s += time.perf_counter() - t
                bar.finished()
            meta.status = "complete"
        except KeyboardInterrupt as exc:
            meta.status = "interrupted"
            code = exit_code_of(exc)
        finally:
            rows.close()
            bar.close()
            stream.close()
            meta.elapsed_s += time.perf_counter() - t0
        return self._finish(code)

    def _finish(self, code: int) -> Outcome:
        """The final files, from what was measured: results.json, results.csv, report.md (and a baseline)."""
        from .report import write_report
        from .timing import machine_load

        meta = self.meta
        assert meta is not None
        meta.env.setdefault("load", {})["after"] = machine_load()
        order = {cid: i for i, cid in enumerate(meta.cell_ids)}
        rows = sorted(self.kept.values(), key=lambda r: order.get(r["cell_id"], len(order)))
        by_id = {c.id: c for c in self.plan.cells}
        mine = [r for r in rows if r["cell_id"] in by_id]
        disagreed = sweeps.mark_disagreements(self.plan.suite, [by_id[r["cell_id"]] for r in mine], mine)
        write_run(self.run_dir, rows, meta.to_json())
        write_report([self.run_dir], None)
        out = Outcome(self.run_dir, meta.status, rows, code, disagreed=disagreed)
        if code == EXIT_OK:
            out.exit_code = EXIT_FAILED if out.failed or disagreed else EXIT_OK
            if self.save_baseline:
                from .baselines import save

                out.baseline = save(self.run_dir, self.save_baseline)
        return out


def _count_instructions(cells: list[Cell]) -> dict[str, dict[str, Any]]:
    """The instruction pass: every runnable CPU cell counted in one valgrind child, before the cell loop (the
    ``instructions`` metric files each cell's counts in its row)."""
    import sys

    from .instructions import for_cells

    n = sum(1 for c in cells if not c.skip and c.case.device == "cpu")
    if n:
        print(f"upbench: counting instructions of {n} cells under valgrind (about 20 s plus 1–10 s a cell)…",
              file=sys.stderr, flush=True)
    return for_cells(cells)


def _label(cell: Cell) -> str:
    return f"{cell.impl} {cell.case.label()}"


def _hashes(cells: list[Cell]) -> dict[str, str]:
    from .provenance import impl_hashes

    return impl_hashes({(c.op, c.impl) for c in cells})


def _json(d: dict[str, Any]) -> str:
    import json

    return json.dumps(d, indent=1, default=str) + "\n"


def default_run_dir(suite: Suite) -> Path:
    return Path("reports/runs") / f"{suite.name}-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}"
