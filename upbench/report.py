"""Markdown report of one run, made with tabulate from the tidy results.

Per operator: a table of every measured cell (latency median ± IQR, peak memory and its ratio to the
leanest impl of the same case, MACs, params, agreement) and, where an operator has several impls, pivots
of latency and peak memory over the swept axes with one column per impl. Then the skipped and failed
cells with their reasons, the environment, and the command that reproduces the run.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pandas as pd
from tabulate import tabulate

AXIS_COLS = ("stages", "B", "C", "Cy", "H", "W", "s", "K", "dtype", "device", "pass", "threads", "hp")
MiB = 2**20


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def _fmt(v: Any, spec: str = ".3g") -> str:
    f = _num(v)
    return "–" if f is None else format(f, spec)


def _axis_value(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)


def _varying(df: pd.DataFrame) -> list[str]:
    return [c for c in AXIS_COLS if c in df and df[c].astype(str).nunique() > 1]


def _key(df: pd.DataFrame) -> list[str]:
    return [c for c in AXIS_COLS if c in df]


def _latency(r: pd.Series) -> str:
    if _num(r.get("latency_median_ms")) is None:
        return "–"
    noisy = " (noisy)" if r.get("latency_noise") == "noisy" else ""
    return f"{_fmt(r['latency_median_ms'], '.4g')} ± {_fmt(r['latency_iqr_ms'], '.2g')}{noisy}"


def _agree(r: pd.Series) -> str:
    if _num(r.get("err_max_rel")) is None:
        return "–"
    mark = "✓" if r.get("agree") in (True, "True", 1) else "✗"
    return (f"{mark} {_fmt(r['err_max_rel'], '.1e')} (border {_fmt(r['err_border_max_rel'], '.1e')}, "
            f"interior {_fmt(r['err_interior_max_rel'], '.1e')})")


def _with_ratio(ok: pd.DataFrame) -> pd.DataFrame:
    ok = ok.copy()
    ok["_peak"] = pd.to_numeric(ok["peak_mem_bytes"], errors="coerce")
    key = _key(ok)
    grp = ok.assign(**{c: ok[c].astype(str) for c in key}).groupby(key)["_peak"]
    ok["_lean"] = grp.transform(lambda s: s[s > 0].min() if (s > 0).any() else math.nan)
    ok["_ratio"] = ok["_peak"] / ok["_lean"]
    return ok


def op_table(ok: pd.DataFrame) -> str:
    vary = _varying(ok)
    ok = _with_ratio(ok)
    rows = []
    for _, r in ok.iterrows():
        rows.append([*(_axis_value(r[c]) for c in vary), r["impl"], _latency(r),
                     _fmt(r["_peak"] / MiB if _num(r["_peak"]) is not None else None, ".4g"),
                     _fmt(r["_ratio"], ".2f"), _fmt(_num(r["macs"]) and _num(r["macs"]) / 1e9, ".4g"),
                     _fmt(r["params"], ".6g"), _fmt(r.get("gflops_per_s"), ".3g"), _agree(r)])
    head = [*vary, "impl", "latency ms (median ± IQR)", "peak MiB", "× leanest", "GMACs", "params",
            "GFLOP/s", "agreement max|err|/rms"]
    return tabulate(rows, head, tablefmt="github", disable_numparse=True)


def pivot(ok: pd.DataFrame, column: str, scale: float, title: str) -> str | None:
    if ok["impl"].nunique() < 2 or pd.to_numeric(ok[column], errors="coerce").isna().all():
        return None
    vary = [c for c in _varying(ok)]
    if not vary:
        vary = ["op"]
    t = ok.assign(_v=pd.to_numeric(ok[column], errors="coerce") / scale)
    t = t.assign(**{c: t[c].map(_axis_value) for c in vary})
    p = t.pivot_table(index=vary, columns="impl", values="_v", aggfunc="first", sort=False)
    rows = [[*(idx if isinstance(idx, tuple) else (idx,)), *(_fmt(v, ".4g") for v in vals)]
            for idx, vals in zip(p.index, p.to_numpy(), strict=True)]
    return f"**{title}**\n\n" + tabulate(rows, [*vary, *p.columns], tablefmt="github", disable_numparse=True)


def _not_ok(df: pd.DataFrame) -> str:
    bad = df[df["status"] != "ok"]
    if bad.empty:
        return "Every cell ran."
    parts = []
    failed = bad[bad["status"].isin(["failed", "oom"])]
    if not failed.empty:
        rows = [[r["op"], r["impl"], *(_axis_value(r[c]) for c in _varying(df)), r["status"], r["reason"]]
                for _, r in failed.iterrows()]
        parts.append("**Failed cells**\n\n" + tabulate(rows, ["op", "impl", *_varying(df), "status", "reason"],
                                                       tablefmt="github", disable_numparse=True))
    skipped = bad[bad["status"] == "skipped"]
    if not skipped.empty:
        g = skipped.groupby(["op", "impl", "reason"], sort=False).size().reset_index(name="cells")
        parts.append("**Skipped cells** (grouped by reason)\n\n" +
                     tabulate(g.values.tolist(), ["op", "impl", "reason", "cells"], tablefmt="github",
                              disable_numparse=True))
    return "\n\n".join(parts)


def _env(meta: dict[str, Any]) -> str:
    env = meta.get("env", {})
    rows = []
    for k, v in env.items():
        rows.append([k, json.dumps(v) if isinstance(v, (dict, list)) else str(v)])
    return tabulate(rows, ["field", "value"], tablefmt="github", disable_numparse=True)


def render(df: pd.DataFrame, meta: dict[str, Any]) -> str:
    suite = meta.get("suite", {})
    counts = df["status"].value_counts().to_dict()
    out = [f"# upbench report — suite `{suite.get('name', '?')}`", ""]
    if suite.get("description"):
        out += [suite["description"], ""]
    out += [f"Cells: {len(df)} — " + ", ".join(f"{n} {k}" for k, n in counts.items()) +
            f". Run {meta.get('status', '?')}, started {meta.get('started', '?')}, "
            f"{_fmt(meta.get('elapsed_s'), '.1f')} s.", "",
            "Latency: median ± IQR of per-call times; peak memory: extra allocation over the live inputs, "
            "measured in its own pass; × leanest: ratio to the impl with the smallest peak on the same case; "
            "agreement: max |impl − float64 reference| / RMS(reference), ✓ within the dtype's tolerance. "
            "Columns are defined in docs/results.md.", ""]
    ok_all = df[df["status"] == "ok"]
    for op in dict.fromkeys(df["op"]):
        ok = ok_all[ok_all["op"] == op]
        out += [f"## {op}", ""]
        if ok.empty:
            out += ["No cell of this operator ran (see below).", ""]
            continue
        out += [op_table(ok), ""]
        for col, scale, title in (("latency_median_ms", 1.0, "Latency (ms, median) by impl"),
                                  ("peak_mem_bytes", MiB, "Peak memory (MiB) by impl")):
            p = pivot(ok, col, scale, title)
            if p:
                out += [p, ""]
    out += ["## Skipped and failed cells", "", _not_ok(df), "", "## Environment", "", _env(meta), "",
            "## Reproduce", "", "```", meta.get("command", "?"), "```", ""]
    return "\n".join(out)
