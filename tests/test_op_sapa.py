"""SAPA-I/B/G modules: structure, impl wiring from the core impls, equivalences and messages."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from test_op_common import assert_agree, build, make_case, op_, run_impl

from upbench.operators import sapa, sapa_core
from upbench.plugin import Impl


@pytest.mark.parametrize("name", ["sapa-i", "sapa-b", "sapa-g"])
def test_variants_agree(name):
    assert_agree(name, C=6, H=4, W=3, K=5, hp={"d": 3} if name != "sapa-i" else {})
    if name != "sapa-i":
        assert_agree(name, C=4, Cy=7, H=2, W=3, K=3, s=3, B=2)


def test_output_is_channels_last_view():
    case = make_case("sapa-b")
    op, m, inputs = build("sapa-b", case)
    out = run_impl(op, "lean", case, m, inputs)
    assert out.shape == (1, 8, 6, 8) and out.is_contiguous(memory_format=torch.channels_last)


def test_sapa_i_is_the_core_on_normalised_features():
    case = make_case("sapa-i", C=5, H=3, W=4, K=3)
    op, m, inputs = build("sapa-i", case)
    x, y = inputs["x"].double(), inputs["y"].double()
    cl = lambda t: t.permute(0, 2, 3, 1)  # noqa: E731
    ln = lambda t: F.layer_norm(cl(t), (5,))  # noqa: E731
    want = sapa_core.core_reference(ln(y), ln(x), cl(x), 3, 2).permute(0, 3, 1, 2)
    torch.testing.assert_close(op.reference(case, {"x": x, "y": y}, m.double()), want)
    assert op.params(case) == 0 and not list(m.parameters())


def test_sapa_g_with_gate_at_one_is_sapa_b():
    case_g = make_case("sapa-g", C=6, Cy=5, H=3, W=4, K=3, hp={"d": 4})
    op_g, m_g, inputs = build("sapa-g", case_g, perturbed=True)
    case_b = make_case("sapa-b", C=6, Cy=5, H=3, W=4, K=3, hp={"d": 4})
    op_b = op_("sapa-b")
    m_b = op_b.module(case_b)
    m_b.load_state_dict({k: v for k, v in m_g.state_dict().items() if not k.startswith(("gate", "q_x"))})
    with torch.no_grad():
        m_g.gate.weight.zero_()
        m_g.gate.bias.fill_(1e3)  # σ = 1 exactly in floating point
    for impl in ("unfold", "lean"):
        torch.testing.assert_close(run_impl(op_g, impl, case_g, m_g, inputs),
                                   run_impl(op_b, impl, case_b, m_b, inputs), rtol=0, atol=0)


def test_sapa_g_gate_at_zero_uses_linear_x_of_raw_x():
    case = make_case("sapa-g", C=6, Cy=5, H=2, W=3, K=3, hp={"d": 4})
    op, m, inputs = build("sapa-g", case, perturbed=True)
    m = m.double()
    with torch.no_grad():
        m.gate.weight.zero_()
        m.gate.bias.fill_(-1e3)
    x, y = inputs["x"].double(), inputs["y"].double()
    q, _, _ = m.qkv(x, y)
    want = F.linear(x.permute(0, 2, 3, 1), m.q_x.weight, m.q_x.bias).repeat_interleave(2, 1).repeat_interleave(2, 2)
    torch.testing.assert_close(q, want)


def test_init():
    torch.manual_seed(0)
    m = sapa.SapaModule("g", 256, 256, 32, 5, 2)
    for lin in (m.q, m.k, m.gate, m.q_x):
        assert lin.bias.abs().max() == 0
    # trunc_normal_'s bounds are absolute (±2, as in timm), so at std 0.02 it is a plain normal in effect
    assert abs(m.q.weight.std().item() - 0.02) < 0.001
    assert torch.equal(m.norm_x.weight, torch.ones(256)) and m.norm_x.eps == 1e-5
    assert m.q.out_features == 32


def test_impls_follow_core_impls(monkeypatch):
    """One impl per core impl, carrying its devices/dtypes/backward/availability (a forward-only CUDA core stays
    forward-only and CUDA-only in the module)."""
    fake = Impl("fake", lambda c, m: None, "fake core", devices=("cuda",), dtypes=("float16",), backward=False,
                available=lambda dev: "no fake device")
    monkeypatch.setitem(sapa_core.CORE_IMPLS, "fake", sapa_core.core_lean)
    monkeypatch.setattr(type(sapa_core.SAPA_CORE), "impls", (*sapa_core.SAPA_CORE.impls, fake))
    impls = {i.name: i for i in sapa._core_impls()}
    assert list(impls) == list(sapa_core.CORE_IMPLS)
    f = impls["fake"]
    assert (f.devices, f.dtypes, f.backward, f.available("cuda")) == (("cuda",), ("float16",), False, "no fake device")
    bwd = make_case("sapa-b", device="cuda", dtype="float16", pass_="bwd")
    assert f.skip_reason(bwd) == "impl fake is forward-only"
    for name in ("sapa-i", "sapa-b", "sapa-g"):
        assert [i.name for i in op_(name).impls] == [n for n in sapa_core.CORE_IMPLS if n != "fake"]


def test_paper_setting_counts():
    case = make_case("sapa-b", C=256, H=64, W=64, K=5)
    op = op_("sapa-b")
    assert op.params(case) == 4 * 256 + 2 * (256 * 32 + 32)
    hi = 128 * 128
    assert op.macs(case) == hi * 256 * 32 + 64 * 64 * 256 * 32 + hi * 25 * (32 + 256)
    g = make_case("sapa-g", C=256, H=64, W=64, K=5)
    assert op_("sapa-g").macs(g) - op.macs(case) == 64 * 64 * (256 + 256 * 32) + 2 * hi * 32


def test_check_messages():
    assert op_("sapa-i").check(make_case("sapa-i", C=64, Cy=32)) == (
        "sapa-i compares y and x features directly, so it needs Cy == C (got Cy=32, C=64); "
        "set Cy = C or use sapa-b, which projects both to d")
    assert op_("sapa-b").check(make_case("sapa-b", K=4)) == (
        "K=4 is even or < 1; sapa-b needs an odd kernel size (1, 3, 5, …)")
    assert op_("sapa-b").check(make_case("sapa-b", hp={"d": 0})) == (
        "sapa-b needs d to be a positive integer (got d=0)")
    assert op_("sapa-b").check(make_case("sapa-b", C=64, Cy=32)) is None


def test_reference_does_not_share_qkv_code():
    """The reference applies Linear_x at high res on nearest(x): a bug in the low-res shortcut would show."""
    case = make_case("sapa-g", C=6, H=3, W=2, K=3)
    op, m, inputs = build("sapa-g", case, perturbed=True)
    m2 = copy.deepcopy(m)
    with torch.no_grad():
        m2.q_x.bias.add_(1.0)
    ref = op.reference(case, {k: v.double() for k, v in inputs.items()}, m.double())
    assert (run_impl(op, "lean", case, m2, inputs, dtype=torch.float64) - ref).abs().max() > 1e-3
