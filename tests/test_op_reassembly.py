"""The reassembly primitive shared by CARAFE, A2U and FADE: formulations vs the explicit-gather definition."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from upbench.operators.reassembly import (
    REASSEMBLY_IMPLS,
    nearest_up,
    reassemble_lean,
    reassemble_reference,
    reassemble_unfold,
)

FNS = {"unfold": reassemble_unfold, "lean": reassemble_lean}


def _rand(B, C, H, W, K, s, G, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, C, H, W, generator=g, dtype=torch.float64)
    M = torch.randn(B, G * K * K, H * s, W * s, generator=g, dtype=torch.float64)  # not normalised: harder
    return x, M


@pytest.mark.parametrize("impl", FNS)
@pytest.mark.parametrize("B,C,H,W,K,s,G", [
    (1, 4, 5, 6, 3, 2, 1), (2, 6, 3, 2, 5, 2, 3), (1, 4, 1, 1, 3, 3, 2), (1, 2, 4, 7, 7, 1, 1), (1, 8, 2, 3, 1, 2, 4),
])
def test_formulations_match_definition(impl, B, C, H, W, K, s, G):
    x, M = _rand(B, C, H, W, K, s, G)
    ref = reassemble_reference(x, M, K, s, G)
    torch.testing.assert_close(FNS[impl](x, M, K, s, G), ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(FNS[impl](x.float(), M.float(), K, s, G).double(), ref, rtol=1e-4, atol=1e-4)


def test_definition_by_hand():
    """One output pixel computed by hand, including an off-map slot that holds zero."""
    x, M = _rand(1, 2, 3, 3, 3, 2, 1)
    out = reassemble_reference(x, M, 3, 2, 1)
    i, j = 1, 0  # parent (0, 0): slots of row a=0 and column b=0 are off the map
    want = sum(M[0, a * 3 + b, i, j] * x[0, :, a - 1, b - 1] for a in (1, 2) for b in (1, 2))
    torch.testing.assert_close(out[0, :, i, j], want)


@pytest.mark.parametrize("impl", FNS)
@pytest.mark.parametrize("H,W,K", [(5, 6, 3), (2, 3, 5), (1, 4, 5)])
def test_uniform_kernels_are_box_filter_then_nearest(impl, H, W, K):
    """Uniform weights 1/K² reassemble to a zero-padded K×K box filter (count_include_pad) then nearest."""
    x, _ = _rand(2, 3, H, W, K, 2, 1)
    M = torch.full((2, K * K, 2 * H, 2 * W), 1.0 / (K * K), dtype=torch.float64)
    box = F.avg_pool2d(x, K, stride=1, padding=(K - 1) // 2, count_include_pad=True)
    want = F.interpolate(box, scale_factor=2, mode="nearest")
    torch.testing.assert_close(FNS[impl](x, M, K, 2, 1), want)
    torch.testing.assert_close(reassemble_reference(x, M, K, 2, 1), want)


@pytest.mark.parametrize("impl", FNS)
def test_gradcheck(impl):
    x, M = _rand(1, 4, 3, 2, 3, 2, 2)
    assert torch.autograd.gradcheck(lambda a, b: FNS[impl](a, b, 3, 2, 2),
                                    (x.requires_grad_(), M.requires_grad_()))


def test_nearest_up():
    x, _ = _rand(2, 3, 4, 5, 1, 1, 1)
    torch.testing.assert_close(nearest_up(x, 3), F.interpolate(x, scale_factor=3, mode="nearest"))


def test_kernel_impls_say_why_when_they_cannot_run():
    for ri in REASSEMBLY_IMPLS:
        why = ri.available(ri.devices[0])
        # available, or a reason a user can act on: no CUDA device, no CuPy, no compiler, no kernel module
        assert why is None or any(w in why for w in ("CUDA", "cupy", "CuPy", "g++", "compiler", "carafe_kernels"))
