"""A2U: kernels, the compared setting's counts, and messages."""

from __future__ import annotations

import math

import torch
from test_op_common import assert_agree, build, make_case, op_


def test_kernels_are_normalised():
    case = make_case("a2u", C=32, H=3, W=4)
    _, m, inputs = build("a2u", case, perturbed=True)
    M = m.kernels(inputs["y"])
    assert M.shape == (1, 9, 6, 8)
    torch.testing.assert_close(M.sum(1), torch.ones(1, 6, 8))


def test_variants_agree():
    assert_agree("a2u", C=8, Cy=32, H=4, W=3, hp={"s_u": 5, "k": 3})
    assert_agree("a2u", C=16, Cy=64, H=2, W=5, B=2, hp={"s_u": 3, "k": 4})


def test_encoder_shapes_for_any_k():
    for k in (2, 3, 4, 5, 6, 7):
        case = make_case("a2u", C=32, H=5, W=3, hp={"k": k})
        _, m, inputs = build("a2u", case)
        assert m._encode(inputs["y"], m.filter_u, m.norm_u).shape == (1, 32, 5, 3)


def test_affinity_by_hand():
    """a = Σ_c U_c V_c / √Cy with a one-pixel check against the module's kernels."""
    case = make_case("a2u", C=32, H=2, W=2)
    _, m, inputs = build("a2u", case, perturbed=True)
    y = inputs["y"]
    U, V = m._encode(y, m.filter_u, m.norm_u), m._encode(y, m.filter_v, m.norm_v)
    a = (U * V).sum(1) / math.sqrt(32)
    p = m.point(y.mean((2, 3), keepdim=True))[0, :, 0, 0]
    z = p.view(9, 4)[:, 1] * a[0, 0, 1]  # sub-pixel t = 1 (row 0, column 1) of low-res (0, 1) → (0, 3)
    torch.testing.assert_close(m.kernels(y)[0, :, 0, 3], torch.sigmoid(z).softmax(0))


def test_paper_setting_counts():
    op = op_("a2u")
    case = make_case("a2u", C=256, H=64, W=64)
    assert op.params(case) == 2 * 257 + 4 * 256 + 257 * 36
    lo = 64 * 64
    assert op.macs(case) == lo * (2 * 256 * 36 + 256 + 36 + 36 * 256)


def test_check_messages():
    op = op_("a2u")
    assert op.check(make_case("a2u", C=48)) == (
        "a2u's GroupNorm has 32 groups, so it needs Cy divisible by 32 (got Cy=48)")
    assert op.check(make_case("a2u", s=3)) == (
        "a2u upsamples by a stride-2 encoder and a 2×2 pixel shuffle, so it needs s=2 (got s=3)")
    assert "more than one value per group" in op.check(make_case("a2u", H=1, W=1))
    assert "s_u=4 is not one of" in op.check(make_case("a2u", hp={"s_u": 4}))


def test_batch_elements_are_independent():
    """Per-sample filters are folded into a grouped conv; no sample may see another's filter."""
    case = make_case("a2u", C=32, H=3, W=2, B=3)
    _, m, inputs = build("a2u", case, perturbed=True)
    y = inputs["y"]
    torch.testing.assert_close(m.kernels(y), torch.cat([m.kernels(y[i:i + 1]) for i in range(3)]))
    # and the depthwise encoding of one channel is an ordinary strided conv with that sample's filter
    f = m.filter_u(torch.nn.functional.adaptive_avg_pool2d(y[1:2], 6))
    raw = torch.nn.functional.conv2d(y[1:2, 5:6], f, stride=2, padding=2)
    U = m._encode(y, m.filter_u, torch.nn.Identity())  # LeakyReLU only
    torch.testing.assert_close(U[1:2, 5:6], torch.nn.functional.leaky_relu(raw, 0.01))
