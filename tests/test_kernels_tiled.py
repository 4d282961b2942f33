"""The tiled fused forward (kernels/window_tiled.cuh) through the SIMT shim, against float64 references.

The tiled kernel is a GPU design (block tiles, shared-memory halo, __syncthreads), so the CPU fast build does not
have it; here it runs in the ``simt`` build (a thread per CUDA lane, real barriers). NaN-poisoned outputs,
border-heavy shapes (window larger than the map, dilation × K larger than the map, ratio 16 on a 1×1 map,
non-square, odd), every border rule, computed and given logits, groups, every dtype; plans pinned so that
blocks loop over several tiles, tiles take several passes of children, and D and C take several slices. The weak-
memory and race builds and the barrier mutants are in test_kernels_weak.py, the sanitizers in
test_kernels_sanitize.py, nvcc in test_kernels_stats.py.
"""

from __future__ import annotations

import pytest
import torch

from upbench import _cpu_shim
from upbench.operators import kernel_binding as kb
from upbench.operators import window_attn_kernels as wk
from upbench.operators.uplift import OFFSETS
from upbench.operators.window_attn_kernels import Window

pytestmark = pytest.mark.skipif(_cpu_shim.unavailable_reason() is not None,
                                reason=str(_cpu_shim.unavailable_reason()))

# (window, B, H, W, D, C, s, G, tile pin or None, blocks or None)
CASES = [
    (Window.square(5), 1, 2, 3, 5, 7, 2, 1, None, None),  # window larger than the map; the binding's own plan
    (Window.square(3, 3), 1, 2, 2, 4, 6, 3, 2, (1, 1, 4), 2),  # dilation × K = 9 > map; groups; s² = 9 (masked)
    (Window.square(3, 2), 1, 1, 1, 3, 70, 16, 1, (1, 1, 40), None),  # ratio 16 on 1×1: 7 passes; C slices + tail
    (Window.square(3, 1, "shift"), 2, 3, 5, 36, 10, 2, 2, (2, 2), 3),  # NAF's rule; batch 2; D in 3 slices
    (Window.square(5, 2, "clamp"), 1, 3, 2, 5, 9, 3, 1, (2, 1, 8), None),  # replicate padding, dilated
    (Window(OFFSETS, "clamp"), 1, 2, 3, 17, 33, 2, 1, (1, 2), 1),  # UPLiFT's 17 offsets, one block for all tiles
    (Window(((0, 0), (1, -1), (-2, 3), (0, 4)), "zero"), 1, 4, 5, 40, 9, 1, 1, (3, 2), None),  # irregular, s = 1
    (Window(((0, 0), (2, 0), (-1, -1)), "shift"), 1, 4, 3, 2, 5, 2, 3, None, None),  # asymmetric list, shifted
]
TOL = {torch.float64: 1e-12, torch.float32: 2e-6, torch.float16: 2e-3, torch.bfloat16: 8e-3}
SCALE = 0.7


def _inputs(case, dtype, seed=0):
    win, B, H, W, D, C, s, G = case[:8]
    M = len(win.offsets)
    g = torch.Generator().manual_seed(seed)
    shapes = [(B, H * s, W * s, G * D), (B, H, W, G * D), (B, H, W, G * C), (B, H * s, W * s, G * M)]
    ts = [torch.randn(*sh, generator=g, dtype=torch.float64) for sh in shapes]
    ts[0] = ts[0] * D ** -0.5
    return [t.to(dtype) for t in ts]


def _close(got, ref, tol, what):
    assert torch.isfinite(got).all(), f"{what}: unwritten (NaN) or non-finite elements"
    err = (got.double() - ref).abs().max().item()
    assert err <= tol * ref.abs().max().item(), f"{what}: max error {err:.3g}"


def _run(case, dtype, fused_given=False):
    win, B, H, W, D, C, s, G, tile, blocks = case
    q, k, v, L = _inputs(case, dtype)
    out = torch.full((B, H * s, W * s, G * C), float("nan"), dtype=dtype)
    pin = dict(path="tiled", tile=tile, blocks=blocks)
    if fused_given:
        return wk.fused_given_into(L, v, out, win.flat, win.code, s, G, **pin)
    return wk.fused_into(q, k, v, out, win.flat, win.code, s, G, SCALE, **pin)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", range(len(CASES)))
def test_tiled_matches_reference_in_the_simt_build(case, dtype):
    c = CASES[case]
    win, s, G = c[0], c[6], c[7]
    q, k, v, L = (t.double() for t in _inputs(c, dtype))
    with _cpu_shim.use_variant("simt"):
        _close(_run(c, dtype), wk.reference(q, k, v, win, s, G, SCALE), TOL[dtype], f"tiled {c}")
        _close(_run(c, dtype, True), wk.reference(None, None, v, win, s, G, L=L), TOL[dtype], f"tiled_given {c}")


def test_tiled_is_bitwise_deterministic_and_matches_the_warp_kernel():
    c = CASES[3]
    with _cpu_shim.use_variant("simt"):
        runs = [_run(c, torch.float32) for _ in range(3)]
        win, B, H, W, D, C, s, G = c[:8]
        q, k, v, _ = _inputs(c, torch.float32)
        warp = wk.fused_into(q, k, v, torch.empty_like(runs[0]), win.flat, win.code, s, G, SCALE, path="warp")
    assert all(torch.equal(runs[0], r) for r in runs[1:])
    torch.testing.assert_close(runs[0], warp, rtol=1e-5, atol=1e-6)


# -- the plan and the path choice ------------------------------------------------------------------------------
def test_header_constants_and_plans_fit_the_pool():
    pool, slice_bytes, nch = wk.tiled_constants()
    assert pool <= 48 * 1024 and slice_bytes % 16 == 0 and nch >= 1
    for win in (Window.square(5), Window.square(9, 1, "shift"), Window.square(15), Window(OFFSETS, "clamp")):
        for esize in (2, 4, 8):
            for s in (1, 2, 3, 16):
                plan = wk.tile_plan(tuple(win.flat), s, 2, 64, 48, esize)
                assert plan is not None and plan.smem <= pool and plan.NCB % nch == 0, (win, esize, s, plan)
    # SAPA's benchmark case on a 132-SM GPU: enough tiles for four blocks per SM, a small halo per parent
    plan = wk.tile_plan(tuple(Window.square(5).flat), 2, 2, 64, 64, 4, 4 * 132)
    assert plan.tiles >= 4 * 132 and plan.passes == 1 and plan.EU * plan.EV / (plan.TU * plan.TV) < 5


def test_a_window_too_wide_for_the_pool_has_no_plan_and_falls_back():
    wide = Window.square(9, 16)  # NAF-like dilation: a 129 × 129 halo box
    assert wk.tile_plan(tuple(wide.flat), 2, 1, 200, 200, 4) is None
    q, k, v = torch.randn(1, 400, 400, 4), torch.randn(1, 200, 200, 4), torch.randn(1, 200, 200, 4)
    with _cpu_shim.use_variant("simt"), pytest.raises(ValueError, match="no tile's halo box fits"):
        wk.fused_into(q, k, v, torch.empty(1, 400, 400, 4), wide.flat, wide.code, 2, 1, path="tiled")


def test_path_choice(monkeypatch):
    launched = []
    class Recorder:
        def launch(self, kernel, *args, **kw):
            launched.append(kernel)

    monkeypatch.setattr(wk, "FAMILY", Recorder())
    win, s = Window.square(3), 2
    q, k, v = torch.randn(1, 4, 6, 8), torch.randn(1, 2, 3, 8), torch.randn(1, 2, 3, 8)
    out, L = torch.empty(1, 4, 6, 8), torch.randn(1, 4, 6, 9)
    wk.fused_into(q, k, v, out, win.flat, win.code, s, 1)  # auto on the CPU: the warp kernel
    wk.fused_given_into(L, v, out, win.flat, win.code, s, 1)
    with _cpu_shim.use_variant("simt"):
        wk.fused_into(q, k, v, out, win.flat, win.code, s, 1)  # still auto → warp: tiled is the GPU's path
        wk.fused_into(q, k, v, out, win.flat, win.code, s, 1, path="tiled")
        wk.fused_given_into(L, v, out, win.flat, win.code, s, 1, path="tiled")
        monkeypatch.setenv("UPBENCH_WA_FUSED", "tiled")
        wk.fused_into(q, k, v, out, win.flat, win.code, s, 1)
    assert launched == ["fused", "fused_given", "fused", "tiled_i32", "tiled_given_i32", "tiled_i32"]
    with pytest.raises(ValueError, match="32-lane warps"):  # the fast build has no tiled kernel
        wk.fused_into(q, k, v, out, win.flat, win.code, s, 1, path="tiled")
    with pytest.raises(ValueError, match="path='fast'"):
        wk.fused_into(q, k, v, out, win.flat, win.code, s, 1, path="fast")
    with _cpu_shim.use_variant("simt"), pytest.raises(ValueError, match="tile=\\(0, 1\\)"):
        wk.fused_into(q, k, v, out, win.flat, win.code, s, 1, path="tiled", tile=(0, 1))


def test_fused_path_says_which_kernel_runs_and_why():
    t, offs = torch.empty(1), Window.square(5).flat
    assert wk.fused_path(t, offs, 2, 1, 2, 64, 64) == (None, "warp kernel: the CPU's path (the tiled kernel is a GPU "
                                                             "design)")
    with _cpu_shim.use_variant("simt"):
        plan, why = wk.fused_path(t, offs, 2, 1, 2, 64, 64, "tiled")
        assert plan is not None and why.startswith(f"tiled kernel: {plan.TU}×{plan.TV} parents")
        plan, why = wk.fused_path(t, Window.square(9, 16).flat, 2, 1, 1, 200, 200, "tiled")
        assert plan is None and "halo box fits" in why


def test_32_bit_index_path_only_below_2_31_elements():
    small, big = torch.empty(4, device="meta"), torch.empty(2**31, device="meta")
    assert wk._tiled_entry("tiled", small, small) == "tiled_i32"
    assert wk._tiled_entry("tiled", small, big) == "tiled"
    assert wk._tiled_entry("tiled_given", torch.empty(2**31 - 1, device="meta")) == "tiled_given_i32"


def test_tiled_entries_exist_only_in_32_lane_builds():
    simt = _cpu_shim.load("window_attn", "simt", kb.CPU_DEFINES["simt"])
    fast = _cpu_shim.load("window_attn", "fast", kb.CPU_DEFINES["fast"])
    for suf in ("f64", "f32", "f16", "bf16"):
        for kern in ("tiled", "tiled_i32", "tiled_given", "tiled_given_i32"):
            assert hasattr(simt, f"window_attn_{kern}_{suf}")
    assert not hasattr(fast, "window_attn_tiled_f32") and hasattr(fast, "window_attn_fused_f32")
