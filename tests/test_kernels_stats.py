"""Every .cu compiles for sm_80 and sm_90 with nvcc, and no hot kernel spills or keeps a stack frame."""

from __future__ import annotations

import pytest

from upbench._cpu_shim import kernel_dir
from upbench.operators import kernel_stats

SOURCES = sorted(p.name for p in kernel_dir().glob("*.cu"))
PTXAS_SAMPLE = """\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function 'sapa_sim_f32' for 'sm_90'
ptxas info    : Function properties for sapa_sim_f32
    8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads
ptxas info    : Used 96 registers, used 0 barriers, 7200 bytes smem, 400 bytes cmem[0]
ptxas info    : Compiling entry function 'sapa_atn_f32' for 'sm_90'
ptxas info    : Function properties for sapa_atn_f32
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 64 registers, used 0 barriers, 448 bytes cmem[0]
"""


def test_parse_ptxas():
    sim, atn = kernel_stats.parse_ptxas(PTXAS_SAMPLE)
    assert sim == {"kernel": "sapa_sim_f32", "arch": "sm_90", "registers": 96, "stack_bytes": 8,
                   "spill_stores": 4, "spill_loads": 12, "smem_bytes": 7200}
    assert atn["registers"] == 64 and atn["smem_bytes"] == 0 and atn["spill_loads"] == 0


@pytest.mark.skipif(kernel_stats.nvcc() is None, reason="nvcc not found (set UPBENCH_NVCC or CUDA_HOME)")
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("source", SOURCES)
def test_compiles_without_spills(source, arch):
    stats = kernel_stats.compile_stats(kernel_dir() / source, arch)
    assert stats, f"{source}: ptxas reported no entry points"
    bad = [s for s in stats if s["spill_stores"] or s["spill_loads"] or s["stack_bytes"]]
    assert not bad, f"{source} on {arch}: local-memory use in hot kernels: {bad}"
    assert all(s["registers"] <= 128 for s in stats), stats  # ≥ 4 blocks of 128 threads per SM


def test_traffic_model_at_the_benchmark_cases():
    """Minimum bytes exactly; the tiled kernel's modelled L1 requests well below the warp kernel's, DRAM at the
    minimum (k and v reuse fits L2), a plan for both cases; the warp kernel's formula at SAPA's case by hand."""
    sapa, naf = kernel_stats.BENCH_TRAFFIC
    assert kernel_stats.minimum_bytes(sapa) == 4 * (2 * 128 * 128 * 256 * 2 + 2 * 64 * 64 * 256 * 2)  # 83.9 MB
    assert kernel_stats.minimum_bytes(naf) == 4 * (448 * 448 * (256 + 384) + 28 * 28 * (256 + 384))
    warp = kernel_stats.warp_traffic(sapa)
    assert warp["l1"] == 4 * 2 * 64 * 64 * (4 * 256 + 2 * 25 * 512 + 4 * 256)  # q, 2 child pairs × 25 k+v rows, out
    for c in (sapa, naf):
        w, t = kernel_stats.warp_traffic(c), kernel_stats.tiled_traffic(c)
        assert t["plan"] is not None and t["fits_l2"] and t["dram"] == t["minimum"]
        assert t["l1"] < 5 * t["minimum"] < w["l1"], (c.name, t, w)
    rows = kernel_stats.traffic_table()
    assert len(rows) == 5 and all("MB" in rows[0] for _ in rows)


@pytest.mark.skipif(kernel_stats.nvcc() is None, reason="nvcc not found (set UPBENCH_NVCC or CUDA_HOME)")
def test_tiled_entries_fit_registers_and_the_static_shared_limit():
    stats = kernel_stats.tiled_resources()
    names = {s["kernel"] for s in stats}
    assert len(names) == 16 and len(stats) == 32, names  # {tiled, tiled_i32, given, given_i32} × 4 dtypes × 2 archs
    bad = [s for s in stats if s["spill_stores"] or s["spill_loads"] or s["stack_bytes"] or s["registers"] > 128]
    assert not bad, bad
    assert all(s["smem_bytes"] <= 48 * 1024 for s in stats)
