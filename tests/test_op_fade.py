"""FADE: the gate-at-1 equivalence, the semi-shift kernel generator, counts and messages."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from test_op_common import assert_agree, build, make_case, op_, run_impl


def test_gate_at_one_returns_y():
    case = make_case("fade", C=6, H=3, W=4, K=5)
    op, m, inputs = build("fade", case, perturbed=True)
    with torch.no_grad():
        m.gate.weight.zero_()
        m.gate.bias.fill_(1e3)
    for impl in ("unfold", "lean"):
        torch.testing.assert_close(run_impl(op, impl, case, m, inputs), inputs["y"], rtol=0, atol=0)


def test_kernel_logits_semi_shift():
    """Logits at high-res (i, j) = enc(en(y))(i, j) + enc(de(x)) at the parent, without enc's bias twice."""
    case = make_case("fade", C=4, H=3, W=3, K=3)
    _, m, inputs = build("fade", case, perturbed=True)
    x, y = inputs["x"], inputs["y"]
    hi = m.encoder(m.en(y))
    lo = F.conv2d(m.de(x), m.encoder.weight, padding=1)
    want = (hi + F.interpolate(lo, scale_factor=2, mode="nearest")).softmax(1)
    torch.testing.assert_close(m.kernels(x, y), want)
    torch.testing.assert_close(m.kernels(x, y).sum(1), torch.ones(1, 6, 6))


def test_variants_agree():
    assert_agree("fade", C=5, H=4, W=2, K=3, s=3, hp={"emb": 7})
    assert_agree("fade", C=4, H=1, W=3, K=7, B=2)


def test_paper_setting_counts():
    op = op_("fade")
    case = make_case("fade", C=256, H=64, W=64, K=5)
    assert op.params(case) == 257 * 64 + 256 * 64 + 9 * 64 * 25 + 25 + 257
    lo, hi = 64 * 64, 128 * 128
    assert op.macs(case) == (hi * 256 * 64 + lo * 256 * 64 + (hi + lo) * 9 * 64 * 25 + lo * 256
                             + hi * 25 * 256 + 2 * hi * 256)


def test_check_messages():
    op = op_("fade")
    assert op.check(make_case("fade", C=64, Cy=32)) == (
        "fade blends y into the output, so it needs Cy == C (got Cy=32, C=64); set Cy = C")
    assert "odd kernel size" in op.check(make_case("fade", K=2))
    assert op.check(make_case("fade", hp={"emb": 1.5})) == "fade needs emb to be a positive integer (got emb=1.5)"
    assert not op.has_Cy  # Cy is not a free axis: sweeps give y the channels of x
