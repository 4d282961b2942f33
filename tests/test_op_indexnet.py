"""IndexNet: variants, the D ≡ 1 equivalence with nearest, and messages."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_op_common import assert_agree, build, make_case, op_, run_impl


@pytest.mark.parametrize("index", ["holistic", "depthwise"])
@pytest.mark.parametrize("nonlinear", [True, False])
@pytest.mark.parametrize("context", [True, False])
def test_variants_agree(index, nonlinear, context):
    hp = {"index": index, "nonlinear": nonlinear, "context": context}
    assert_agree("indexnet", C=4, H=3, W=5, hp=hp)
    assert_agree("indexnet", C=4, Cy=4 if index == "depthwise" else 6, H=1, W=2, B=2, hp=hp)


@pytest.mark.parametrize("index", ["holistic", "depthwise"])
def test_index_one_is_nearest(index, monkeypatch):
    case = make_case("indexnet", C=4, hp={"index": index})
    op, m, inputs = build("indexnet", case)
    x = inputs["x"]
    want = F.interpolate(x, scale_factor=2, mode="nearest")
    for impl in ("interp", "broadcast"):
        monkeypatch.setattr(type(m), "index", lambda self, y: torch.ones(y.shape[0], 1, *y.shape[2:]))
        torch.testing.assert_close(run_impl(op, impl, case, m, inputs), want, rtol=0, atol=0)
        monkeypatch.undo()
    # The real block with its last conv zeroed predicts logits 0: D = σ(0) = ½ everywhere.
    with torch.no_grad():
        m.block[-1].weight.zero_()
    torch.testing.assert_close(op.reference(case, inputs, m), want / 2)


def test_index_map_shapes():
    for index, channels in (("holistic", 1), ("depthwise", 4)):
        case = make_case("indexnet", C=4, H=3, W=5, hp={"index": index})
        _, m, inputs = build("indexnet", case)
        assert m.index(inputs["y"]).shape == (1, channels, 6, 10)


def test_paper_setting_counts():
    """Holistic, nonlinear, context at C = Cy = 256, 64² → 128²: the ~2.1 M parameters per stage behind the
    +12.6 M that SegFormer's six stages cost in the SAPA comparison."""
    op = op_("indexnet")
    case = make_case("indexnet", C=256, H=64, W=64)
    assert op.params(case) == 16 * 256 * 512 + 2 * 512 + 512 * 4
    assert op.macs(case) == 64 * 64 * (16 * 256 * 512 + 512 * 4) + 256 * 128 * 128


def test_check_messages():
    op = op_("indexnet")
    assert op.check(make_case("indexnet", C=64, Cy=32, hp={"index": "depthwise"})) == (
        "indexnet variant depthwise needs Cy == C (got Cy=32, C=64); set Cy = C or use index=holistic")
    assert op.check(make_case("indexnet", s=4)) == (
        "indexnet predicts a 2×2 index per low-res cell, so it needs s=2 (got s=4)")
    assert "index='channel' is not one of" in op.check(make_case("indexnet", hp={"index": "channel"}))
    assert op.check(make_case("indexnet", C=64, Cy=32)) is None  # holistic takes any Cy


def test_depthwise_index_of_channel_c_sees_only_channel_c():
    case = make_case("indexnet", C=4, H=3, W=3, hp={"index": "depthwise"})
    _, m, inputs = build("indexnet", case, perturbed=True)
    y = inputs["y"]
    y2 = y.clone()
    y2[:, 2] += 1.0
    d = (m.index(y2) - m.index(y)).abs().amax((0, 2, 3))
    assert d[2] > 0 and d[[0, 1, 3]].max() == 0
