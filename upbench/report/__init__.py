"""One markdown report from one or more runs (e.g. a CPU run and a GPU run side by side).

Layout: header; per suite — paper-style overhead table (model suites), per-operator tables and pivots,
figures, scaling diagnostics; skipped and failed cells; an environment section per run; the commands that
reproduce the runs. Figures are PNG files in ``<report>-figs/`` beside the markdown.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from tabulate import tabulate

from ..env import device_class
from ..errors import UsageError
from ..timing import busy
from . import plots, trust
from .scaling import fits
from .tables import MiB, _axis_value, _fmt, env_table, not_ok, op_table, paper_table, pivot

Run = tuple[str, pd.DataFrame, dict[str, Any]]

INTRO = ("Latency: median ± IQR of per-call times, `(noisy)` when the spread stayed above the suite's target, "
         "`(contended)` when most samples were preempted by other processes (the time is the machine's load). "
         "Peak memory: extra allocation over the live inputs, in its own pass; × leanest: ratio to the impl "
         "with the smallest peak on the same case; × ideal: ratio to the bytes of the results themselves. "
         "% roof: achieved GFLOP/s and GB/s over the device's probed matmul and copy ceilings. Agreement: max "
         "|impl − float64 reference| / RMS(reference), ✓ within the dtype's tolerance. Columns: docs/results.md.")


def combine(runs: list[Run]) -> pd.DataFrame:
    frames = []
    for name, df, meta in runs:
        env = meta.get("env", {})
        cls = {d: device_class(d, env) for d in df["device"].dropna().unique()}
        prefix = f"{name}: " if len(runs) > 1 else ""
        per_row = df["device_class"] if "device_class" in df else pd.Series([None] * len(df))
        frames.append(df.assign(run=[f"{prefix}{rc if isinstance(rc, str) else cls.get(d, '?')}"
                                     for d, rc in zip(df["device"], per_row, strict=True)]))
    return pd.concat(frames, ignore_index=True)


def _figures(ok: pd.DataFrame, suite: str, kind: str, ceilings: dict[str, Any], fig_dir: Path,
             rel: str) -> list[str]:
    made: list[tuple[str, Path | None]] = []
    if kind == "model":
        made.append(("Overhead per operator", plots.model_overhead(ok, fig_dir / f"{suite}-overhead.png")))
    else:
        made += [("Latency against output pixels", plots.latency_vs_pixels(ok, fig_dir / f"{suite}-latency.png")),
                 ("Peak memory against resolution", plots.memory_vs_resolution(ok, fig_dir / f"{suite}-mem-res.png")),
                 ("Peak memory against K", plots.memory_vs_K(ok, fig_dir / f"{suite}-mem-k.png")),
                 ("Roofline", plots.roofline(ok, ceilings, fig_dir / f"{suite}-roofline.png"))]
    return [f"![{title}]({rel}/{p.name})" for title, p in made if p is not None]


def _scaling_table(ok: pd.DataFrame) -> str | None:
    fs = fits(ok)
    if not fs:
        return None
    rows = [[f.op, f.impl, f.group, f.points, f"{f.slope:.2f}", f"{f.small_slope:.2f}", f.verdict] for f in fs]
    return ("**Scaling**: fitted slope of log latency against log output pixels (1 = linear).\n\n" +
            tabulate(rows, ["op", "impl", "fixed axes", "sizes", "slope", "slope at the smallest sizes", "diagnosis"],
                     tablefmt="github", disable_numparse=True))


REQUIRED = ("suite", "cell_id", "op", "impl", "status")


def check_rows(runs: list[Run]) -> None:
    """A results file whose rows lack the schema's identity columns (or, for a finished run, that has no rows)
    is refused, not reported as 'None'."""
    for name, df, meta in runs:
        if df.empty:
            if meta.get("status") in ("interrupted", "running", "dead"):
                continue  # stopped before its first cell finished: the report says so
            raise UsageError(f"report {name}", "the results file has no rows")
        missing = [c for c in REQUIRED if df[c].isna().any()]
        if missing:
            raise UsageError(f"report {name}", f"rows lack the column(s) {', '.join(missing)}",
                             "give results written by `upbench run` (docs/results.md lists the columns)")


def contention_lines(runs: list[Run]) -> list[str]:
    """A warning per run whose machine was busy (load before/after) or whose rows were contended."""
    lines = []
    for name, df, meta in runs:
        load = (meta.get("env") or {}).get("load") or {}
        most = pd.to_numeric(df["torch_threads"], errors="coerce").max() if "torch_threads" in df else None
        threads = int(most) if most is not None and pd.notna(most) and most >= 1 else 1  # none ran: 1
        why = [f"{when}: {w}" for when in ("before", "after") if (w := busy(load.get(when) or {}, threads))]
        contended = int((df.get("latency_noise") == "contended").sum()) if "latency_noise" in df else 0
        if why or contended:
            parts = ([f"the machine was busy ({'; '.join(why)})"] if why else []) + (
                [f"{contended} row(s) had most samples preempted (`contended`)"] if contended else [])
            lines += [f"> **Warning — {name}: {', and '.join(parts)}.** CPU times are then the machine's load as "
                      "much as the code's; compare instruction counts or re-run on a quiet machine.", ""]
    return lines


def allocation_lines(df: pd.DataFrame) -> list[str]:
    """What the CPU times include: the allocation mode(s) of the rows, and fresh against warm where both ran."""
    cpu = df[(df["device"] == "cpu") & (df["status"] == "ok")] if "device" in df else df.iloc[:0]
    if cpu.empty or "latency_median_ms" not in cpu or cpu["latency_median_ms"].isna().all():
        return []
    modes = cpu["alloc"].fillna("fresh") if "alloc" in cpu else pd.Series(["fresh"] * len(cpu), index=cpu.index)
    lines = ["**CPU allocation mode** (`alloc`, docs/results.md): " + (
        "every CPU time is a plain call's (`fresh`): a large new output is faulted in on every call, and "
        "`minor_faults_per_call` says how much of that the row paid." if set(modes) == {"fresh"} else
        "every CPU time is the kernel's with a warm pool (`warm`): no first-touch cost." if set(modes) == {"warm"}
        else "rows with `alloc = warm` exclude the first-touch cost that `fresh` rows (plain calls) pay; the table "
        "pairs them."), ""]
    if set(modes) >= {"fresh", "warm"}:
        key = [c for c in ("op", "impl", "B", "C", "Cy", "H", "W", "s", "K", "dtype", "pass", "threads", "hp")
               if c in cpu]
        both = cpu.assign(_mode=modes).pivot_table(index=key, columns="_mode", dropna=False, aggfunc="first",
                                                   values=["latency_median_ms", "minor_faults_per_call"])
        rows = []
        for idx, r in both.iterrows():
            f, w = r[("latency_median_ms", "fresh")], r[("latency_median_ms", "warm")]
            if pd.isna(f) or pd.isna(w):
                continue
            case = dict(zip(key, idx if isinstance(idx, tuple) else (idx,), strict=True))
            rows.append([case["op"], case["impl"], " ".join(f"{k}={_axis_value(v)}" for k, v in case.items()
                                                             if k not in ("op", "impl", "hp") and pd.notna(v)),
                         _fmt(f), _fmt(w), f"{f / w:.2f}", _fmt(r[("minor_faults_per_call", "fresh")], ".0f"),
                         _fmt(r[("minor_faults_per_call", "warm")], ".0f")])
        if rows:
            lines += [tabulate(rows, ["op", "impl", "case", "fresh ms", "warm ms", "fresh / warm", "faults/call fresh",
                                      "faults/call warm"], tablefmt="github", disable_numparse=True), ""]
    return lines


def _described(meta: dict[str, Any]) -> str:
    """The suite's description, marked when --op/--impl/--set/--param changed what the run measured."""
    desc = meta.get("suite", {}).get("description", "")
    cmd = meta.get("command", "")
    flags = [f for f in ("--op", "--impl", "--set", "--param", "--device") if f in cmd.split()]
    if desc and flags:
        return f"{desc} *(the suite's description; this run overrode it with {', '.join(flags)}: see Reproduce)*"
    return desc


def _family(op: str) -> str:
    """The operator's declared family; operators not installed here count as the default family."""
    from .. import registry
    from ..errors import UsageError
    from ..plugin import Operator

    try:
        return registry.get(op).family
    except UsageError:  # an operator of a merged run that is not installed on this machine
        return Operator.family


def render(runs: list[Run], out: Path) -> str:
    """The markdown text; figures are written beside ``out``."""
    check_rows(runs)
    df = combine(runs)
    fig_dir = out.parent / f"{out.stem}-figs"
    metas = {name: meta for name, _, meta in runs}
    kinds = {m.get("suite", {}).get("name"): m.get("suite", {}).get("kind", "sweep") for m in metas.values()}
    descs = {m.get("suite", {}).get("name"): _described(m) for m in metas.values()}
    baselines = {m.get("suite", {}).get("name"): m.get("suite", {}).get("baseline") for m in metas.values()}
    ceilings = {k: v for m in metas.values() for k, v in (m.get("ceilings") or {}).items()}
    suites = list(dict.fromkeys(df["suite"]))
    title = ", ".join(f"`{s}`" for s in suites)
    counts = df["status"].value_counts().to_dict()
    out_lines = [f"# upbench report — {title}", "",
                 f"Runs: {len(runs)}; cells: {len(df)} — " + ", ".join(f"{n} {k}" for k, n in counts.items()) + ".",
                 "", *contention_lines(runs), INTRO, "", *allocation_lines(df)]
    for suite in suites:
        sdf = df[df["suite"] == suite]
        ok_all = sdf[sdf["status"] == "ok"]
        out_lines += [f"## Suite `{suite}`", ""]
        if descs.get(suite):
            out_lines += [descs[suite], ""]
        if kinds.get(suite) == "model" and not ok_all.empty:
            out_lines += ["### Overhead over the model's upsampling stages", "",
                          paper_table(ok_all[ok_all["pass"] == "fwd"], baselines.get(suite)), ""]
        ops = list(dict.fromkeys(sdf["op"]))
        families = {op: _family(op) for op in ops}
        grouped = len(set(families.values())) > 1
        last = None
        for op in sorted(ops, key=lambda o: list(dict.fromkeys(families.values())).index(families[o])):
            if grouped and families[op] != last:
                last = families[op]
                out_lines += [f"**Operator family: {last}**", ""]
            ok = ok_all[ok_all["op"] == op]
            out_lines += [f"### {op}", ""]
            if ok.empty:
                out_lines += ["No cell of this operator ran (see below).", ""]
                continue
            out_lines += [op_table(ok), ""]
            for col, scale, t in (("latency_median_ms", 1.0, "Latency (ms, median) by impl"),
                                  ("peak_mem_bytes", MiB, "Peak memory (MiB) by impl")):
                p = pivot(ok, col, scale, t)
                if p:
                    out_lines += [p, ""]
        if not ok_all.empty:
            figs = _figures(ok_all, suite, kinds.get(suite, "sweep"), ceilings, fig_dir, fig_dir.name)
            if figs:
                out_lines += ["### Figures", "", *[f + "\n" for f in figs]]
            sc = _scaling_table(ok_all)
            if sc:
                out_lines += [sc, ""]
        out_lines += ["### Skipped and failed cells", "", not_ok(sdf), ""]
    out_lines += ["## Trust: flagged rows", "", trust.INTRO, "", trust.flagged(df), ""]  # issue 13
    for name, meta in metas.items():
        hdr = f"## Environment — {name}" if len(runs) > 1 else "## Environment"
        out_lines += [hdr, "", f"Run {meta.get('status', '?')}, started {meta.get('started', '?')}, "
                      f"{_fmt(meta.get('elapsed_s'), '.1f')} s.", "", env_table(meta), ""]
    out_lines += ["## Reproduce", "", "```", *[m.get("command", "?") for m in metas.values()], "```", ""]
    return "\n".join(out_lines)


def write_report(paths: list[Path], out: Path | None) -> Path:
    """Render the runs at ``paths`` into ``out`` (default: the one run's report.md); returns the path."""
    from ..errors import UsageError
    from ..results import atomic_write, load_run

    runs = [((p if p.is_dir() else p.parent).name, *load_run(p)) for p in paths]
    if out is None:
        if len(paths) > 1:
            raise UsageError("report", "several runs make one report", "give --out FILE.md")
        out = (paths[0] if paths[0].is_dir() else paths[0].parent) / "report.md"
    atomic_write(out, render(runs, out))
    return out
