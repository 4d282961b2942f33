"""window_attn's band windows (kernels/window_band.cuh): a low-res range per output row and column, keys outside
masked (AnyUp's window), through the CPU shim against float64 references.

Every band kernel (band_sim, band_atn, band_atn_t, band_fused_mean) writes into a NaN-poisoned output, on
border-heavy shapes: AnyUp's windows at several ratios (bands clipped by every border, a band covering the whole
map), ratio 16 on a 1×1 map, s = 1, non-square and odd maps, irregular random bands whose children differ in
both ends, heads (groups), channel tails. The fast build (what the cpu-kernel impls run) and the simt build (the
CUDA lane logic) both run; gradcheck in float64; the backward gather is bitwise deterministic across thread
counts. The weak-memory, race and sanitizer builds run these kernels in test_kernels_weak.py and
test_kernels_sanitize.py; nvcc in test_kernels_stats.py (window_attn.cu includes the header).
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from upbench import _cpu_shim
from upbench.operators import window_attn_kernels as wk
from upbench.operators.anyup import window_mask, windows

pytestmark = pytest.mark.skipif(_cpu_shim.unavailable_reason() is not None,
                                reason=str(_cpu_shim.unavailable_reason()))

TOL = {torch.float64: 1e-12, torch.float32: 2e-6, torch.bfloat16: 8e-3}
SCALE = 0.7


def anyup_ranges(H: int, W: int, s: int, ratio: float) -> tuple[torch.Tensor, ...]:
    (r0, r1), (c0, c1) = windows(H * s, H, ratio), windows(W * s, W, ratio)
    return r0, r1, c0, c1


def random_ranges(H: int, W: int, s: int, seed: int) -> tuple[torch.Tensor, ...]:
    """Irregular bands: non-decreasing starts, random lengths, so children of one parent differ at both ends."""
    g = torch.Generator().manual_seed(seed)

    def axis(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        lo = torch.randint(0, n, (n * s,), generator=g).sort().values
        hi = torch.minimum(lo + 1 + torch.randint(0, 3, (n * s,), generator=g), torch.tensor(n))
        return lo, hi

    return (*axis(H), *axis(W))


# (ranges, B, H, W, D, C, s, G)
CASES = [
    (anyup_ranges(3, 5, 2, 0.3), 1, 3, 5, 3, 7, 2, 2),  # AnyUp's window clipped by every border, two heads
    (anyup_ranges(1, 1, 16, 0.1), 1, 1, 1, 3, 70, 16, 1),  # ratio 16 on a 1×1 map; C with a chunk tail
    (anyup_ranges(4, 3, 4, 0.3), 2, 4, 3, 4, 9, 4, 4),  # four heads, batch 2, s² = 16
    (anyup_ranges(9, 7, 3, 0.1), 1, 9, 7, 5, 6, 3, 1),  # narrow bands inside a larger map
    (anyup_ranges(3, 4, 1, 0.6), 1, 3, 4, 2, 5, 1, 2),  # s = 1, bands covering nearly the whole map
    (random_ranges(5, 4, 3, 0), 1, 5, 4, 3, 33, 3, 3),  # irregular bands, three heads, odd s
    (random_ranges(2, 7, 2, 1), 2, 2, 7, 4, 4, 2, 1),  # irregular, non-square
]
SIMT_CASES = [CASES[0], CASES[1], CASES[5]]


def _band(case) -> wk.Band:
    ranges, B, H, W, D, C, s, G = case
    return wk.Band.from_ranges(*ranges, H, W, s)


def _ok(case) -> tuple[torch.Tensor, torch.Tensor]:
    """Which low-res rows (sH, H) and columns (sW, W) each output row and column sees."""
    (r0, r1, c0, c1), B, H, W, *_ = case
    rows, cols = torch.arange(H), torch.arange(W)
    return (rows >= r0[:, None]) & (rows < r1[:, None]), (cols >= c0[:, None]) & (cols < c1[:, None])


def _inputs(case, dtype, seed=0):
    ranges, B, H, W, D, C, s, G = case
    M = _band(case).M
    g = torch.Generator().manual_seed(seed)
    shapes = [(B, H * s, W * s, G * D), (B, H, W, G * D), (B, H, W, C), (B, H, W, G * C),
              (B, H * s, W * s, G * C), (B, H * s, W * s, G * M)]
    q, k, v, vg, gout, A = (torch.randn(*sh, generator=g, dtype=torch.float64) for sh in shapes)
    return [t.to(dtype) for t in (q, k, v, vg, gout, A)]


def _nan(like: torch.Tensor) -> torch.Tensor:
    return torch.full_like(like, float("nan"))


def _close(got: torch.Tensor, ref: torch.Tensor, tol: float, what: str) -> None:
    assert torch.isfinite(got).all(), f"{what}: unwritten (NaN) or non-finite elements"
    err = (got.double() - ref).abs().max().item()
    assert err <= tol * max(ref.abs().max().item(), 1e-30), f"{what}: max error {err:.3g}"


def _check_all(case, dtype):
    ranges, B, H, W, D, C, s, G = case
    bd = _band(case)
    q, k, v, vg, gout, A = _inputs(case, dtype)
    d = [t.double() for t in (q, k, v, vg, gout, A)]
    tab, w, tol = bd.table, (bd.Ku, bd.Kv, s, G), TOL[dtype]
    out = torch.empty(B, H * s, W * s, C, dtype=dtype)
    _close(wk.band_sim_into(q, k, _nan(A), tab, *w, SCALE), wk.band_sim_reference(d[0], d[1], bd, G, SCALE), tol,
           f"band_sim {case[1:]}")
    _close(wk.band_atn_into(A, vg, _nan(gout), tab, *w), wk.band_atn_reference(d[5], d[3], bd, G), tol,
           f"band_atn {case[1:]}")
    _close(wk.band_atn_t_into(A, gout, _nan(vg), tab, *w), wk.band_atn_t_reference(d[5], d[4], bd, G), tol,
           f"band_atn_t {case[1:]}")
    _close(wk.band_fused_mean_into(q, k, v, _nan(out), tab, *w, SCALE),
           wk.band_reference(d[0], d[1], d[2], *_ok(case), G, SCALE), tol, f"band_fused_mean {case[1:]}")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", range(len(CASES)))
def test_fast_build_matches_reference(case, dtype):
    _check_all(CASES[case], dtype)


@pytest.mark.parametrize("case", range(len(SIMT_CASES)))
def test_simt_build_runs_the_cuda_lane_logic(case):
    with _cpu_shim.use_variant("simt"):
        _check_all(SIMT_CASES[case], torch.float32)


@pytest.mark.parametrize("case", [0, 2, 5], ids=["anyup", "four-heads", "irregular"])
def test_unfused_chain_matches_masked_reference_and_fused(case):
    ranges, B, H, W, D, C, s, G = CASES[case]
    bd = _band(CASES[case])
    q, k, v, *_ = _inputs(CASES[case], torch.float64)
    ref = wk.band_reference(q, k, v, *_ok(CASES[case]), G, SCALE)
    _close(wk.band_attention_mean(q, k, v, bd, G, SCALE), ref, 1e-12, "unfused")
    _close(wk.band_attention_mean(q, k, v, bd, G, SCALE, fused=True), ref, 1e-12, "fused")


def test_bias_is_anyups_mask_and_fused_counts_flops():
    """Band.bias marks exactly the keys AnyUp's official boolean mask keeps; the fused op's FLOP formula."""
    H, W, s, ratio = 5, 4, 3, 0.25
    bd = wk.Band.from_ranges(*anyup_ranges(H, W, s, ratio), H, W, s)
    rows, cols = wk.band_grid_index(bd)
    keep = bd.bias(torch.empty(0, dtype=torch.float64)) == 0  # (sH, sW, M)
    seen = torch.zeros(H * s * W * s, H * W, dtype=torch.bool)
    for m in range(bd.M):
        a, b = divmod(m, bd.Kv)
        r, c = rows[:, a][:, None].expand(-1, W * s), cols[:, b][None, :].expand(H * s, -1)
        on = keep[:, :, m]
        seen.view(H * s, W * s, -1)[on, (r * W + c)[on]] = True
    assert torch.equal(seen, ~window_mask((H * s, W * s), (H, W), ratio))
    q, k, v = torch.randn(1, H * s, W * s, 8), torch.randn(1, H, W, 8), torch.randn(1, H, W, 6)
    with FlopCounterMode(display=False) as fc:
        wk.band_attention_mean(q, k, v, bd, 2, SCALE, fused=True)
    assert fc.get_total_flops() == 2 * H * s * W * s * bd.M * (8 + 6)


@pytest.mark.parametrize("case", [0, 5], ids=["anyup", "irregular"])
def test_gradcheck(case):
    ranges, B, H, W, D, C, s, G = CASES[case]
    bd = _band(CASES[case])
    q, k, v, *_ = _inputs((ranges, B, H, W, D, min(C, 4), s, G), torch.float64)
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    assert torch.autograd.gradcheck(lambda q, k, v: wk.band_attention_mean(q, k, v, bd, G, SCALE), (q, k, v),
                                    fast_mode=True)


def test_custom_ops_pass_opcheck():
    ranges, B, H, W, D, C, s, G = CASES[0]
    bd = _band(CASES[0])
    q, k, v, vg, gout, A = _inputs(CASES[0], torch.float64)
    w = (bd.table, bd.Ku, bd.Kv, s, G)
    torch.library.opcheck(torch.ops.upbench.window_attn_band_sim, (q.requires_grad_(), k.requires_grad_(), *w, SCALE))
    torch.library.opcheck(torch.ops.upbench.window_attn_band_atn, (A.requires_grad_(), vg.requires_grad_(), *w))
    torch.library.opcheck(torch.ops.upbench.window_attn_band_atn_t, (A.detach(), gout, *w))
    torch.library.opcheck(torch.ops.upbench.window_attn_band_fused_mean, (q.detach(), k.detach(), v, *w, SCALE))


def test_backward_gather_is_deterministic_across_thread_counts():
    ranges, B, H, W, D, C, s, G = CASES[5]
    bd = _band(CASES[5])
    _, _, _, vg, gout, A = _inputs(CASES[5], torch.float32)
    n = torch.get_num_threads()
    try:
        outs = []
        for threads in (1, 2, 1):
            torch.set_num_threads(threads)
            outs.append(wk.band_atn_t_into(A, gout, _nan(vg), bd.table, bd.Ku, bd.Kv, s, G))
    finally:
        torch.set_num_threads(n)
    assert all(torch.equal(outs[0], o) for o in outs[1:])


def test_band_rejects_bad_ranges():
    lo, hi = torch.tensor([0, 0, 1, 1]), torch.tensor([1, 2, 2, 2])  # 2 low-res rows, s = 2
    with pytest.raises(ValueError, match="non-empty"):
        wk.Band.from_ranges(lo, lo, lo, hi, 2, 2, 2)
    with pytest.raises(ValueError, match="inside"):
        wk.Band.from_ranges(lo, hi + 1, lo, hi, 2, 2, 2)
    with pytest.raises(ValueError, match="4 column ranges expected"):
        wk.Band.from_ranges(lo, hi, lo[:3], hi[:3], 2, 2, 2)
    with pytest.raises(ValueError, match="decrease"):
        wk.Band.from_ranges(torch.tensor([1, 1, 0, 0]), torch.tensor([2, 2, 1, 1]), lo, hi, 2, 2, 2)


def test_entries_reject_bad_tables():
    bd = wk.Band.from_ranges(*anyup_ranges(3, 3, 2, 0.3), 3, 3, 2)
    q, k, v = torch.randn(1, 6, 6, 4), torch.randn(1, 3, 3, 4), torch.randn(1, 3, 3, 5)
    out = torch.empty(1, 6, 6, 5)
    w = (bd.Ku, bd.Kv, 2, 2)
    for tab, what in ((bd.table[:-1], "contiguous int64 vector"), (bd.table.int(), "contiguous int64 vector"),
                      (bd.table, "Kv=0")):
        args = (bd.Ku, 0, 2, 2) if what == "Kv=0" else w
        with pytest.raises(ValueError, match=what):
            wk.band_fused_mean_into(q, k, v, out, tab, *args)
        with pytest.raises(ValueError, match=what):
            torch.ops.upbench.window_attn_band_sim(q, k, tab, *args, 1.0)
    with pytest.raises(ValueError, match="225 slots"):
        wk.band_sim_into(q, k, torch.empty(1, 6, 6, 2 * 256), bd.table, 16, 16, 2, 2)
    with pytest.raises(ValueError, match="scale=0"):
        wk.band_fused_mean_into(q, k, v, out, bd.table, *w, 0.0)
