"""Every results column and every metric, declared once.

A :class:`Column` is a name (with its unit), a unit, the group that owns it and what it means. A
:class:`Metric` is a group of columns with how they are measured and on which devices. The runner iterates
:data:`METRICS` and refuses a key its metric did not declare; results.py orders columns by :data:`NAMES`;
docs/results.md is checked against :func:`markdown_table` by the tests — so the four cannot drift apart.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .axes import SETTING_AXES
from .axes import TABLE as AXIS_TABLE

if TYPE_CHECKING:
    from .prepare import Prepared
    from .sweeps import Cell
    from .timing import Stopping


@dataclass(frozen=True)
class Column:
    name: str
    unit: str
    group: str  # identity | status (filled by the runner) | the name of the metric that measures it
    description: str


COLUMNS: tuple[Column, ...] = (
    Column("suite", "", "identity", "suite name"),
    Column("cell_id", "", "identity", "stable hash of op, impl and every axis: the same on every machine and run"),
    Column("op", "", "identity", "operator name (entry point in `upbench.operators`)"),
    Column("impl", "", "identity", "implementation name"),
    *(Column(a.name, "", "identity", a.description) for a in AXIS_TABLE if a.name not in SETTING_AXES),
    Column("device_class", "", "identity", "what timings are comparable within: the GPU's name, or the CPU "
           "model and torch thread count, of the machine that ran the row"),
    *(Column(a.name, "", "identity", a.description) for a in AXIS_TABLE if a.name in SETTING_AXES),
    Column("hp", "", "identity", "operator hyperparameters as JSON"),
    Column("stages", "", "identity", "model suites: the stages run one after another, as CxHxW list"),
    Column("status", "", "status", "`ok`, `skipped`, `failed` or `oom`"),
    Column("reason", "", "status", "why a cell was skipped or failed (invalid, filtered, unsupported, the error)"),
    Column("impl_hash", "", "status", "hash of the impl's whole source closure: the operator's module, the impl's "
           "module and every kernel source it compiles, and the impl's name"),
    Column("torch_threads", "", "status", "torch.get_num_threads() while the cell ran"),
    Column("latency_median_ms", "ms", "latency", "median per-call time over the samples"),
    Column("latency_iqr_ms", "ms", "latency", "inter-quartile range of the per-call sample times"),
    Column("latency_min_ms", "ms", "latency", "fastest sample"),
    Column("latency_rel_iqr", "", "latency", "IQR / median"),
    Column("latency_n", "", "latency", "number of samples"),
    Column("latency_inner", "", "latency", "calls per sample (CPU: calibrated so a sample lasts ≥ 1 ms)"),
    Column("latency_stop", "", "latency", "why sampling stopped: `converged` (IQR/median under target), `budget`, "
           "`max_samples`"),
    Column("latency_noise", "", "latency", "`contended` if most CPU samples were preempted (their time is the "
           "machine's load), else `stable` if IQR/median ≤ the suite's target, else `noisy`"),
    Column("latency_mode", "", "latency", "`cpu`, `cuda-cold` (L2 flushed before each sample) or `cuda-warm`; "
           "`-graph` when timed as CUDA-graph replays"),
    Column("latency_samples_ms", "ms", "latency", "every per-call sample time, JSON list (for `compare`)"),
    Column("latency_norm", "", "latency", "latency_median_ms / this run's calibration score (geometric mean of "
           "a 4 MiB copy and a 512² matmul, ms): comparable across sibling machines"),
    # Contention and first-touch cost (CPU rows), instruction counts: docs/ci.md, "Busy machines".
    Column("latency_preempted", "", "latency", "CPU: samples discarded because the scheduler took the CPU away "
           "(an involuntary context switch and less CPU time than wall time × threads)"),
    Column("latency_cpu_over_wall", "", "latency", "CPU: median over samples of process CPU time / wall time "
           "(about the thread count when nothing else competes)"),
    Column("minor_faults_per_call", "", "latency", "CPU: minor page faults per call while sampling (a fresh "
           "large output is faulted in on every call)"),
    Column("thp_mem_alloc", "", "latency", "CPU: the THP_MEM_ALLOC_ENABLE setting of torch's allocator "
           "(`1`: 2 MiB-aligned blocks, far fewer faults) or `unset`"),
    Column("instructions_per_call", "", "instructions", "CPU: retired instructions per call (valgrind callgrind, "
           "median of samples): unchanged by load; `compare` gates on it when both sides have it"),
    Column("instructions_samples", "", "instructions", "CPU: instructions per call of every sample, JSON list"),
    Column("instructions_tool", "", "instructions", "what counted them (callgrind and its version)"),
    Column("instructions_reason", "", "instructions", "why instructions were not counted (valgrind missing, CUDA row, "
           "the impl failed under valgrind)"),
    Column("throttled", "", "latency", "CUDA: the GPU reported power/thermal clock events or violation time "
           "during the latency pass (NVML before and after); empty on the CPU"),
    Column("throttle_reasons", "", "latency", "which NVML clock-event reasons or violation counters fired"),
    Column("sm_clock_mhz", "MHz", "latency", "CUDA: SM clock after the latency pass"),
    Column("peak_mem_bytes", "B", "memory", "extra peak allocation over the live inputs, weights and (bwd) graph; "
           "its own pass; CPU from the profiler's allocator events, CUDA from requested_bytes.all.peak"),
    Column("ideal_bytes", "B", "memory", "bytes of what the call returns (output, or gradients): the footprint "
           "no impl can avoid"),
    Column("peak_over_ideal", "", "memory", "peak_mem_bytes / ideal_bytes"),
    Column("vm_hwm_delta_bytes", "B", "memory", "CPU cross-check: VmHWM after the call minus VmRSS before it "
           "(physical pages; roughly equals the allocator peak for large allocations)"),
    Column("params", "", "counts", "learned parameters of the module (model suites: summed over stages)"),
    Column("macs", "MAC", "counts", "analytic multiply-accumulates of the pass (docs/design.md §6); bwd = the "
           "operator's backward formula"),
    Column("flops", "FLOP", "counts", "2 × macs"),
    Column("min_bytes", "B", "counts", "bytes an ideal forward must move: inputs read once, output written once"),
    Column("gflops_per_s", "GFLOP/s", "roofline", "flops / median latency"),
    Column("gbytes_per_s", "GB/s", "roofline", "min_bytes / median latency (forward passes only)"),
    Column("pct_compute_roof", "%", "roofline", "gflops_per_s / the device's probed matmul GFLOP/s for this dtype"),
    Column("pct_bw_roof", "%", "roofline", "gbytes_per_s / the device's probed copy bandwidth"),
    Column("roof_key", "", "roofline", "which ceilings the roof shares used: machine, device, torch, dtype "
           "(`not kept: …` when they were probed under load for this run only)"),
    Column("roof_probed_at", "", "roofline", "when those ceilings were probed (UTC); a row above 100 % of a roof "
           "makes upbench probe again before it is reported"),
    Column("bitwise_repeatable", "", "determinism", "two runs of the call gave bit-identical results (outputs or "
           "gradients): the determinism metric"),
    Column("err_max_abs", "", "accuracy", "max |impl − float64 reference| (bwd: over every gradient)"),
    Column("err_rel_rms", "", "accuracy", "RMS(error) / RMS(reference)"),
    Column("err_max_rel", "", "accuracy", "max |error| / RMS(reference): the number compared with the tolerance"),
    Column("err_border_max_rel", "", "accuracy", "err_max_rel over border pixels (window reaches past the map)"),
    Column("err_interior_max_rel", "", "accuracy", "err_max_rel over interior pixels"),
    Column("err_tol", "", "accuracy", "the operator's tolerance for this dtype"),
    Column("agree", "", "accuracy", "err_max_rel ≤ err_tol"),
    Column("agree_worst_input", "", "accuracy", "the input that gave the worst agreement: `normal` (the case's "
           "own), or `seed2`, `uniform`, `heavy` (Student t, 3 dof), `large` (×10 in fp32) or `constant`, run at a "
           "reduced shape `@HxW` (H, W ≤ K + 4) when the case is larger"),
    Column("agree_failed_inputs", "", "accuracy", "every input (same names as agree_worst_input) whose agreement "
           "missed the tolerance, comma-separated; empty when all agreed"),
    Column("property_check", "", "accuracy", "the operator's declared properties on a constant input (forward "
           "passes): `ok`, `failed: …` with what failed, empty when it declares none"),
    Column("agree_expected", "", "status", "the suite's `[[expect]]` reason when this row's disagreement is "
           "declared expected (such a row does not make the run exit 1)"),
    # -- trust checks (issue 13: adversarial.py, properties.py, floor.py, cuda_checks.py, trust.py) ---------------
    Column("floor_ms", "ms", "floor", "speed of light: max(flops / matmul ceiling, min_bytes / copy ceiling); "
           "the bytes term in forward passes only"),
    Column("latency_over_floor", "", "floor", "latency_median_ms / floor_ms; below 1 is impossible"),
    Column("floor_verdict", "", "floor", "`implausible` when latency × (1 + 2·IQR/median) < floor × 0.75 "
           "(beyond noise and ceiling slack), else `ok`"),
    Column("timing_check", "", "timing_check", "CUDA: the same calls timed by CUDA events on a side stream and by "
           "device-wide sync + host clock: `ok`, `escaped-stream` (work the events missed) or `host-sync` (the "
           "call waited for the GPU); empty on the CPU"),
    Column("backend", "", "backend", "what actually ran, for an impl that can fall back (its callable's "
           "`upbench_backend`); empty when the impl does not say"),
    Column("energy_j_per_call", "J", "energy", "CUDA, metric `energy`: NVML total-energy counter over ≥ 1 s of "
           "repeated calls, divided by the calls (device-wide: idle power included)"),
    Column("energy_window_s", "s", "energy", "length of the energy window"),
    Column("energy_calls", "", "energy", "calls in the energy window"),
    Column("power_limit_w", "W", "energy", "NVML enforced power limit during the energy window"),
    Column("energy_sm_clock_mhz", "MHz", "energy", "SM clock at the end of the energy window"),
    Column("energy_mem_clock_mhz", "MHz", "energy", "memory clock at the end of the energy window"),
    Column("clocks_locked", "", "energy", "clocks pinned by an application- or locked-clock setting"),
    Column("energy_reason", "", "energy", "why energy is absent (the CPU, no NVML, no counter)"),
    Column("trust", "", "trust", "`ok`, or the failed checks: `modified-input`, `wrong` / `wrong@<input>`, "
           "`property`, `implausible`, `escaped-stream`, `host-sync` (the report adds `speed-up` flags)"),
)

NAMES: tuple[str, ...] = tuple(c.name for c in COLUMNS)
RUNNER_GROUPS = ("identity", "status")


@dataclass(frozen=True)
class Options:
    """What a run measures, the same for every cell: picklable, so Ray tasks receive it whole."""

    suite: str
    metrics: frozenset[str]
    stopping: Stopping
    calibration: dict[str, float] | None = None  # this run's calibrate() result, with "score_ms"
    # instruction columns per cell id, counted by the engine under valgrind before the cell loop
    instructions: dict[str, dict[str, Any]] | None = None


@dataclass
class Context:
    """What a metric's ``measure`` sees: the cell, the run's options, the row so far, the prepared cell."""

    cell: Cell
    options: Options
    row: dict[str, Any]
    prepared: Prepared | None = None


@dataclass(frozen=True)
class Metric:
    """One metric: its columns (those whose group is ``name``), how it is measured, where it applies.

    ``selectable`` metrics are named in a suite's ``metrics`` (``opt_in`` ones are left out of a suite that
    names none); the others always run when they apply. ``needs_run`` metrics run only on a cell that runs
    (after :func:`upbench.prepare.prepare`). ``after_status`` metrics run last, on a row whose status is
    known (ok, failed or oom; never a skipped one), and read only the row.
    """

    name: str
    how: str
    measure: Callable[[Context], dict[str, Any]]
    selectable: bool = True
    needs_run: bool = True
    devices: tuple[str, ...] = ("cpu", "cuda")
    requires: tuple[str, ...] = field(default=())  # keys of the row that must be present
    opt_in: bool = False  # a selectable metric run only when a suite names it (not by default)
    after_status: bool = False

    @property
    def columns(self) -> tuple[Column, ...]:
        return tuple(c for c in COLUMNS if c.group == self.name)

    def applies(self, ctx: Context) -> bool:
        return ((not self.selectable or self.name in ctx.options.metrics)
                and ctx.cell.case.device in self.devices
                and all(ctx.row.get(k) for k in self.requires))


# -- how each metric is measured ------------------------------------------------------------------------------
def _counts(ctx: Context) -> dict[str, Any]:
    from . import registry

    op, stages, pass_ = registry.get(ctx.cell.op), ctx.cell.stages, ctx.cell.case.pass_
    fwd = sum(op.macs(c) for c in stages)
    bwd = sum(op.bwd_macs(c) for c in stages)
    macs = {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd + bwd}[pass_]
    return {"params": sum(op.params(c) for c in stages), "macs": macs, "flops": 2 * macs,
            "min_bytes": sum(op.min_bytes(c) for c in stages)}


def _accuracy(ctx: Context) -> dict[str, Any]:
    from .adversarial import checked_agreement_of

    # the trust checks around the comparison (adversarial.py): inputs untouched (else ModifiedInput fails the
    # cell), poisoned free memory, several input distributions (the worst counts), properties on a constant
    chk = checked_agreement_of(ctx.prepared)
    a = chk.agreement
    return {"err_max_abs": a.max_abs, "err_rel_rms": a.rel_rms, "err_max_rel": a.max_rel,
            "err_border_max_rel": a.border_max_rel, "err_interior_max_rel": a.interior_max_rel,
            "err_tol": a.tol, "agree": a.ok, **chk.columns()}


def _latency(ctx: Context) -> dict[str, Any]:
    from . import timing
    from ._nvml import throttle_events, throttle_snapshot

    device, st = ctx.cell.case.device, ctx.options.stopping
    fn = ctx.prepared.fn
    before = throttle_snapshot(device)
    lat = timing.time_fn(fn, device, st)
    out = throttle_events(before, throttle_snapshot(device))
    out.update(latency_median_ms=lat.median * 1e3, latency_iqr_ms=lat.iqr * 1e3, latency_min_ms=lat.min * 1e3,
               latency_rel_iqr=lat.rel_iqr, latency_n=len(lat.samples), latency_inner=lat.inner,
               latency_stop=lat.stop, latency_noise=lat.verdict(st.target_rel_iqr), latency_mode=lat.mode,
               latency_samples_ms=json.dumps([round(s * 1e3, 6) for s in lat.samples]))
    out.update(timing.contention_columns(lat, device))
    if ctx.options.calibration:
        out["latency_norm"] = out["latency_median_ms"] / ctx.options.calibration["score_ms"]
    return out


def _timing_check(ctx: Context) -> dict[str, Any]:
    from .cuda_checks import cuda_trust_columns

    return cuda_trust_columns(ctx.prepared.fn)


def _energy(ctx: Context) -> dict[str, Any]:
    from .cuda_checks import measure_energy

    return measure_energy(ctx.prepared.fn, ctx.cell.case.device)


def _memory(ctx: Context) -> dict[str, Any]:
    from . import memory

    fn, device = ctx.prepared.fn, ctx.cell.case.device
    out: dict[str, Any] = {"ideal_bytes": memory.result_bytes(fn())}  # also the warm call
    out["peak_mem_bytes"] = memory.peak(fn, device)
    out["peak_over_ideal"] = out["peak_mem_bytes"] / out["ideal_bytes"] if out["ideal_bytes"] else None
    if device == "cpu":
        out["vm_hwm_delta_bytes"] = memory.hwm_delta_cpu(fn)
    return out


def _determinism(ctx: Context) -> dict[str, Any]:
    from .accuracy import same_bits

    fn = ctx.prepared.fn
    return {"bitwise_repeatable": same_bits(fn(), fn())}


def _roofline(ctx: Context) -> dict[str, Any]:
    from .ceilings import roof_columns

    case = ctx.cell.case
    return roof_columns(ctx.row, case.device, case.dtype, case.pass_)  # re-probes above 100 % of a roof


def _instructions(ctx: Context) -> dict[str, Any]:
    # Counted for every cell of the run in one valgrind child before the cell loop (upbench.instructions);
    # this metric only files the cell's counts (or the reason there are none) under its declaration.
    counted = ctx.options.instructions or {}
    return counted.get(ctx.cell.id, {"instructions_reason": "not counted"})


def _backend(ctx: Context) -> dict[str, Any]:
    from .cuda_checks import backend_of

    b = backend_of(ctx.prepared.stages[0].fn)  # after the calls: a fallback is chosen on the first
    return {"backend": b} if b else {}


def _floor(ctx: Context) -> dict[str, Any]:
    from .ceilings import ceilings
    from .floor import floor_columns

    return floor_columns(ctx.row, ceilings(ctx.cell.case.device, ctx.cell.case.dtype))


def _trust(ctx: Context) -> dict[str, Any]:
    from .trust import trust

    t = trust(ctx.row)
    return {"trust": t} if t is not None else {}


# In the order they run: counts for every row (skipped ones too); agreement before the callable is built;
# each measured metric in its own pass; the backend once every call has run; the roofline and the
# speed-of-light floor from what latency and counts left in the row; the instruction counts (taken before the
# cell loop) filed next, so a cell that fails a metric does not get them; trust last, from the finished row.
METRICS: tuple[Metric, ...] = (
    Metric("counts", "the operator's analytic formulas, summed over stages", _counts, selectable=False,
           needs_run=False),
    Metric("accuracy", "impl vs the float64 reference on the same inputs and weights, then on extra input "
           "distributions at a reduced shape, inputs checked untouched and free memory poisoned; declared "
           "properties on a constant input", _accuracy),
    Metric("latency", "median of timed samples (the stopping rule above); NVML throttle events on CUDA", _latency),
    Metric("timing_check", "the same calls timed by CUDA events on a side stream and by device-wide sync; a call "
           "queued behind a spin kernel", _timing_check, selectable=False, devices=("cuda",),
           requires=("latency_median_ms",)),
    Metric("energy", "NVML's energy counter over ≥ 1 s of repeated calls (opt-in: name it in a suite)", _energy,
           opt_in=True),
    Metric("memory", "the allocator's peak, in its own pass", _memory),
    Metric("determinism", "two calls compared bit for bit", _determinism),
    Metric("backend", "the impl's callable's `upbench_backend`, read after every call", _backend,
           selectable=False),
    Metric("roofline", "counts / median latency over the device's probed ceilings", _roofline,
           selectable=False, requires=("latency_median_ms",)),
    Metric("floor", "max(flops / matmul ceiling, min_bytes / copy ceiling) against the median latency", _floor,
           selectable=False, requires=("latency_median_ms",)),
    Metric("instructions", "valgrind callgrind: retired instructions per call, every runnable CPU cell counted "
           "in one child process before the cell loop", _instructions, opt_in=True),
    Metric("trust", "the failed checks of the finished row (status, agreement, properties, floor, timing)",
           _trust, selectable=False, needs_run=False, after_status=True),
)
SELECTABLE: tuple[str, ...] = tuple(m.name for m in METRICS if m.selectable)
DEFAULT: tuple[str, ...] = tuple(m.name for m in METRICS if m.selectable and not m.opt_in)


def metric(name: str) -> Metric:
    """The declaration of metric ``name`` (for callers outside the runner: the pytest-benchmark plugin)."""
    return next(m for m in METRICS if m.name == name)


def markdown_table() -> str:
    """The column reference of docs/results.md (kept equal to it by a test)."""
    lines = ["| column | unit | group | meaning |", "|---|---|---|---|"]
    lines += [f"| `{c.name}` | {c.unit or '–'} | {c.group} | {c.description} |" for c in COLUMNS]
    return "\n".join(lines)


def metrics_table() -> str:
    """The metric reference of docs/results.md: each declared metric, when it runs, how it is measured."""
    lines = ["| metric | runs | devices | how | columns |", "|---|---|---|---|---|"]
    for m in METRICS:
        runs = ("when the suite lists it" + (" (not by default)" if m.opt_in else "") if m.selectable
                else "last, on every row that ran" if m.after_status
                else "always" if not m.requires else "after latency")
        cols = ", ".join(f"`{c.name}`" for c in m.columns)
        lines.append(f"| {m.name} | {runs} | {', '.join(m.devices)} | {m.how} | {cols} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(metrics_table() + "\n\n" + markdown_table())
