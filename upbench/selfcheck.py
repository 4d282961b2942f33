"""Validate kernel-backed impls on this machine: ``python -m upbench.selfcheck --device cuda`` (or ``cpu``).

A generic driver: every module of ``upbench.operators`` may declare ``SELFCHECKS``, a tuple of
:class:`SelfCheck`; the driver runs them all, each isolated (an exception becomes a FAIL row with its message,
and the next check runs), and prints a table of PASS / FAIL / SKIP with the measured values last.
``--dry-run`` runs every check's logic that can run without a GPU on the CPU (the kernels through the host
shim), so that the first GPU run is not the script's first run; checks that need the GPU say SKIP and why.
Exit status: 0 nothing failed, 1 a check failed, 2 the device cannot run the kernels here (or bad usage).
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}


@dataclass
class Result:
    """One row of the table. ``ok`` None: skipped (``detail`` says why), or with ``info`` a measurement only."""

    name: str
    ok: bool | None
    detail: str = ""
    info: bool = False


@dataclass(frozen=True)
class Context:
    device: str  # where the kernels run: "cuda", or "cpu" (also for --dry-run of a cuda check)
    target: str  # what the user asked to validate: "cuda" or "cpu"
    dry_run: bool = False
    quick: bool = False
    timing: bool = True
    dtypes: tuple[torch.dtype, ...] = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
    timing_dtypes: tuple[torch.dtype, ...] = (torch.float32, torch.float16)


@dataclass(frozen=True)
class SelfCheck:
    """A declared check: ``run(ctx)`` returns its rows (or raises: one FAIL row). ``available(target)``: None
    or why the check's kernels cannot run for that target here (then the whole run exits 2)."""

    name: str
    run: Callable[[Context], Iterable[Result]]
    available: Callable[[str], str | None] = field(default=lambda _: None)


def discover() -> list[SelfCheck]:
    """The SELFCHECKS of every importable module of upbench.operators, in module order."""
    import upbench.operators as ops

    found: list[SelfCheck] = []
    for mod in sorted(pkgutil.iter_modules(ops.__path__), key=lambda m: m.name):
        try:
            m = importlib.import_module(f"upbench.operators.{mod.name}")
        except ImportError:
            continue
        found.extend(getattr(m, "SELFCHECKS", ()))
    return found


def run_checks(checks: Iterable[SelfCheck], ctx: Context, log: Callable[[str], None] = print) -> list[Result]:
    results: list[Result] = []
    for check in checks:
        t0 = time.perf_counter()
        try:
            rows = list(check.run(ctx))
        except Exception as exc:  # isolation: one failing check is a row, not the end of the run
            where = traceback.extract_tb(exc.__traceback__)[-1]
            rows = [Result(check.name, False, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                           f" (at {where.filename.rsplit('/', 1)[-1]}:{where.lineno})")]
        results += rows
        bad = sum(r.ok is False for r in rows)
        log(f"{check.name}: {len(rows)} rows, {bad} failed ({time.perf_counter() - t0:.1f} s)")
    return results


def table(results: list[Result]) -> list[str]:
    width = min(max((len(r.name) for r in results), default=10), 70)
    lines = [f"{'check':<{width}}  {'result':<6}  measured / detail", "-" * (width + 30)]
    for r in results:
        status = "INFO" if r.info else "SKIP" if r.ok is None else "PASS" if r.ok else "FAIL"
        lines.append(f"{r.name[:width]:<{width}}  {status:<6}  {r.detail}")
    n = {s: sum((r.ok is None and not r.info) if s == "SKIP" else (r.ok is (s == "PASS")) for r in results)
         for s in ("PASS", "FAIL", "SKIP")}
    lines.append(f"{n['PASS']} passed, {n['FAIL']} failed, {n['SKIP']} skipped")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m upbench.selfcheck", description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--dry-run", action="store_true",
                   help="run all logic that can run without a GPU on the CPU, through the host shim")
    p.add_argument("--quick", action="store_true", help="small timing case, no torch.compile (for tests)")
    p.add_argument("--no-timing", action="store_true", help="checks only")
    p.add_argument("--dtypes", default="float32,float16,bfloat16,float64",
                   help="dtypes for the agreement checks (comma-separated)")
    p.add_argument("--timing-dtypes", default="float32,float16")
    args = p.parse_args(argv)
    try:
        dtypes = tuple(DTYPES[d] for d in args.dtypes.split(","))
        tdtypes = tuple(DTYPES[d] for d in args.timing_dtypes.split(","))
    except KeyError as exc:
        print(f"upbench selfcheck: error: --dtypes: unknown dtype {exc}; use {', '.join(DTYPES)}", file=sys.stderr)
        return 2
    device = "cpu" if args.dry_run else args.device
    checks = discover()
    if not checks:
        print("upbench selfcheck: error: no module of upbench.operators declares SELFCHECKS", file=sys.stderr)
        return 2
    for check in checks:
        why = check.available(device)
        if why:
            print(f"upbench selfcheck: error: --device {device}: the kernels cannot run here: {why}", file=sys.stderr)
            return 2
    ctx = Context(device=device, target=args.device, dry_run=args.dry_run, quick=args.quick or args.dry_run,
                  timing=not args.no_timing, dtypes=dtypes, timing_dtypes=tdtypes)
    t0 = time.perf_counter()
    results = run_checks(checks, ctx)
    mode = f"{args.device} (dry run on the CPU through the shim)" if args.dry_run else args.device
    print(f"\nupbench selfcheck on {mode}, {time.perf_counter() - t0:.1f} s")
    for line in table(results):
        print(line)
    return 1 if any(r.ok is False for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
