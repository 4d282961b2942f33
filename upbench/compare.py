"""``upbench compare BASE NEW``: a regression gate that catches a real slowdown and stays quiet on noise.

Rows are matched by cell id (op × impl × every axis × pass). For each pair with latency samples on both
sides, a seeded bootstrap gives a 95 % confidence interval of the ratio of medians new/base, and the verdict
combines it with the minimum effect size t (threshold):

- SLOWER     the whole interval lies above 1 + t;
- FASTER     the whole interval lies below 1 / (1 + t);
- SAME       the whole interval lies inside [1 / (1 + t), 1 + t];
- AMBIGUOUS  the interval straddles a bound: too noisy to tell at this sample count.

Besides timing: FAILED (ok in BASE, failed or oom in NEW), WRONG (agreed with the reference in BASE, not in
NEW), FIXED (the reverse of FAILED), and rows present on one side only, which are listed, never dropped.
IMPLAUSIBLE: NEW ran faster than its speed-of-light floor (``floor_verdict``); never reported as FASTER.
Exit: 0 nothing slower; 1 a SLOWER, FAILED, WRONG or IMPLAUSIBLE row; 3 only AMBIGUOUS rows stand in the way under
``--strict``; 2 usage or input error.
"""

from __future__ import annotations

import fnmatch
import json
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tabulate import tabulate

from .axes import REPORT_AXES, SETTING_AXES
from .errors import UsageError
from .results import device_classes, load_run

BAD = ("SLOWER", "FAILED", "WRONG", "IMPLAUSIBLE")


@dataclass(frozen=True)
class Rule:
    threshold: float
    suite: str = "*"
    op: str = "*"
    impl: str = "*"


@dataclass(frozen=True)
class Thresholds:
    default: float = 0.05
    rules: tuple[Rule, ...] = ()

    def for_row(self, suite: str, op: str, impl: str) -> float:
        t = self.default
        for r in self.rules:  # the last matching rule wins, as in most config files
            if fnmatch.fnmatch(suite, r.suite) and fnmatch.fnmatch(op, r.op) and fnmatch.fnmatch(impl, r.impl):
                t = r.threshold
        return t


def load_thresholds(path: str | None, default: float | None) -> Thresholds:
    base = Thresholds() if default is None else Thresholds(default)
    if default is not None and not 0 < default < 10:
        raise UsageError("--threshold", f"{default} is not a fraction > 0", "e.g. --threshold 0.1 for 10 %")
    if not path:
        return base
    where = f"--thresholds {path}"
    try:
        raw = tomllib.loads(Path(path).read_text())
    except OSError as exc:
        raise UsageError(where, f"cannot read ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(where, f"malformed TOML: {exc}") from None
    rules = []
    for r in raw.get("rule", []):
        if not isinstance(r, dict) or not isinstance(r.get("threshold"), (int, float)) or \
                set(r) - {"threshold", "suite", "op", "impl"}:
            raise UsageError(where, f"rule {r!r}", "each [[rule]] has threshold and optional suite/op/impl globs")
        rules.append(Rule(float(r["threshold"]), r.get("suite", "*"), r.get("op", "*"), r.get("impl", "*")))
    return Thresholds(float(raw.get("default", base.default)), tuple(rules))


def ratio_ci(base: np.ndarray, new: np.ndarray, n_boot: int = 2000, conf: float = 0.95,
             seed: int = 0) -> tuple[float, float, float]:
    """Ratio of medians new/base and its bootstrap percentile interval (seeded: the same data, the same CI)."""
    rng = np.random.default_rng(seed)
    mb = np.median(rng.choice(base, (n_boot, base.size)), axis=1)
    mn = np.median(rng.choice(new, (n_boot, new.size)), axis=1)
    r = mn / mb
    a = (1 - conf) / 2
    return float(np.median(new) / np.median(base)), float(np.quantile(r, a)), float(np.quantile(r, 1 - a))


def classify(base: np.ndarray, new: np.ndarray, threshold: float) -> tuple[str, float, float, float]:
    if base.size < 3 or new.size < 3:
        ratio = float(np.median(new) / np.median(base))
        return "AMBIGUOUS", ratio, math.nan, math.nan
    ratio, lo, hi = ratio_ci(base, new)
    up, down = 1 + threshold, 1 / (1 + threshold)
    if lo > up:
        return "SLOWER", ratio, lo, hi
    if hi < down:
        return "FASTER", ratio, lo, hi
    if lo >= down and hi <= up:
        return "SAME", ratio, lo, hi
    return "AMBIGUOUS", ratio, lo, hi


def _samples(row: pd.Series, scale: float) -> np.ndarray:
    raw = row.get("latency_samples_ms")
    if not isinstance(raw, str) or not raw:
        return np.array([])
    return np.asarray(json.loads(raw), dtype=float) / scale


def _scale(meta: dict[str, Any], device: str, normalise: bool, where: str) -> float:
    if not normalise:
        return 1.0
    cal = meta.get("calibration", {}).get(device)
    if not cal:
        raise UsageError(where, f"has no calibration for {device}", "compare without --normalise")
    return math.sqrt(cal["copy_ms"] * cal["matmul_ms"])


def _label(r: pd.Series) -> str:
    parts = [f"{k}={r[k]}" for k in REPORT_AXES if k != "pass" and k not in SETTING_AXES
             if k in r and r[k] is not None and not (isinstance(r[k], float) and math.isnan(r[k]))]
    if isinstance(r.get("stages"), str) and r["stages"]:
        parts.append(f"stages={r['stages']}")
    return " ".join(parts)


def compare(base_path: str, new_path: str, thresholds: Thresholds, normalise: bool = False,
            cross_device: bool = False) -> pd.DataFrame:
    base, bmeta = load_run(base_path)
    new, nmeta = load_run(new_path)
    bc, nc = device_classes(base, bmeta), device_classes(new, nmeta)
    if bc != nc and not cross_device:
        raise UsageError("compare", f"device classes differ: BASE {sorted(bc)} vs NEW {sorted(nc)}",
                         "compare runs of the same device class, or pass --allow-cross-device")
    b = base.set_index("cell_id", drop=False)
    n = new.set_index("cell_id", drop=False)
    out = []
    for cid in list(dict.fromkeys([*b.index, *n.index])):
        rb = b.loc[cid] if cid in b.index else None
        rn = n.loc[cid] if cid in n.index else None
        r = rn if rn is not None else rb
        rec: dict[str, Any] = {"cell_id": cid, "suite": r["suite"], "op": r["op"], "impl": r["impl"],
                               "pass": r["pass"], "case": _label(r)}
        t = thresholds.for_row(r["suite"], r["op"], r["impl"])
        rec["threshold"] = t
        if rb is None or rn is None:
            rec["verdict"] = "ONLY_NEW" if rb is None else "ONLY_BASE"
        elif rb["status"] != "ok" or rn["status"] != "ok":
            rec["verdict"] = ("FAILED" if rb["status"] == "ok" else "FIXED" if rn["status"] == "ok"
                              else "NOT_RUN")
            rec["note"] = rn["reason"] if rn["status"] != "ok" else rb["reason"]
        elif _truthy(rb.get("agree")) and rn.get("agree") is not None and not _truthy(rn.get("agree")):
            rec["verdict"] = "WRONG"
            rec["note"] = f"err_max_rel {rn['err_max_rel']:.2e} > tol {rn['err_tol']:.1e}"
        elif rn.get("floor_verdict") == "implausible":  # faster than the hardware allows: not a speed-up
            rec["verdict"] = "IMPLAUSIBLE"
            rec["note"] = f"latency {rn.get('latency_over_floor', float('nan')):.2g} × the floor"
        else:
            sb = _samples(rb, _scale(bmeta, rb["device"], normalise, "BASE"))
            sn = _samples(rn, _scale(nmeta, rn["device"], normalise, "NEW"))
            if sb.size == 0 or sn.size == 0:
                rec["verdict"] = "NO_TIMING"
            else:
                rec["verdict"], rec["ratio"], rec["ci_lo"], rec["ci_hi"] = classify(sb, sn, t)
                rec["base_ms"], rec["new_ms"] = float(np.median(sb)), float(np.median(sn))
        changed = _code_changed(rb, rn)
        if changed:
            rec["note"] = "; ".join(filter(None, [rec.get("note"), changed]))
        out.append(rec)
    return pd.DataFrame(out)


def _code_changed(rb: pd.Series | None, rn: pd.Series | None) -> str | None:
    """A note when the two sides ran different code for this impl (its source closure's hash differs)."""
    if rb is None or rn is None:
        return None
    hb, hn = rb.get("impl_hash"), rn.get("impl_hash")
    if isinstance(hb, str) and isinstance(hn, str) and hb != hn:
        return f"code changed: impl_hash {hb} → {hn}"
    return None


def _truthy(v: Any) -> bool:
    return v in (True, "True", "true", 1)


def exit_code(df: pd.DataFrame, strict: bool) -> int:
    v = set(df["verdict"]) if not df.empty else set()
    if v & set(BAD):
        return 1
    if strict and "AMBIGUOUS" in v:
        return 3
    return 0


def markdown(df: pd.DataFrame, base: str, new: str, normalise: bool) -> str:
    counts = df["verdict"].value_counts().to_dict() if not df.empty else {}
    lines = [f"# upbench compare: `{base}` → `{new}`", "",
             f"Times {'normalised by each run’s calibration workload' if normalise else 'raw'}; ratio = new / base "
             "median with a 95 % bootstrap interval; verdict by the interval against the threshold.", "",
             "Summary: " + (", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "no rows"), ""]
    order = {"IMPLAUSIBLE": 0, "FAILED": 0, "WRONG": 1, "SLOWER": 2, "AMBIGUOUS": 3, "FASTER": 4, "FIXED": 5,
             "ONLY_BASE": 6, "ONLY_NEW": 7, "NO_TIMING": 8, "NOT_RUN": 9, "SAME": 10}
    d = df.assign(_o=df["verdict"].map(order)).sort_values("_o", kind="stable") if not df.empty else df
    rows = []
    for _, r in d.iterrows():
        ratio = "–" if pd.isna(r.get("ratio")) else f"{r['ratio']:.3f}"
        ci = "–" if pd.isna(r.get("ci_lo")) else f"[{r['ci_lo']:.3f}, {r['ci_hi']:.3f}]"
        note = r.get("note") if isinstance(r.get("note"), str) else ""
        rows.append([r["verdict"], r["op"], r["impl"], r["pass"], r["case"], ratio, ci, f"±{r['threshold']:.0%}",
                     note])
    lines.append(tabulate(rows, ["verdict", "op", "impl", "pass", "case", "ratio", "95 % CI", "threshold", "note"],
                          tablefmt="github", disable_numparse=True))
    return "\n".join(lines) + "\n"
