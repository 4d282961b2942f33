"""Report figures (matplotlib, Agg backend, PNG): latency against output pixels, peak memory against
resolution and against K, a roofline chart, and a model suite's overhead per operator.

Every figure labels its axes with units and puts the legend outside the data; each function returns the
file it wrote, or None when the data cannot make that figure (e.g. one resolution only).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator  # noqa: E402

from .scaling import out_pixels  # noqa: E402

MiB = 2**20


def _style(i: int) -> dict[str, Any]:
    """The i-th series' colour and marker: 20 distinct colours (tab20, dark shades first), then new markers."""
    cmap = plt.get_cmap("tab20")
    return {"color": cmap((2 * i) % 20 + (i // 10) % 2), "marker": "osD^v<>Ph*"[(i // 20) % 10]}


def _series_label(r: pd.Series | tuple, multi_run: bool) -> str:
    return f"{r[0]} / {r[1]}" + (f" ({r[2]})" if multi_run else "")


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _fixed_slice(d: pd.DataFrame, free: str) -> tuple[pd.DataFrame, str]:
    """Hold every other axis at its most common value (ties: the largest) so one plot compares like with
    like; returns the slice and a caption of what was held."""
    held = []
    for c in ("C", "K", "dtype", "B", "s", "Cy"):
        if c != free and c in d and d[c].notna().any() and d[c].nunique() > 1:
            counts = d[c].value_counts()
            mode = max(counts[counts == counts.max()].index, key=lambda v: (isinstance(v, (int, float)), v))
            d = d[(d[c] == mode) | d[c].isna()]
            held.append(f"{c}={_plain(mode)}")
    return d, ", ".join(held)


def _plain(v: object) -> str:
    return str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)


def _lines(d: pd.DataFrame, x: pd.Series, y: pd.Series, xlabel: str, ylabel: str, title: str, path: Path,
           logx: bool = True, logy: bool = True) -> Path | None:
    d = d.assign(_x=x, _y=y).dropna(subset=["_x", "_y"])
    groups = list(d.groupby(["op", "impl", "run"], sort=False))
    if not groups or d["_x"].nunique() < 2:
        return None
    multi_run = d["run"].nunique() > 1
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for i, (key, g) in enumerate(groups):  # every series its own colour: the default cycle repeats after 10
        g = g.sort_values("_x")
        ax.plot(g["_x"], g["_y"], label=_series_label(key, multi_run), **_style(i))
    ax.set_xscale("log" if logx else "linear")
    ax.set_yscale("log" if logy else "linear")
    if logy:  # ticks at 1, 2, 5 × 10ⁿ written plainly: readable without decoding exponents
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    if not logx:
        ax.set_xticks(sorted(d["_x"].unique()))
    else:
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize="small", frameon=False)
    return _save(fig, path)


def _title(text: str, held: str) -> str:
    return f"{text}\n({held})" if held else text


def latency_vs_pixels(ok: pd.DataFrame, path: Path) -> Path | None:
    d, held = _fixed_slice(ok[ok["pass"] == "fwd"], "H")
    return _lines(d, out_pixels(d), pd.to_numeric(d["latency_median_ms"], errors="coerce"),
                  "output pixels B·sH·sW", "latency, ms (median)",
                  _title("Forward latency against output size", held), path)


def memory_vs_resolution(ok: pd.DataFrame, path: Path) -> Path | None:
    d, held = _fixed_slice(ok[ok["pass"] == "fwd"], "H")
    return _lines(d, pd.to_numeric(d["H"], errors="coerce"), pd.to_numeric(d["peak_mem_bytes"], errors="coerce") / MiB,
                  "low-res size H (W = H unless swept)", "peak memory, MiB",
                  _title("Peak memory against resolution", held), path, logx=True)


def memory_vs_K(ok: pd.DataFrame, path: Path) -> Path | None:
    d = ok[(ok["pass"] == "fwd") & ok["K"].notna()]
    if d.empty:
        return None
    d, held = _fixed_slice(d, "K")
    h = pd.to_numeric(d["H"], errors="coerce")
    d = d[h == h.max()]
    held = ", ".join(filter(None, [held, f"H={_plain(h.max())}"]))
    return _lines(d, pd.to_numeric(d["K"], errors="coerce"), pd.to_numeric(d["peak_mem_bytes"], errors="coerce") / MiB,
                  "kernel size K", "peak memory, MiB", _title("Peak memory against kernel size", held), path,
                  logx=False, logy=True)


def roofline(ok: pd.DataFrame, ceilings: dict[str, dict[str, float]], path: Path) -> Path | None:
    d = ok[(ok["pass"] == "fwd")].copy()
    d["_ai"] = pd.to_numeric(d["flops"], errors="coerce") / pd.to_numeric(d["min_bytes"], errors="coerce")
    d["_perf"] = pd.to_numeric(d.get("gflops_per_s"), errors="coerce")
    d = d[(d["_ai"] > 0) & (d["_perf"] > 0)]
    if d.empty or not ceilings:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    lo, hi = d["_ai"].min() / 4, d["_ai"].max() * 4
    for name, c in ceilings.items():
        bw, peak = c["copy_GBps"], c["matmul_GFLOPs"]
        xs = [lo, peak / bw, hi]
        ax.plot(xs, [min(peak, x * bw) for x in xs], linestyle="--", color="grey")
        ax.annotate(f"{name}: {bw:.0f} GB/s, {peak:.0f} GFLOP/s", (hi, peak), ha="right", va="bottom",
                    fontsize="x-small", color="grey")
    multi_run = d["run"].nunique() > 1
    # colour = operator, marker = impl within it: 13 operators × 4 impls must stay tellable apart
    ops = list(dict.fromkeys(d["op"]))
    cmap = plt.get_cmap("tab20")
    markers = "osD^v<>Ph*"
    for key, g in d.groupby(["op", "impl", "run"], sort=False):
        impls = list(dict.fromkeys(d.loc[d["op"] == key[0], "impl"]))
        ax.scatter(g["_ai"], g["_perf"], label=_series_label(key, multi_run), s=22,
                   color=cmap(ops.index(key[0]) % 20), marker=markers[impls.index(key[1]) % len(markers)])
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity, FLOP per minimal byte")
    ax.set_ylabel("achieved GFLOP/s")
    ax.set_title("Roofline (forward passes; roofs probed on the device)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize="small", frameon=False)
    return _save(fig, path)


def model_overhead(ok: pd.DataFrame, path: Path) -> Path | None:
    d = ok[ok["pass"] == "fwd"].drop_duplicates(["op", "impl", "run"])
    if d.empty:
        return None
    labels = [f"{r.op}\n{r.impl}" for r in d.itertuples()]
    fig, axes = plt.subplots(1, 3, figsize=(12, 4))
    for ax, col, scale, title in ((axes[0], "params", 1e6, "+params, M"), (axes[1], "macs", 1e9, "+GMACs"),
                                  (axes[2], "latency_median_ms", 1.0, "latency of all stages, ms")):
        ax.bar(range(len(d)), pd.to_numeric(d[col], errors="coerce").fillna(0) / scale)
        ax.set_xticks(range(len(d)), labels, rotation=60, ha="right", fontsize="x-small")
        ax.set_title(title)
        ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)
