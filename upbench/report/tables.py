"""The report's tables, made with tabulate from tidy results.

Per operator: a table of every measured cell (latency median ± IQR, peak memory and its ratios to the
leanest impl of the same case and to the ideal footprint, MACs, params, % of roofline, agreement,
determinism) and, where an operator has several impls, pivots over the swept axes with one column per
impl. A paper-style overhead table per model suite; skipped and failed cells; the environment.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pandas as pd
from tabulate import tabulate

from ..axes import REPORT_AXES

AXIS_COLS = ("run", "stages", *REPORT_AXES, "hp")
MiB = 2**20


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def _fmt(v: Any, spec: str = ".3g") -> str:
    """A number for a table; ``g`` specs print plainly (100, 11870, 0.00123), never ``1e+02``."""
    f = _num(v)
    if f is None:
        return "–"
    text = format(f, spec)
    if spec.endswith("g") and "e" in text and 1e-4 <= abs(f) < 1e15:
        digits = int(spec.strip(".g") or 6)
        decimals = max(digits - 1 - math.floor(math.log10(abs(f))), 0)
        text = format(round(f, decimals), f".{decimals}f")
    return text


def _axis_value(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)


def _varying(df: pd.DataFrame) -> list[str]:
    return [c for c in AXIS_COLS if c in df and df[c].map(str).nunique() > 1]


def _key(df: pd.DataFrame) -> list[str]:
    return [c for c in AXIS_COLS if c in df]


def _latency(r: pd.Series) -> str:
    if _num(r.get("latency_median_ms")) is None:
        return "–"
    noisy = f" ({r['latency_noise']})" if r.get("latency_noise") in ("noisy", "contended") else ""
    return f"{_fmt(r['latency_median_ms'], '.4g')} ± {_fmt(r['latency_iqr_ms'], '.2g')}{noisy}"


def _agree(r: pd.Series) -> str:
    if _num(r.get("err_max_rel")) is None:
        return "–"
    mark = "✓" if r.get("agree") in (True, "True", 1) else "✗"
    if mark == "✗" and isinstance(r.get("agree_expected"), str) and r["agree_expected"]:
        mark = f"✗ expected: {r['agree_expected']};"
    return (f"{mark} {_fmt(r['err_max_rel'], '.1e')} (border {_fmt(r['err_border_max_rel'], '.1e')}, "
            f"interior {_fmt(r['err_interior_max_rel'], '.1e')})")


def trust_cell(r: pd.Series) -> str:
    """The `trust` column: ✓, or ✗ and the failed checks (docs/results.md)."""
    t = r.get("trust")
    if not isinstance(t, str) or not t:
        return "–"
    return "✓" if t == "ok" else f"✗ {t}"


def _with_ratio(ok: pd.DataFrame) -> pd.DataFrame:
    ok = ok.copy()
    ok["_peak"] = pd.to_numeric(ok["peak_mem_bytes"], errors="coerce")
    key = _key(ok)
    # map(str), not astype(str): pandas ≥ 3 keeps None as a missing value, which groupby would drop
    grp = ok.assign(**{c: ok[c].map(str) for c in key}).groupby(key)["_peak"]
    ok["_lean"] = grp.transform(lambda s: s[s > 0].min() if (s > 0).any() else math.nan)
    ok["_ratio"] = ok["_peak"] / ok["_lean"]
    return ok


def _roof(r: pd.Series) -> str:
    c, b = _num(r.get("pct_compute_roof")), _num(r.get("pct_bw_roof"))
    if c is None and b is None:
        return "–"
    return f"{_fmt(c, '.2g')} / {_fmt(b, '.2g')}"


def _bits(r: pd.Series) -> str:
    v = r.get("bitwise_repeatable")
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return "✓" if v in (True, "True", 1) else "✗"


def op_table(ok: pd.DataFrame) -> str:
    vary = _varying(ok)
    ok = _with_ratio(ok)
    rows = []
    for _, r in ok.iterrows():
        rows.append([*(_axis_value(r[c]) for c in vary), r["impl"], _latency(r),
                     _fmt(r["_peak"] / MiB if _num(r["_peak"]) is not None else None, ".4g"),
                     _fmt(r["_ratio"], ".2f"), _fmt(r.get("peak_over_ideal"), ".2f"),
                     _fmt(_num(r["macs"]) and _num(r["macs"]) / 1e9, ".4g"),
                     _fmt(r["params"], ".6g"), _fmt(r.get("gflops_per_s"), ".3g"), _roof(r), _agree(r),
                     trust_cell(r), _bits(r)])
    head = [*vary, "impl", "latency ms (median ± IQR)", "peak MiB", "× leanest", "× ideal", "GMACs", "params",
            "GFLOP/s", "% roof (compute / bw)", "agreement max|err|/rms", "trust", "bitwise"]
    return tabulate(rows, head, tablefmt="github", disable_numparse=True)


def paper_table(ok: pd.DataFrame, baseline: str | None) -> str:
    """One row per operator × impl: the overhead table of upsampler papers, generated, never typed.

    ``baseline`` is the operator the suite names (``[suite] baseline``) for the speed-up column."""
    base = ok[ok["op"] == baseline] if baseline else ok.iloc[:0]
    base_lat = _num(base["latency_median_ms"].min()) if not base.empty else None
    rows = []
    for (op, impl), g in ok.groupby(["op", "impl"], sort=False):
        r = g.iloc[0]
        lat = _num(r.get("latency_median_ms"))
        speed = _fmt(base_lat / lat, ".2f") if base_lat and lat else "–"
        rows.append([op, impl, _fmt(_num(r["params"]) and _num(r["params"]) / 1e6, ".4g"),
                     _fmt(_num(r["macs"]) and _num(r["macs"]) / 1e9, ".4g"), _latency(r), speed,
                     _fmt(_num(r.get("peak_mem_bytes")) and _num(r["peak_mem_bytes"]) / MiB, ".4g"),
                     _fmt(r.get("peak_over_ideal"), ".2f"), _roof(r), _agree(r), trust_cell(r), _bits(r)])
    head = ["operator", "impl", "+params (M)", "+GMACs", "latency ms", f"speed-up vs {baseline or '–'}", "peak MiB",
            "× ideal", "% roof (compute / bw)", "agreement", "trust", "bitwise"]
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


def not_ok(df: pd.DataFrame) -> str:
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


def env_table(meta: dict[str, Any]) -> str:
    env = meta.get("env", {})
    rows = []
    for k, v in env.items():
        rows.append([k, json.dumps(v) if isinstance(v, (dict, list)) else str(v)])
    return tabulate(rows, ["field", "value"], tablefmt="github", disable_numparse=True)
