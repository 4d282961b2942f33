"""The ``upbench`` command: list, run, report, compare, merge, env.

Exit codes: 0 every cell ok or skipped; 1 some cell failed or ran out of memory; 2 bad usage or input
(one stderr line ``upbench: error: …``, nothing written); 130 interrupted by Ctrl-C, 143 by SIGTERM (results
so far are kept, with the report). This module only parses and prints: a run belongs to engine.py.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import NoReturn

from . import __version__, registry
from .errors import UsageError

EXIT_OK, EXIT_USAGE = 0, 2


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
    run.add_argument("--suite", help="built-in suite name (see `upbench list`) or a .toml path")
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
    run.add_argument("--resume", type=Path, metavar="DIR",
                     help="continue an interrupted, killed or partly failed run in DIR with its own settings")
    run.add_argument("--retry-failed", action="store_true", help="with --resume: also re-run failed cells")

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


def cmd_run(args: argparse.Namespace, argv: list[str]) -> int:
    from .engine import Engine, Request, default_run_dir, plan
    from .outdir import check_dir

    command = "upbench " + shlex.join(argv)
    if args.resume:
        given = [f for f in ("suite", "op", "impl", "sets", "param", "device", "budget", "shard", "out",
                             "save_baseline") if getattr(args, f)]
        if given:
            raise UsageError("--resume", f"takes the run's own settings, not --{given[0].replace('_', '-')}",
                             "give only --resume DIR (and --retry-failed, --no-progress)")
        engine = Engine.resume(args.resume, command, retry_failed=args.retry_failed, progress=not args.no_progress)
    else:
        if not args.suite:
            raise UsageError("run", "the following arguments are required: --suite", "or --resume DIR")
        if args.retry_failed:
            raise UsageError("--retry-failed", "only with --resume DIR")
        if args.save_baseline:
            from .baselines import check_name

            check_name(args.save_baseline)
        p = plan(Request(args.suite, _split(args.op), _split(args.impl), tuple(args.sets), tuple(args.param),
                         args.device, args.budget, args.shard, args.executor, args.address))
        if args.dry_run:
            for c in p.cells:
                print(f"{c.id}  {c.impl:<12} {' + '.join(s.label() for s in c.stages)}  {c.skip or 'run'}")
            return EXIT_OK
        run_dir = args.out or default_run_dir(p.suite)
        check_dir(run_dir, f"--out {run_dir}")  # a file, or not writable: refused before any probe or cell
        engine = Engine(p, run_dir, command, force=args.force, progress=not args.no_progress,
                        save_baseline=args.save_baseline)
    out = engine.run()
    if out.baseline:
        print(f"upbench: baseline saved as {out.baseline}", file=sys.stderr)
    print(f"upbench: {len(out.rows)} cells, {out.failed} failed{'' if out.status == 'complete' else ', ' + out.status}"
          f"; results and report in {out.run_dir}", file=sys.stderr)
    if out.disagreed:
        ids = [str(r.get("cell_id")) for r in out.disagreed]
        print(f"upbench: {len(ids)} cells disagree with their reference beyond tolerance ({', '.join(ids[:5])}"
              f"{', …' if len(ids) > 5 else ''}); declare expected ones in the suite with "
              "[[expect]] where = {…} reason = \"…\"", file=sys.stderr)
    return out.exit_code


def cmd_report(args: argparse.Namespace) -> int:
    from .report import write_report

    if args.out:
        from .outdir import check_file

        check_file(args.out, f"--out {args.out}")
    print(write_report(args.runs, args.out))
    return EXIT_OK


def cmd_compare(args: argparse.Namespace) -> int:
    from . import baselines, compare

    thresholds = compare.load_thresholds(args.thresholds, args.threshold)
    instr_t = compare.INSTR_THRESHOLD if args.instr_threshold is None else args.instr_threshold
    if not 0 < instr_t < 10:
        raise UsageError("--instr-threshold", f"{instr_t} is not a fraction > 0", "e.g. --instr-threshold 0.02")
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
    from .report import write_report

    check_dir(args.out, f"--out {args.out}")
    code = merge(args.shards, args.out, args.force)
    if code == EXIT_OK:
        write_report([args.out], None)
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
    from .engine import exit_code_of, signals

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        with signals():
            return _dispatch(argv)
    except UsageError as exc:
        print(f"upbench: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as exc:  # before the first cell (start-up, calibration): nothing was written
        print("upbench: interrupted", file=sys.stderr)
        return exit_code_of(exc)
    except BrokenPipeError:  # `upbench list | head`
        sys.stderr.close()
        return EXIT_OK


def _dispatch(argv: list[str]) -> int:
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


if __name__ == "__main__":
    sys.exit(main())
