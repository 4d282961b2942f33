"""CARAFE: structure, kernels, hyperparameters and messages."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from test_op_common import assert_agree, build, make_case, op_, run_impl

from upbench.operators.carafe import CarafeModule


def test_kernels_are_normalised_per_group():
    case = make_case("carafe", C=8, K=5, hp={"groups": 2})
    _, m, inputs = build("carafe", case, perturbed=True)
    M = m.kernels(inputs["x"])
    assert M.shape == (1, 2 * 25, 6, 8)
    torch.testing.assert_close(M.view(1, 2, 25, 6, 8).sum(2), torch.ones(1, 2, 6, 8))


def test_zero_encoder_is_box_filter_then_nearest():
    """An all-zero content encoder predicts uniform kernels: every impl gives box filter + nearest."""
    case = make_case("carafe", C=4, H=3, W=5, K=5)
    op, m, inputs = build("carafe", case, perturbed=True)
    with torch.no_grad():
        m.encoder.weight.zero_()
        m.encoder.bias.zero_()
    x = inputs["x"].double()
    want = F.interpolate(F.avg_pool2d(x, 5, 1, 2, count_include_pad=True), scale_factor=2, mode="nearest")
    for impl in ("unfold", "lean"):
        torch.testing.assert_close(run_impl(op, impl, case, m, inputs, dtype=torch.float64), want)


def test_init():
    torch.manual_seed(0)
    m = CarafeModule(64, 5, 2)
    assert m.encoder.out_channels == 100 and m.compressor.out_channels == 64
    assert abs(m.encoder.weight.std().item() - 0.001) < 2e-4
    assert m.encoder.bias.abs().max() == 0 and m.compressor.bias.abs().max() == 0
    bound = (6 / (64 + 64)) ** 0.5  # xavier-uniform of a 64→64 1×1 conv
    assert m.compressor.weight.abs().max() <= bound


def test_hyperparameter_variants_agree():
    assert_agree("carafe", C=8, H=4, W=3, K=3, hp={"groups": 4, "Cm": 5, "k_enc": 5})
    assert_agree("carafe", C=6, H=2, W=5, K=1, s=3, hp={"groups": 3, "k_enc": 1})


def test_paper_setting_counts():
    case = make_case("carafe", C=256, H=64, W=64, K=5)
    op = op_("carafe")
    assert op.params(case) == 256 * 64 + 64 + 9 * 64 * 100 + 100
    assert op.macs(case) == 64 * 64 * (256 * 64 + 9 * 64 * 100) + 128 * 128 * 25 * 256


def test_check_messages():
    op = op_("carafe")
    assert op.check(make_case("carafe", C=6, hp={"groups": 4})) == (
        "carafe with groups=4 needs C divisible by 4 (got C=6); pick groups dividing C")
    assert "odd kernel size" in op.check(make_case("carafe", K=4))
    assert "k_enc=2 is not one of" in op.check(make_case("carafe", hp={"k_enc": 2}))
    assert op.check(make_case("carafe", hp={"Cm": 0})) == "carafe needs Cm to be a positive integer (got Cm=0)"
    assert op.check(make_case("carafe", hp={"groups": "2"})) == (
        "carafe needs groups to be a positive integer (got groups='2')")
    assert "s=0" in op.check(make_case("carafe", s=0))
