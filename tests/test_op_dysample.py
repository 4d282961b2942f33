"""DySample: zero offsets equal bilinear, styles and scopes, counts and messages."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_op_common import assert_agree, build, make_case, op_, run_impl

from upbench.operators.dysample import static_positions


@pytest.mark.parametrize("style", ["lp", "pl"])
@pytest.mark.parametrize("dynamic", [False, True])
@pytest.mark.parametrize("s,H,W", [(2, 3, 5), (3, 2, 2), (2, 1, 1), (4, 3, 2)])
def test_zero_offsets_equal_bilinear(style, dynamic, s, H, W):
    case = make_case("dysample", C=16 * s * s, H=H, W=W, s=s, hp={"style": style, "dynamic": dynamic})
    op, m, inputs = build("dysample", case)
    with torch.no_grad():
        m.offset.weight.zero_()
        m.offset.bias.zero_()
    want = F.interpolate(inputs["x"].double(), scale_factor=s, mode="bilinear", align_corners=False)
    torch.testing.assert_close(run_impl(op, "grid_sample", case, m, inputs, dtype=torch.float64), want)
    torch.testing.assert_close(op.reference(case, {"x": inputs["x"].double()}, m.double()), want)


@pytest.mark.parametrize("hp", [{"style": "pl"}, {"dynamic": True}, {"style": "pl", "dynamic": True},
                                {"groups": 2}, {"groups": 1}])
def test_variants_agree(hp):
    assert_agree("dysample", C=16, H=3, W=5, hp=hp)
    assert_agree("dysample", C=36, H=2, W=3, s=3, hp=hp)


def test_large_offsets_reach_the_border():
    """Offsets of several pixels: sampling points leave the map and clamp to its border (padding 'border')."""
    case = make_case("dysample", C=8, H=4, W=5)
    op, m, inputs = build("dysample", case)
    with torch.no_grad():
        m.offset.bias.normal_(0, 20)
    out = run_impl(op, "grid_sample", case, m, inputs, dtype=torch.float64)
    ref = op.reference(case, {"x": inputs["x"].double()}, m.double())
    torch.testing.assert_close(out, ref)


def test_static_positions():
    p = static_positions(2, 1).view(2, 2, 2)
    torch.testing.assert_close(p[0], torch.tensor([[-0.25, 0.25], [-0.25, 0.25]]))  # x follows the column
    torch.testing.assert_close(p[1], torch.tensor([[-0.25, -0.25], [0.25, 0.25]]))  # y follows the row
    assert static_positions(3, 4).shape == (1, 2 * 4 * 9, 1, 1)


def test_init():
    case = make_case("dysample", C=64, hp={"dynamic": True})
    _, m, _ = build("dysample", case)
    assert m.offset.out_channels == 2 * 4 * 4 and m.scope.weight.abs().max() == 0
    assert abs(m.offset.weight.std().item() - 0.001) < 3e-4


def test_counts():
    op = op_("dysample")
    c = make_case("dysample", C=256, H=64, W=64)
    assert op.params(c) == 257 * 32 and op.macs(c) == 64 * 64 * 256 * 32 + 4 * 256 * 128 * 128
    pl = make_case("dysample", C=256, H=64, W=64, hp={"style": "pl", "dynamic": True})
    assert op.params(pl) == 2 * (65 * 8)


def test_check_messages():
    op = op_("dysample")
    assert op.check(make_case("dysample", C=6)) == (
        "dysample with groups=4 needs C divisible by 4 (got C=6); pick groups dividing C")
    assert op.check(make_case("dysample", C=12, s=3, hp={"style": "pl", "groups": 2})) == (
        "dysample style pl pixel-shuffles x first, so it needs C divisible by s²=9 (got C=12); use style lp")
    assert op.check(make_case("dysample", hp={"groups": 0})) == (
        "dysample needs groups to be a positive integer (got groups=0)")
    assert "style='ps' is not one of" in op.check(make_case("dysample", hp={"style": "ps"}))


def test_offset_channel_layout():
    """Offset channel (component, group, sub-pixel): x components first, then y; group-major; t = i·s + j."""
    case = make_case("dysample", C=8, H=3, W=4)
    op, m, inputs = build("dysample", case)
    with torch.no_grad():
        m.offset.weight.zero_()
        m.offset.bias.zero_()
        m.offset.bias[0 * 16 + 1 * 4 + 3] = 2.0  # x offset +0.5 px for group 1, child (1, 1)
        m.offset.bias[1 * 16 + 2 * 4 + 2] = -4.0  # y offset −1 px for group 2, child (1, 0)
    p = m.positions(inputs["x"])  # (B, G, sH, sW, 2) as (column, row)
    assert p[0, 1, 3, 5].tolist() == [2 + 0.25 + 0.5, 1 + 0.25]  # low-res (1, 2), child (1, 1)
    assert p[0, 2, 3, 4].tolist() == [2 - 0.25, 1 + 0.25 - 1]  # low-res (1, 2), child (1, 0)
    assert p[0, 0, 3, 5].tolist() == [2 + 0.25, 1 + 0.25]
