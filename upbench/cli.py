"""The ``upbench`` command: list, run, report, compare, merge, env.

Exit codes: 0 every cell ok or skipped; 1 some cell failed or ran out of memory; 2 bad usage or input
(one stderr line ``upbench: error: …``, nothing written); 130 interrupted (results so far are kept).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

from . import __version__, registry
from .errors import UsageError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # argparse's own usage errors become our one line
        raise UsageError(self.prog, message, f"see {self.prog} --help")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="upbench", description="Reproducible benchmarks of feature-upsampling operators.")
    p.add_argument("--version", action="version", version=f"upbench {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    ls = sub.add_parser("list", help="operators, their impls and whether each can run here; built-in suites")
    ls.add_argument("--json", action="store_true", help="machine-readable output")

    run = sub.add_parser("run", help="run a suite and write results + report.md into a run directory")
    run.add_argument("--suite", required=True, help="built-in suite name (see `upbench list`) or a .toml path")
    run.add_argument("--op", action="append", default=[], metavar="NAME[,NAME]", help="only these operators")
    run.add_argument("--impl", action="append", default=[], metavar="NAME[,NAME]", help="only these impls")
    run.add_argument("--set", action="append", default=[], metavar="AXIS=VALUES", dest="sets",
                     help="override an axis: H=32,64  H=pow2:16..128  K=1..7:2  dtype=float16")
    run.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                     help="set an operator hyperparameter for every selected operator that has it")
    run.add_argument("--device", choices=("cpu", "cuda", "auto"), default=None,
                     help="device of every cell (default: the suite's, else cpu)")
    run.add_argument("--out", type=Path, help="run directory (default reports/runs/<suite>-<time>)")
    run.add_argument("--force", action="store_true", help="overwrite an existing run directory's results")
    run.add_argument("--budget", type=float, help="latency time budget per cell, seconds")
    run.add_argument("--dry-run", action="store_true", help="list the cells and skip reasons; measure nothing")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--save-baseline", metavar="NAME",
                     help="also store the results as baselines/<device class>/NAME.json")
    run.add_argument("--shard", metavar="i/n", help="run the deterministic i-th of n shards (0 ≤ i < n)")
    run.add_argument("--executor", choices=("local", "ray"), default="local",
                     help="run cells in this process (default) or as Ray tasks")
    run.add_argument("--address", help="Ray cluster address (default: start a local one)")

    mrg = sub.add_parser("merge", help="merge the shards of one sweep into one run directory")
    mrg.add_argument("shards", type=Path, nargs="+", metavar="RUN")
    mrg.add_argument("--out", type=Path, required=True, help="the merged run directory")
    mrg.add_argument("--force", action="store_true", help="overwrite an existing run directory's results")

    cmp_ = sub.add_parser("compare", help="gate: verdict per row (FASTER/SAME/SLOWER/AMBIGUOUS) of NEW vs BASE")
    cmp_.add_argument("base", help="run directory, results.json, or baseline:NAME")
    cmp_.add_argument("new", help="run directory or results.json")
    cmp_.add_argument("--threshold", type=float, help="minimum effect size as a fraction (default 0.05)")
    cmp_.add_argument("--thresholds", metavar="TOML", help="per-suite/op/impl thresholds (glob rules)")
    cmp_.add_argument("--normalise", action="store_true", help="divide times by each run's calibration workload")
    cmp_.add_argument("--strict", action="store_true", help="exit 3 when AMBIGUOUS rows remain")
    cmp_.add_argument("--allow-cross-device", action="store_true", help="compare different device classes")
    cmp_.add_argument("--instr-threshold", type=float, default=None,
                      help="minimum effect on instructions per call, where both sides counted them (default 0.02)")
    cmp_.add_argument("--allow-disjoint", action="store_true",
                      help="compare runs of different suites or with no cell in common (else exit 2)")
    cmp_.add_argument("--out", type=Path, help="also write the markdown summary here")
    cmp_.add_argument("--if-missing", choices=("fail", "pass"), default="fail",
                      help="baseline:NAME absent for this device class: usage error (default) or pass with a note")

    rep = sub.add_parser("report", help="markdown report (with figures) from one or more run directories")
    rep.add_argument("runs", type=Path, nargs="+", metavar="RUN", help="run directories or results.json files")
    rep.add_argument("--out", type=Path, help="output file (default RUN/report.md; required for several runs)")

    env = sub.add_parser("env", help="print the environment fingerprint stored with every run")
    env.add_argument("--json", action="store_true")
    return p


def _split(values: list[str]) -> tuple[str, ...] | None:
    out = tuple(v.strip() for item in values for v in item.split(",") if v.strip())
    return out or None


def cmd_list(args: argparse.Namespace) -> int:
    from .sweeps import builtin_suites

    ops = registry.operators()
    data = []
    for name, op in sorted(ops.items()):
        impls = []
        for i in op.impls:
            reasons = {d: i.unavailable(d) for d in i.devices}
            impls.append({"name": i.name, "devices": list(i.devices), "backward": i.backward,
                          "deterministic": i.deterministic, "unavailable": {d: r for d, r in reasons.items() if r},
                          "description": i.description})
        data.append({"op": name, "description": op.description, "guided": op.guided,
                     "hyperparams": op.defaults(), "impls": impls})
    if args.json:
        print(json.dumps({"operators": data, "broken": registry.broken_plugins(),
                          "suites": sorted(builtin_suites())}, indent=1))
        return EXIT_OK
    width = max((len(i["name"]) for d in data for i in d["impls"]), default=12)
    for d in data:
        guided = " (guided)" if d["guided"] else ""
        hp = ", ".join(f"{k}={v}" for k, v in d["hyperparams"].items())
        print(f"{d['op']}{guided}: {d['description']}" + (f"  [{hp}]" if hp else ""))
        for i in d["impls"]:
            where = []
            for dev in i["devices"]:
                why = i["unavailable"].get(dev)
                where.append(f"{dev}: {'available' if not why else 'unavailable — ' + why}")
            flags = ("" if i["backward"] else ", forward-only") + ("" if i["deterministic"] else ", non-deterministic")
            print(f"  {i['name']:<{width}} {'; '.join(where)}{flags}")
    for name, why in registry.broken_plugins().items():
        print(f"{name}: BROKEN PLUGIN — {why}")
    print("suites: " + ", ".join(sorted(builtin_suites())))
    return EXIT_OK


def _resolve_device(choice: str | None) -> str | None:
    import torch

    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda", "no CUDA device here (torch.cuda.is_available() is False)",
                         "use --device cpu or auto")
    return choice


def cmd_run(args: argparse.Namespace, argv: list[str]) -> int:
    from dataclasses import replace

    from . import execute, results, sweeps
    from .axes import parse_param, parse_set
    from .ceilings import calibrate, ceilings
    from .env import fingerprint, local_device_class
    from .outdir import check_dir
    from .runner import Options
    from .timing import machine_load

    suite = sweeps.load(args.suite)
    overrides = dict(parse_set(s) for s in args.sets)
    device = _resolve_device(args.device)
    if device:
        overrides["device"] = (device,)
    if "cuda" in overrides.get("device", suite.axes.get("device", ())):
        _resolve_device("cuda")
        from .timing import check_cuda_timing_allowed
        check_cuda_timing_allowed()
    params = dict(parse_param(p) for p in args.param)
    cells = sweeps.expand(suite, _split(args.op), _split(args.impl), overrides, params)
    sweep_id = execute.fingerprint(cells)
    shard_info = None
    if args.shard:
        index, count = execute.parse_shard(args.shard)
        cells = execute.shard(cells, index, count)
        shard_info = {"index": index, "count": count, "cells": [c.id for c in cells]}
    stopping = replace(suite.timing, budget_s=args.budget) if args.budget is not None else suite.timing
    if args.budget is not None and args.budget <= 0:
        raise UsageError("--budget", f"{args.budget} must be > 0 seconds")
    if args.save_baseline:
        from .baselines import check_name

        check_name(args.save_baseline)
    if args.executor == "ray":
        execute._ray()  # not installed: say so now, before anything is written
    if args.dry_run:
        for c in cells:
            print(f"{c.id}  {c.impl:<12} {' + '.join(s.label() for s in c.stages)}  {c.skip or 'run'}")
        return EXIT_OK
    stamp = datetime.now(UTC)
    run_dir = args.out or Path("reports/runs") / f"{suite.name}-{stamp.strftime('%Y%m%d-%H%M%S')}"
    check_dir(run_dir, f"--out {run_dir}")
    if (run_dir / results.RESULTS_JSON).exists() and not args.force:
        raise UsageError(f"--out {run_dir}", "already holds results", "choose another directory or add --force")
    meta: dict[str, Any] = {
        "suite": {"name": suite.name, "description": suite.description, "source": suite.source,
                  "kind": suite.kind, "metrics": sorted(suite.metrics), "fingerprint": sweep_id},
        "command": "upbench " + shlex.join(argv), "started": stamp.isoformat(timespec="seconds"),
        "status": "running", "stopping": stopping.__dict__, "env": fingerprint(), "cells": len(cells),
        "shard": shard_info, "executor": args.executor, "upbench": __version__,
    }
    meta["env"]["load"] = {"before": machine_load()}  # before any probe: what the neighbours were doing
    calibration = None
    if "latency" in suite.metrics:
        devices = sorted({c.case.device for c in cells if not c.skip})
        meta["calibration"] = {d: calibrate(d) for d in devices}
        meta["ceilings"] = {f"{c.case.device}/{c.case.dtype}": ceilings(c.case.device, c.case.dtype)
                            for c in cells if not c.skip}
        if len(devices) == 1:
            calibration = meta["calibration"][devices[0]]
            calibration["score_ms"] = (calibration["copy_ms"] * calibration["matmul_ms"]) ** 0.5
    opts = Options(suite.metrics, stopping, calibration)
    instr = _count_instructions(cells) if "instructions" in suite.metrics else {}
    done: dict[int, dict[str, Any]] = {}
    t0 = time.perf_counter()
    bar = _progress(len(cells), args.no_progress)
    stream = (execute.run_ray(suite, cells, opts, args.address) if args.executor == "ray"
              else execute.run_local(suite, cells, opts))
    classes: dict[str, str] = {}
    try:
        for i, row in stream:
            dev = cells[i].case.device
            threads = row.get("torch_threads")
            row.setdefault("device_class", classes.setdefault(f"{dev}/{threads}", local_device_class(dev, threads)))
            if row.get("status") == "ok":
                row.update(instr.get(row["cell_id"], {}))
            done[i] = row
            meta["elapsed_s"] = time.perf_counter() - t0
            results.write_run(run_dir, [done[k] for k in sorted(done)], meta)
            bar.set_postfix_str(f"{cells[i].impl} {cells[i].case.label()}", refresh=False)
            bar.update(1)
        meta["status"] = "complete"
    except KeyboardInterrupt:
        meta["status"] = f"interrupted after {len(done)} of {len(cells)} cells"
    finally:
        bar.close()
    rows = [done[k] for k in sorted(done)]
    meta["env"]["load"]["after"] = machine_load()
    meta["elapsed_s"] = time.perf_counter() - t0
    results.write_run(run_dir, rows, meta)
    _write_report([run_dir], None)
    if args.save_baseline and meta["status"] == "complete":
        from .baselines import save

        print(f"upbench: baseline saved as {save(run_dir, args.save_baseline)}", file=sys.stderr)
    bad = [r for r in rows if r["status"] in ("failed", "oom")]
    print(f"upbench: {len(rows)} cells, {len(bad)} failed; results and report in {run_dir}", file=sys.stderr)
    if meta["status"] != "complete":
        return EXIT_INTERRUPTED
    return EXIT_FAILED if bad else EXIT_OK


def _count_instructions(cells: list[Any]) -> dict[str, dict[str, Any]]:
    from .instructions import for_cells

    n = sum(1 for c in cells if not c.skip and c.case.device == "cpu")
    print(f"upbench: counting instructions of {n} cells under valgrind (about 20 s plus 1–10 s a cell)…",
          file=sys.stderr)
    return for_cells(cells)


def _progress(total: int, disabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, unit="cell", disable=disabled or not sys.stderr.isatty(), file=sys.stderr,
                dynamic_ncols=True)


def _write_report(paths: list[Path], out: Path | None) -> Path:
    from .report import render
    from .results import atomic_write, load_run

    runs = [((p if p.is_dir() else p.parent).name, *load_run(p)) for p in paths]
    if out is None:
        if len(paths) > 1:
            raise UsageError("report", "several runs make one report", "give --out FILE.md")
        out = (paths[0] if paths[0].is_dir() else paths[0].parent) / "report.md"
    atomic_write(out, render(runs, out))
    return out


def cmd_report(args: argparse.Namespace) -> int:
    if args.out:
        from .outdir import check_file

        check_file(args.out, f"--out {args.out}")
    print(_write_report(args.runs, args.out))
    return EXIT_OK


def cmd_compare(args: argparse.Namespace) -> int:
    from . import baselines, compare

    thresholds = compare.load_thresholds(args.thresholds, args.threshold)
    if args.out:
        from .outdir import check_file

        check_file(args.out, f"--out {args.out}")
    try:
        base = baselines.resolve(args.base, args.new)
    except baselines.MissingBaseline as exc:
        if args.if_missing == "fail":
            raise
        print(f"upbench: no gate: {exc}", file=sys.stderr)
        return EXIT_OK
    instr_t = compare.INSTR_THRESHOLD if args.instr_threshold is None else args.instr_threshold
    if not 0 < instr_t < 10:
        raise UsageError("--instr-threshold", f"{instr_t} is not a fraction > 0", "e.g. --instr-threshold 0.02")
    df = compare.compare(base, args.new, thresholds, args.normalise, args.allow_cross_device, instr_t,
                         args.allow_disjoint)
    text = compare.markdown(df, base, args.new, args.normalise)
    if args.out:
        from .results import atomic_write

        atomic_write(args.out, text)
    print(text)
    return compare.exit_code(df, args.strict)


def cmd_merge(args: argparse.Namespace) -> int:
    from .merge import merge
    from .outdir import check_dir

    check_dir(args.out, f"--out {args.out}")
    code = merge(args.shards, args.out, args.force)
    if code == EXIT_OK:
        _write_report([args.out], None)
    return code


def cmd_env(args: argparse.Namespace) -> int:
    from .env import fingerprint

    env = fingerprint()
    if args.json:
        print(json.dumps(env, indent=1))
    else:
        for k, v in env.items():
            print(f"{k:<14} {json.dumps(v) if isinstance(v, (dict, list)) else v}")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = _parser().parse_args(argv)
        if args.command == "list":
            return cmd_list(args)
        if args.command == "run":
            return cmd_run(args, argv)
        if args.command == "report":
            return cmd_report(args)
        if args.command == "compare":
            return cmd_compare(args)
        if args.command == "merge":
            return cmd_merge(args)
        return cmd_env(args)
    except UsageError as exc:
        print(f"upbench: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # `upbench list | head`
        sys.stderr.close()
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
