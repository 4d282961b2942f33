"""The report's trust section: every row whose numbers a check says not to believe, and why."""

from __future__ import annotations

from typing import Any

import pandas as pd
from tabulate import tabulate

from .. import registry
from ..floor import speedup_flags
from .tables import AXIS_COLS, _axis_value, _fmt, _varying

INTRO = ("Rows a trust check flagged (column `trust`, docs/results.md): an input the impl modified, a wrong "
         "answer on one of the extra inputs (`wrong@…`), a declared property that failed on a constant input, "
         "a latency below the speed-of-light floor (`implausible`), CUDA work the timer could not see, or a "
         "speed-up over the operator's reference impl beyond the suite's limit.")


def _reference_impls(ops: list[str]) -> dict[str, str]:
    out = {}
    for op in ops:
        try:
            out[op] = registry.get(op).impls[0].name
        except Exception:  # an operator whose plugin is not installed where the report is made
            continue
    return out


def _detail(r: pd.Series) -> str:
    parts = []
    t = str(r.get("trust") or "")
    if "modified-input" in t or (r.get("status") in ("failed", "oom") and "modified" in str(r.get("reason"))):
        parts.append(str(r.get("reason")))
    if t.startswith("wrong") or ",wrong" in t:
        parts.append(f"max|err|/rms {_fmt(r.get('err_max_rel'), '.2e')} > {_fmt(r.get('err_tol'), '.0e')} "
                     f"on {r.get('agree_worst_input')}")
    if "property" in t:
        parts.append(str(r.get("property_check")))
    if "implausible" in t:
        parts.append(f"latency {_fmt(r.get('latency_median_ms'), '.3g')} ms = "
                     f"{_fmt(r.get('latency_over_floor'), '.2g')} × floor {_fmt(r.get('floor_ms'), '.3g')} ms")
    tc = r.get("timing_check")
    if isinstance(tc, str) and tc and tc != "ok":
        parts.append(tc)
    return "; ".join(parts)


def flagged(df: pd.DataFrame) -> str:
    """The section body: a table of flagged rows, or a sentence saying there are none."""
    rows: list[dict[str, Any]] = df.to_dict("records")
    key = tuple(c for c in ("suite", "op", *AXIS_COLS) if c in df)
    extra = speedup_flags(rows, _reference_impls(list(dict.fromkeys(df["op"]))), key) if rows else {}
    vary = [c for c in _varying(df) if c != "run"]
    out = []
    for i, r in enumerate(rows):
        t = r.get("trust")
        bad = isinstance(t, str) and t not in ("", "ok")
        if not bad and i not in extra:
            continue
        s = pd.Series(r)
        detail = "; ".join(p for p in (_detail(s), extra.get(i, "")) if p)
        trust = ",".join(p for p in (t if bad else "", "speed-up" if i in extra else "") if p)
        out.append([r["suite"], r["op"], r["impl"], *(_axis_value(r.get(c)) for c in vary), trust, detail])
    if not out and "trust" not in df:
        return "These results carry no trust checks (recorded by an upbench before them)."
    if not out:
        return "No row was flagged: every check that ran passed."
    return tabulate(out, ["suite", "op", "impl", *vary, "trust", "why"], tablefmt="github", disable_numparse=True)

