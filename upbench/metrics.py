"""Every results column, declared once: name (with its unit), unit, group, and how it is measured.

The runner fills rows with these names, results.py orders columns by this list, and docs/results.md is
checked against it by the tests, so the three cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Column:
    name: str
    unit: str
    group: str  # identity | status | latency | memory | counts | accuracy | trust
    description: str


COLUMNS: tuple[Column, ...] = (
    Column("suite", "", "identity", "suite name"),
    Column("cell_id", "", "identity", "stable hash of op, impl and every axis: the same on every machine and run"),
    Column("op", "", "identity", "operator name (entry point in `upbench.operators`)"),
    Column("impl", "", "identity", "implementation name"),
    Column("pass", "", "identity", "`fwd` (inference, no autograd), `bwd` (backward only, graph built outside the "
           "timer) or `fwd+bwd`"),
    Column("B", "", "identity", "batch size"),
    Column("C", "", "identity", "channels of x (model suites: of the first stage)"),
    Column("Cy", "", "identity", "guidance / similarity channels; empty when the operator has none or Cy = C"),
    Column("H", "", "identity", "low-res height"),
    Column("W", "", "identity", "low-res width; empty means W = H"),
    Column("s", "", "identity", "upsampling scale"),
    Column("K", "", "identity", "kernel size; empty when the operator has none"),
    Column("dtype", "", "identity", "input, parameter and output dtype"),
    Column("device", "", "identity", "`cpu` or `cuda`"),
    Column("layout", "", "identity", "memory layout of x and y"),
    Column("device_class", "", "identity", "what timings are comparable within: the GPU's name, or the CPU "
           "model and torch thread count, of the machine that ran the row"),
    Column("threads", "", "identity", "requested torch CPU threads (empty: torch's default)"),
    Column("hp", "", "identity", "operator hyperparameters as JSON"),
    Column("stages", "", "identity", "model suites: the stages run one after another, as CxHxW list"),
    Column("status", "", "status", "`ok`, `skipped`, `failed` or `oom`"),
    Column("reason", "", "status", "why a cell was skipped or failed (invalid, filtered, unsupported, the error)"),
    Column("impl_hash", "", "status", "hash of the operator's and impl's source files (Python and .cu)"),
    Column("torch_threads", "", "status", "torch.get_num_threads() while the cell ran"),
    Column("latency_median_ms", "ms", "latency", "median per-call time over the samples"),
    Column("latency_iqr_ms", "ms", "latency", "inter-quartile range of the per-call sample times"),
    Column("latency_min_ms", "ms", "latency", "fastest sample"),
    Column("latency_rel_iqr", "", "latency", "IQR / median"),
    Column("latency_n", "", "latency", "number of samples"),
    Column("latency_inner", "", "latency", "calls per sample (CPU: calibrated so a sample lasts ≥ 1 ms)"),
    Column("latency_stop", "", "latency", "why sampling stopped: `converged` (IQR/median under target), `budget`, "
           "`max_samples`"),
    Column("latency_noise", "", "latency", "`stable` if IQR/median ≤ the suite's target, else `noisy`"),
    Column("latency_mode", "", "latency", "`cpu`, `cuda-cold` (L2 flushed before each sample) or `cuda-warm`; "
           "`-graph` when timed as CUDA-graph replays"),
    Column("latency_samples_ms", "ms", "latency", "every per-call sample time, JSON list (for `compare`)"),
    Column("latency_norm", "", "latency", "latency_median_ms / this run's calibration score (geometric mean of "
           "a 4 MiB copy and a 512² matmul, ms): comparable across sibling machines"),
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
    Column("macs", "MAC", "counts", "analytic multiply-accumulates of the pass (DESIGN §6); bwd = the operator's "
           "backward formula"),
    Column("flops", "FLOP", "counts", "2 × macs"),
    Column("min_bytes", "B", "counts", "bytes an ideal forward must move: inputs read once, output written once"),
    Column("gflops_per_s", "GFLOP/s", "counts", "flops / median latency"),
    Column("gbytes_per_s", "GB/s", "counts", "min_bytes / median latency (forward passes only)"),
    Column("pct_compute_roof", "%", "counts", "gflops_per_s / the device's probed matmul GFLOP/s for this dtype"),
    Column("pct_bw_roof", "%", "counts", "gbytes_per_s / the device's probed copy bandwidth"),
    Column("bitwise_repeatable", "", "accuracy", "two runs of the call gave bit-identical results (outputs or "
           "gradients): the determinism metric"),
    Column("err_max_abs", "", "accuracy", "max |impl − float64 reference| (bwd: over every gradient)"),
    Column("err_rel_rms", "", "accuracy", "RMS(error) / RMS(reference)"),
    Column("err_max_rel", "", "accuracy", "max |error| / RMS(reference): the number compared with the tolerance"),
    Column("err_border_max_rel", "", "accuracy", "err_max_rel over border pixels (window reaches past the map)"),
    Column("err_interior_max_rel", "", "accuracy", "err_max_rel over interior pixels"),
    Column("err_tol", "", "accuracy", "the operator's tolerance for this dtype"),
    Column("agree", "", "accuracy", "err_max_rel ≤ err_tol"),
    # -- trust checks (issue 13: adversarial.py, properties.py, floor.py, cuda_checks.py, trust.py) ---------------
    Column("agree_worst_input", "", "trust", "the input that gave the worst agreement: `normal` (the case's own), "
           "or `seed2`, `uniform`, `heavy` (Student t, 3 dof), `large` (×10 in fp32) or `constant`, run at a "
           "reduced shape `@HxW` (H, W ≤ K + 4) when the case is larger"),
    Column("property_check", "", "trust", "the operator's declared properties on a constant input (forward "
           "passes): `ok`, `failed: …` with what failed, empty when it declares none"),
    Column("floor_ms", "ms", "trust", "speed of light: max(flops / matmul ceiling, min_bytes / copy ceiling); "
           "the bytes term in forward passes only"),
    Column("latency_over_floor", "", "trust", "latency_median_ms / floor_ms; below 1 is impossible"),
    Column("floor_verdict", "", "trust", "`implausible` when latency × (1 + 2·IQR/median) < floor × 0.75 "
           "(beyond noise and ceiling slack), else `ok`"),
    Column("timing_check", "", "trust", "CUDA: the same calls timed by CUDA events on a side stream and by "
           "device-wide sync + host clock: `ok`, `escaped-stream` (work the events missed) or `host-sync` (the "
           "call waited for the GPU); empty on the CPU"),
    Column("backend", "", "trust", "what actually ran, for an impl that can fall back (its callable's "
           "`upbench_backend`); empty when the impl does not say"),
    Column("energy_j_per_call", "J", "trust", "CUDA, metric `energy`: NVML total-energy counter over ≥ 1 s of "
           "repeated calls, divided by the calls (device-wide: idle power included)"),
    Column("energy_window_s", "s", "trust", "length of the energy window"),
    Column("energy_calls", "", "trust", "calls in the energy window"),
    Column("power_limit_w", "W", "trust", "NVML enforced power limit during the energy window"),
    Column("energy_sm_clock_mhz", "MHz", "trust", "SM clock at the end of the energy window"),
    Column("energy_mem_clock_mhz", "MHz", "trust", "memory clock at the end of the energy window"),
    Column("clocks_locked", "", "trust", "clocks pinned by an application- or locked-clock setting"),
    Column("energy_reason", "", "trust", "why energy is absent (the CPU, no NVML, no counter)"),
    Column("trust", "", "trust", "`ok`, or the failed checks: `modified-input`, `wrong` / `wrong@<input>`, "
           "`property`, `implausible`, `escaped-stream`, `host-sync` (the report adds `speed-up` flags)"),
)

NAMES: tuple[str, ...] = tuple(c.name for c in COLUMNS)
BY_NAME: dict[str, Column] = {c.name: c for c in COLUMNS}


def markdown_table() -> str:
    """The column reference of docs/results.md (kept equal to it by a test)."""
    lines = ["| column | unit | group | meaning |", "|---|---|---|---|"]
    lines += [f"| `{c.name}` | {c.unit or '–'} | {c.group} | {c.description} |" for c in COLUMNS]
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown_table())
