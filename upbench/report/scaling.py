"""Scaling diagnostics: the log-log slope of latency against output pixels, per impl.

A slope near 1 is linear scaling; well above 1 means the impl gets worse per pixel as the map grows
(cache spills, quadratic work); near 0 over the smallest sizes means launch- or overhead-bound: the time is
not the operator's work. Fitted per (op, impl) on the forward rows where only the resolution varies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..axes import REPORT_AXES, SIZE_AXES

FIXED = ("run", *(a for a in REPORT_AXES if a not in SIZE_AXES), "hp")


@dataclass(frozen=True)
class Fit:
    op: str
    impl: str
    group: str
    points: int
    slope: float
    small_slope: float  # between the two smallest sizes
    verdict: str
    unsteady: int = 0  # points whose timing was noisy or contended


def out_pixels(df: pd.DataFrame) -> pd.Series:
    h = pd.to_numeric(df["H"], errors="coerce")
    w = pd.to_numeric(df["W"], errors="coerce").fillna(h)
    s = pd.to_numeric(df["s"], errors="coerce")
    return pd.to_numeric(df["B"], errors="coerce") * h * w * s * s


def fits(ok: pd.DataFrame) -> list[Fit]:
    out = []
    d = ok[(ok["pass"] == "fwd") & ok["stages"].isna()].copy() if "stages" in ok else ok[ok["pass"] == "fwd"].copy()
    d["_px"] = out_pixels(d)
    d["_t"] = pd.to_numeric(d["latency_median_ms"], errors="coerce")
    d = d.dropna(subset=["_px", "_t"])
    keys = [c for c in FIXED if c in d]
    for (op, impl), g in d.groupby(["op", "impl"], sort=False):
        shown = [k for k in keys if g[k].astype(str).nunique() > 1]  # only what tells the groups apart
        for gk, sub in g.groupby(keys, dropna=False, sort=False):
            sub = sub.sort_values("_px").drop_duplicates("_px")
            if len(sub) < 3:
                continue
            x, y = np.log(sub["_px"].to_numpy(float)), np.log(sub["_t"].to_numpy(float))
            slope = float(np.polyfit(x, y, 1)[0])
            small = float((y[1] - y[0]) / (x[1] - x[0]))
            vals = dict(zip(keys, gk if isinstance(gk, tuple) else (gk,), strict=True))
            label = " ".join(f"{k}={_plain(vals[k])}" for k in shown) or "–"
            unsteady = int(sub["latency_noise"].isin(["noisy", "contended"]).sum()) if "latency_noise" in sub else 0
            verdict = _verdict(slope, small)
            if unsteady * 2 > len(sub):  # a firm diagnosis from mostly noisy points would be invented
                verdict = f"no diagnosis: {unsteady} of {len(sub)} points noisy or contended"
            elif unsteady:
                verdict += f" (tentative: {unsteady} of {len(sub)} points noisy or contended)"
            out.append(Fit(op, impl, label, len(sub), slope, small, verdict, unsteady))
    return out


def _plain(v: object) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)


def _verdict(slope: float, small: float) -> str:
    notes = []
    if small < 0.3:
        notes.append("launch/overhead-bound at small sizes")
    if slope > 1.25:
        notes.append("super-linear: worse per pixel as the map grows")
    elif slope < 0.75:
        notes.append("sub-linear: fixed costs dominate the range")
    return "; ".join(notes) or "linear"
