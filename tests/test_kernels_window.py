"""The window_attn kernel family (kernels/window_attn.cu) through the CPU shim, against float64 references.

Every kernel (sim, atn, atn_t, fused, fused_given) writes into a NaN-poisoned output, on border-heavy shapes:
a window larger than the map, dilation × K larger than the map, ratio 16 on a 1×1 map, non-square maps,
groups, every border rule (zero, clamp, shift) and an explicit offset list (UPLiFT's 17). The fast build
(what the cpu-kernel impls run) and the simt build (the CUDA lane logic, a thread per lane) both run;
gradcheck in float64 on tiny shapes; the backward gather is bitwise deterministic across thread counts.
The weak-memory, race and sanitizer builds run this family in test_kernels_weak.py / test_kernels_sanitize.py.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from upbench import _cpu_shim
from upbench.operators import window_attn_kernels as wk
from upbench.operators.uplift import OFFSETS
from upbench.operators.window_attn_kernels import Window

pytestmark = pytest.mark.skipif(_cpu_shim.unavailable_reason() is not None,
                                reason=str(_cpu_shim.unavailable_reason()))

# (window, B, H, W, D, C, s, G)
CASES = [
    (Window.square(5), 1, 2, 3, 5, 7, 2, 1),  # window larger than the map
    (Window.square(3, 3), 1, 2, 2, 4, 6, 3, 2),  # dilation × K = 9 > map; two groups; s² = 9 (odd group tail)
    (Window.square(3, 2), 1, 1, 1, 3, 70, 16, 1),  # ratio 16 on a 1×1 map; C with a chunk tail
    (Window.square(3, 1, "shift"), 2, 3, 5, 6, 10, 2, 2),  # NAF's rule, window = map height
    (Window.square(5, 2, "clamp"), 1, 3, 2, 5, 9, 3, 1),  # replicate padding, dilated
    (Window(OFFSETS, "clamp"), 1, 2, 3, 4, 66, 2, 1),  # UPLiFT's 17 offsets on a map smaller than their reach
    (Window(((0, 0), (1, -1), (-2, 3), (0, 4)), "zero"), 1, 4, 5, 5, 9, 1, 1),  # irregular list, s = 1
    (Window(((0, 0), (2, 0), (-1, -1)), "shift"), 1, 4, 3, 2, 5, 2, 3),  # asymmetric list, shifted
    # the CPU build's packed path (s² ≥ 16 children a parent; fp32, fp64): slots, D and C not whole vectors
    (Window.square(3, 1, "shift"), 2, 3, 4, 5, 11, 4, 2),  # NAF's rule, two heads, s² = 16
    (Window(OFFSETS, "clamp"), 1, 3, 2, 6, 20, 5, 1),  # 17 offsets, s² = 25: a block of 9, a child tile of 1
    (Window.square(5), 1, 2, 3, 4, 9, 4, 1),  # zero rule, window larger than the map: zero rows packed
]
SIMT_CASES = [CASES[0], CASES[1], CASES[3], CASES[5]]
TOL = {torch.float64: 1e-12, torch.float32: 2e-6, torch.bfloat16: 8e-3}
SCALE = 0.7


def _inputs(case, dtype, seed=0):
    win, B, H, W, D, C, s, G = case
    M = len(win.offsets)
    g = torch.Generator().manual_seed(seed)
    shapes = [(B, H * s, W * s, G * D), (B, H, W, G * D), (B, H, W, G * C), (B, H * s, W * s, G * C),
              (B, H * s, W * s, G * M), (B, H * s, W * s, G * M)]
    q, k, v, gout, A, L = (torch.randn(*sh, generator=g, dtype=torch.float64) for sh in shapes)
    A = A.view(B, H * s, W * s, G, M).softmax(-1).view(A.shape)
    return [t.to(dtype) for t in (q, k, v, gout, A, L)]


def _nan(like: torch.Tensor, *shape: int) -> torch.Tensor:
    return torch.full(shape or like.shape, float("nan"), dtype=like.dtype)


def _close(got: torch.Tensor, ref: torch.Tensor, tol: float, what: str) -> None:
    assert torch.isfinite(got).all(), f"{what}: unwritten (NaN) or non-finite elements"
    err = (got.double() - ref).abs().max().item()
    assert err <= tol * max(ref.abs().max().item(), 1e-30), f"{what}: max error {err:.3g}"


def _check_all(case, dtype):
    win, B, H, W, D, C, s, G = case
    q, k, v, gout, A, L = _inputs(case, dtype)
    d = [t.double() for t in (q, k, v, gout, A, L)]
    offs, code, tol = win.flat, win.code, TOL[dtype]
    S = wk.sim_into(q, k, _nan(A), offs, code, s, G, SCALE)
    _close(S, wk.sim_reference(d[0], d[1], win, s, G, SCALE), tol, f"sim {case}")
    _close(wk.atn_into(A, v, _nan(gout), offs, code, s, G), wk.atn_reference(d[4], d[2], win, s, G), tol,
           f"atn {case}")
    _close(wk.atn_t_into(A, gout, _nan(v), offs, code, s, G), wk.atn_t_reference(d[4], d[3], win, s, G), tol,
           f"atn_t {case}")
    _close(wk.fused_into(q, k, v, _nan(gout), offs, code, s, G, SCALE),
           wk.reference(d[0], d[1], d[2], win, s, G, SCALE), tol, f"fused {case}")
    _close(wk.fused_given_into(L, v, _nan(gout), offs, code, s, G),
           wk.reference(None, None, d[2], win, s, G, L=d[5]), tol, f"fused_given {case}")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", range(len(CASES)))
def test_fast_build_matches_reference(case, dtype):
    _check_all(CASES[case], dtype)


@pytest.mark.parametrize("case", range(len(SIMT_CASES)))
def test_simt_build_runs_the_cuda_lane_logic(case):
    with _cpu_shim.use_variant("simt"):
        _check_all(SIMT_CASES[case], torch.float32)


def test_reference_windows_match_the_operators():
    """Window.square with the shift rule is NAF's clamped window; the clamp rule is UPLiFT's replicate padding."""
    from upbench.operators.naf import window_start

    H, s, K = 11, 3, 9
    win = Window.square(K, 1, "shift")
    rows = torch.stack([wk.slot_index(win, H, H, s, m)[0][:, 0] for m in range(0, K * K, K)], 1)  # (sH, K)
    assert torch.equal(rows, window_start(H, s, K)[:, None] + torch.arange(K))
    u, w, ok = wk.slot_index(Window(OFFSETS, "clamp"), 3, 2, 2, 0)  # offset (-2, -2)
    assert ok.all() and torch.equal(u[:, 0], (torch.arange(6) // 2 - 2).clamp(0, 2))


@pytest.mark.parametrize("case", [CASES[1], CASES[3], CASES[5]], ids=["dilated", "shift", "offsets"])
def test_gradcheck(case):
    win, B, H, W, D, C, s, G = case
    C = min(C, 4)
    q, k, v, _, _, L = _inputs((win, B, H, W, D, C, s, G), torch.float64)
    q, k, v, L = (t.requires_grad_() for t in (q, k, v, L))
    assert torch.autograd.gradcheck(lambda q, k, v: wk.attention(q, k, v, win, s, G, SCALE), (q, k, v),
                                    fast_mode=True)
    assert torch.autograd.gradcheck(lambda L, v: wk.attention_given(L, v, win, s, G), (L, v), fast_mode=True)


def test_unfused_matches_fused_and_counts_flops():
    win, B, H, W, D, C, s, G = CASES[3]
    q, k, v, _, _, L = _inputs(CASES[3], torch.float32)
    with FlopCounterMode(display=False) as fc:
        fused = wk.attention(q, k, v, win, s, G, SCALE, fused=True)
    M = len(win.offsets)
    assert fc.get_total_flops() == 2 * B * H * s * W * s * M * G * (D + C)
    torch.testing.assert_close(wk.attention(q, k, v, win, s, G, SCALE), fused, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(wk.attention_given(L, v, win, s, G), wk.attention_given(L, v, win, s, G, fused=True),
                               rtol=1e-5, atol=1e-6)


def test_custom_ops_pass_opcheck():
    win, B, H, W, D, C, s, G = CASES[1]
    q, k, v, gout, A, L = _inputs(CASES[1], torch.float64)
    w = (win.flat, win.code, s, G)
    torch.library.opcheck(torch.ops.upbench.window_attn_sim, (q, k, *w, SCALE))
    torch.library.opcheck(torch.ops.upbench.window_attn_atn, (A.requires_grad_(), v.requires_grad_(), *w))
    torch.library.opcheck(torch.ops.upbench.window_attn_atn_t, (A.detach(), gout, *w))
    torch.library.opcheck(torch.ops.upbench.window_attn_fused, (q, k, v.detach(), *w, SCALE))
    torch.library.opcheck(torch.ops.upbench.window_attn_fused_given, (L, v.detach(), *w))


def test_backward_gather_is_deterministic_across_thread_counts():
    # C = 66: five 64-byte chunks, so the CPU build's fp32 scatter splits them into 1, 2 and 3 parts (one per thread)
    win, B, H, W, D, C, s, G = CASES[5]
    _, _, v, gout, A, _ = _inputs(CASES[5], torch.float32)
    n = torch.get_num_threads()
    try:
        outs = []
        for threads in (1, 2, 3, 1):
            torch.set_num_threads(threads)
            outs.append(wk.atn_t_into(A, gout, _nan(v), win.flat, win.code, s, G))
    finally:
        torch.set_num_threads(n)
    assert all(torch.equal(outs[0], o) for o in outs[1:])


@pytest.mark.parametrize("bad, what", [
    (dict(offs=[]), "1 to 225"), (dict(offs=[0, 0, 1]), "1 to 225"), (dict(offs=[0, 0] * 226), "1 to 225"),
    (dict(border=3), "border=3"), (dict(s=0), "s=0"), (dict(G=3), "not a multiple of G=3"),
    (dict(offs=[0, 0, 3, 0], border=2), "shift border rule needs the window (4×1)"),
])
def test_entries_reject_bad_windows(bad, what):
    q, k, v = torch.randn(1, 6, 6, 4), torch.randn(1, 3, 3, 4), torch.randn(1, 3, 3, 4)
    args = dict(offs=[0, 0, 1, 1], border=0, s=2, G=1) | bad
    M = max(len(args["offs"]) // 2, 1)
    calls = [lambda: wk.fused_into(q, k, v, torch.empty(1, 6, 6, 4), **args),
             lambda: wk.sim_into(q, k, torch.empty(1, 6, 6, M), **args),
             lambda: wk.fused_given_into(torch.randn(1, 6, 6, M), v, torch.empty(1, 6, 6, 4), **args)]
    for call in calls:
        with pytest.raises(ValueError, match=what.replace("(", r"\(").replace(")", r"\)")):
            call()


def test_custom_ops_reject_bad_windows_before_allocating():
    q, k, v = torch.randn(1, 6, 6, 4), torch.randn(1, 3, 3, 4), torch.randn(1, 3, 3, 4)
    with pytest.raises(ValueError, match="s=-2"):
        torch.ops.upbench.window_attn_fused(q, k, v, [0, 0], 0, -2, 1, 1.0)
    with pytest.raises(ValueError, match="1 to 225"):
        torch.ops.upbench.window_attn_sim(q, k, [0, 0, 1], 0, 2, 1, 1.0)
    with pytest.raises(ValueError, match="scale=0.0"):
        torch.ops.upbench.window_attn_fused(q, k, v, [0, 0], 0, 2, 1, 0.0)
