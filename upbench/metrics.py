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
    group: str  # identity | status | latency | memory | counts | accuracy
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
    Column("instructions_per_call", "", "latency", "CPU: retired instructions per call (valgrind callgrind, "
           "median of samples): unchanged by load; `compare` gates on it when both sides have it"),
    Column("instructions_samples", "", "latency", "CPU: instructions per call of every sample, JSON list"),
    Column("instructions_tool", "", "latency", "what counted them (callgrind and its version)"),
    Column("instructions_reason", "", "latency", "why instructions were not counted (valgrind missing, CUDA row, "
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
    Column("gflops_per_s", "GFLOP/s", "counts", "flops / median latency"),
    Column("gbytes_per_s", "GB/s", "counts", "min_bytes / median latency (forward passes only)"),
    Column("pct_compute_roof", "%", "counts", "gflops_per_s / the device's probed matmul GFLOP/s for this dtype"),
    Column("pct_bw_roof", "%", "counts", "gbytes_per_s / the device's probed copy bandwidth"),
    Column("roof_key", "", "counts", "which ceilings the roof shares used: machine, device, torch, dtype "
           "(`not kept: …` when they were probed under load for this run only)"),
    Column("roof_probed_at", "", "counts", "when those ceilings were probed (UTC); a row above 100 % of a roof "
           "makes upbench probe again before it is reported"),
    Column("bitwise_repeatable", "", "accuracy", "two runs of the call gave bit-identical results (outputs or "
           "gradients): the determinism metric"),
    Column("err_max_abs", "", "accuracy", "max |impl − float64 reference| (bwd: over every gradient)"),
    Column("err_rel_rms", "", "accuracy", "RMS(error) / RMS(reference)"),
    Column("err_max_rel", "", "accuracy", "max |error| / RMS(reference): the number compared with the tolerance"),
    Column("err_border_max_rel", "", "accuracy", "err_max_rel over border pixels (window reaches past the map)"),
    Column("err_interior_max_rel", "", "accuracy", "err_max_rel over interior pixels"),
    Column("err_tol", "", "accuracy", "the operator's tolerance for this dtype"),
    Column("agree", "", "accuracy", "err_max_rel ≤ err_tol"),
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
