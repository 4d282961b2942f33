"""``upbench compare BASE NEW``: a regression gate that catches a real slowdown and stays quiet on noise.

Rows are matched by cell id (op × impl × every axis × pass). A pair where both sides counted retired
instructions (``instructions_per_call``, CPU rows of a suite with the ``instructions`` metric) is judged on
them, with their own, tighter threshold: they do not move with the machine's load. Otherwise a seeded
bootstrap of the latency samples gives a 95 % confidence interval of the ratio of medians new/base, and the
verdict compares the whole interval with the minimum effect size t. :data:`VERDICTS` lists every verdict with
its meaning and whether it fails the gate; docs/ci.md prints the same table (a test keeps them equal).
Exit: 0 nothing bad; 1 a bad verdict; 3 only AMBIGUOUS rows stand in the way under ``--strict``; 2 usage or
input error — including two runs that share no cell or come from different suites (a gate that compared
nothing must not pass).
IMPLAUSIBLE: NEW ran faster than its speed-of-light floor (``floor_verdict``); never reported as FASTER.
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


@dataclass(frozen=True)
class Verdict:
    meaning: str
    fails: bool  # exit 1 in a gate
    order: int  # position in the report: what needs attention first


# One place for every verdict: compare() assigns them, exit_code() and markdown() read them, docs/ci.md
# prints them. A new verdict is one line here (and its assignment in _judge).
VERDICTS: dict[str, Verdict] = {
    "FAILED": Verdict("the cell ran in BASE and fails (or runs out of memory) in NEW", True, 0),
    "WRONG": Verdict("agreed with the float64 reference in BASE, not in NEW", True, 1),
    "IMPLAUSIBLE": Verdict("NEW ran below its speed-of-light floor (`floor_verdict`): a measurement or "
                           "counting error, never a speed-up", True, 1),
    "SLOWER": Verdict("the interval lies above 1 + t", True, 2),
    "AMBIGUOUS": Verdict("the interval straddles a bound (too noisy to tell), or a side's timing was contended "
                         "(most samples preempted by other processes); the note says which", False, 3),
    "FASTER": Verdict("the interval lies below 1 / (1 + t)", False, 4),
    "FIXED": Verdict("fails in BASE, runs in NEW", False, 5),
    "ONLY_BASE": Verdict("a row in BASE only: listed, never dropped", False, 6),
    "ONLY_NEW": Verdict("a row in NEW only: listed, never dropped", False, 7),
    "NO_TIMING": Verdict("both sides ran but one has no latency samples or instruction counts (a suite "
                         "without the latency metric)", False, 8),
    "NOT_RUN": Verdict("skipped, failed or out of memory on both sides: nothing to compare", False, 9),
    "SAME": Verdict("the interval lies inside [1 / (1 + t), 1 + t]", False, 10),
}
BAD = tuple(k for k, v in VERDICTS.items() if v.fails)
INSTR_THRESHOLD = 0.02  # instruction counts vary by ~0.1 % between runs: 2 % catches a 5 % change
MAX_CAL_SPREAD = 0.25  # --normalise falls back to raw times when a calibration spread is above this


def verdict_table() -> str:
    """The verdict table of docs/ci.md."""
    lines = ["| verdict | meaning | exit |", "|---|---|---|"]
    for name, v in sorted(VERDICTS.items(), key=lambda kv: kv[1].order):
        code = "1" if v.fails else ("0, or 3 with `--strict`" if name == "AMBIGUOUS" else "0")
        lines.append(f"| {name} | {v.meaning} | {code} |")
    return "\n".join(lines)


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


def calibration_spread_problem(metas: dict[str, dict[str, Any]]) -> str | None:
    """Why --normalise cannot be trusted for these runs (a calibration whose own spread is too high), or None."""
    for side, meta in metas.items():
        for device, cal in (meta.get("calibration") or {}).items():
            if cal.get("busy"):  # steady contention slows every probe alike: a low spread does not clear it
                return f"{side}'s {device} calibration ran on a busy machine ({cal['busy']})"
            for key in ("copy_rel_iqr", "matmul_rel_iqr", "copy_spread", "matmul_spread"):
                spread = cal.get(key)
                if isinstance(spread, (int, float)) and not spread <= MAX_CAL_SPREAD:
                    return (f"{side}'s {device} calibration {key} {spread:.2f} > {MAX_CAL_SPREAD}"
                            f" ({cal.get('busy') or 'the machine was busy while it was probed'})")
    return None


def _instr(row: pd.Series) -> np.ndarray:
    raw = row.get("instructions_samples")
    if not isinstance(raw, str) or not raw:
        return np.array([])
    return np.asarray(json.loads(raw), dtype=float)


def _contended(row: pd.Series) -> bool:
    return row.get("latency_noise") == "contended"


def _label(r: pd.Series) -> str:
    def plain(v: Any) -> Any:  # axis values read back from JSON/CSV may be floats: K=5, not K=5.0
        return int(v) if isinstance(v, float) and v.is_integer() else v

    parts = [f"{k}={plain(r[k])}" for k in REPORT_AXES if k != "pass" and k not in SETTING_AXES
             if k in r and r[k] is not None and not (isinstance(r[k], float) and math.isnan(r[k]))]
    if isinstance(r.get("stages"), str) and r["stages"]:
        parts.append(f"stages={r['stages']}")
    return " ".join(parts)


def compare(base_path: str, new_path: str, thresholds: Thresholds, normalise: bool = False,
            cross_device: bool = False, instr_threshold: float = INSTR_THRESHOLD,
            allow_disjoint: bool = False) -> pd.DataFrame:
    """One row per cell id of either side. ``df.attrs["notes"]``: lines the summary must show (a fallback)."""
    base, bmeta = load_run(base_path)
    new, nmeta = load_run(new_path)
    bc, nc = device_classes(base, bmeta), device_classes(new, nmeta)
    if bc != nc and not cross_device:
        raise UsageError("compare", f"device classes differ: BASE {sorted(bc)} vs NEW {sorted(nc)}",
                         "compare runs of the same device class, or pass --allow-cross-device")
    if not allow_disjoint:
        _check_comparable(base, new, bmeta, nmeta)
    notes = []
    if normalise:
        why = calibration_spread_problem({"BASE": bmeta, "NEW": nmeta})
        if why:
            notes.append(f"--normalise ignored, raw times compared: {why}")
            normalise = False
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
        else:
            rec.update(_judge(rb, rn, t, instr_threshold,
                              lambda row, meta: _samples(row, _scale(meta, row["device"], normalise,
                                                                     "BASE" if meta is bmeta else "NEW")),
                              bmeta, nmeta))
        changed = _code_changed(rb, rn)
        if changed:
            rec["note"] = "; ".join(filter(None, [rec.get("note"), changed]))
        out.append(rec)
    df = pd.DataFrame(out)
    df.attrs["notes"] = notes
    df.attrs["normalised"] = normalise  # False after a fallback: the summary must not claim otherwise
    return df


def _check_comparable(base: pd.DataFrame, new: pd.DataFrame, bmeta: dict[str, Any], nmeta: dict[str, Any]) -> None:
    """A gate that compared nothing must not pass: different suites, or no cell in common, is a usage error."""
    suites = [sorted(set(df["suite"].dropna())) for df in (base, new)]
    if suites[0] != suites[1]:
        raise UsageError("compare", f"different suites: BASE {', '.join(suites[0]) or '?'} vs NEW "
                         f"{', '.join(suites[1]) or '?'}", "compare runs of one suite, or pass --allow-disjoint")
    if not set(base["cell_id"]) & set(new["cell_id"]):
        raise UsageError("compare", "BASE and NEW share no cell (different axes, operators or impls)",
                         "compare runs of the same sweep, or pass --allow-disjoint")


def _judge(rb: pd.Series, rn: pd.Series, t: float, instr_t: float,
           samples: Any, bmeta: dict[str, Any], nmeta: dict[str, Any]) -> dict[str, Any]:
    """The verdict of one matched pair (and ratio, interval, note); the order of the checks is the policy."""
    if rb["status"] != "ok" or rn["status"] != "ok":
        return {"verdict": "FAILED" if rb["status"] == "ok" else "FIXED" if rn["status"] == "ok" else "NOT_RUN",
                "note": rn["reason"] if rn["status"] != "ok" else rb["reason"]}
    if _truthy(rb.get("agree")) and rn.get("agree") is not None and not _truthy(rn.get("agree")):
        return {"verdict": "WRONG", "note": f"err_max_rel {rn['err_max_rel']:.2e} > tol {rn['err_tol']:.1e}"}
    if rn.get("floor_verdict") == "implausible":  # faster than the hardware allows: not a speed-up
        return {"verdict": "IMPLAUSIBLE", "note": f"latency {rn.get('latency_over_floor', float('nan')):.2g} × "
                "the floor"}
    ib, inew = _instr(rb), _instr(rn)
    if ib.size and inew.size:  # retired instructions: load cannot move them
        v, ratio, lo, hi = classify(ib, inew, instr_t)
        return {"verdict": v, "ratio": ratio, "ci_lo": lo, "ci_hi": hi, "metric": "instructions",
                "threshold": instr_t, "base_ms": math.nan, "new_ms": math.nan}
    sb, sn = samples(rb, bmeta), samples(rn, nmeta)
    if sb.size == 0 or sn.size == 0:
        return {"verdict": "NO_TIMING"}
    v, ratio, lo, hi = classify(sb, sn, t)
    rec = {"verdict": v, "ratio": ratio, "ci_lo": lo, "ci_hi": hi, "metric": "time",
           "base_ms": float(np.median(sb)), "new_ms": float(np.median(sn))}
    contended = [side for side, r in (("BASE", rb), ("NEW", rn)) if _contended(r)]
    if contended and v in ("SLOWER", "FASTER"):
        rec["verdict"] = "AMBIGUOUS"
        rec["note"] = (f"would be {v}, but {' and '.join(contended)} timing was contended (most samples "
                       "preempted): re-run on a quiet machine or count instructions")
    return rec


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
    normalise = df.attrs.get("normalised", normalise)
    lines = [f"# upbench compare: `{base}` → `{new}`", "",
             f"Times {'normalised by each run’s calibration workload' if normalise else 'raw'}; ratio = new / base "
             "median with a 95 % bootstrap interval; verdict by the interval against the threshold.", "",
             "Summary: " + (", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "no rows"), ""]
    if "metric" in df and (df["metric"] == "instructions").any():
        lines[2:2] = ["Rows whose metric is `instructions` compare retired instructions per call (valgrind), "
                      "not time.", ""]
    lines += [f"Note: {n}" for n in df.attrs.get("notes", [])] + ([""] if df.attrs.get("notes") else [])
    order = {k: v.order for k, v in VERDICTS.items()}
    d = df.assign(_o=df["verdict"].map(order)).sort_values("_o", kind="stable") if not df.empty else df
    rows = []
    for _, r in d.iterrows():
        ratio = "–" if pd.isna(r.get("ratio")) else f"{r['ratio']:.3f}"
        ci = "–" if pd.isna(r.get("ci_lo")) else f"[{r['ci_lo']:.3f}, {r['ci_hi']:.3f}]"
        note = r.get("note") if isinstance(r.get("note"), str) else ""
        metric = r.get("metric") if isinstance(r.get("metric"), str) else "–"
        rows.append([r["verdict"], r["op"], r["impl"], r["pass"], r["case"], metric, ratio, ci,
                     f"±{r['threshold']:.0%}", note])
    lines.append(tabulate(rows, ["verdict", "op", "impl", "pass", "case", "metric", "ratio", "95 % CI", "threshold",
                                 "note"],
                          tablefmt="github", disable_numparse=True))
    return "\n".join(lines) + "\n"
