"""The foundation-model feature upsamplers: impls vs float64 references, gradients, counts, convexity.

Widths are shrunk through hyperparameters (qk_dim, dim, patch) so every check runs on tiny shapes; the lean
attention's chunk budget is forced down so every chunked path runs several chunks.
"""

from __future__ import annotations

import pytest
import torch
from test_op_common import Poison, build, make_case, op_, perturb, reference, rel_err, run_impl

from upbench.operators import vfm_common

VFM = ("featup-jbu", "lift", "loftup", "jafar", "anyup", "naf", "uplift")
CONVEX = ("jafar", "anyup", "naf", "uplift")

# Tiny widths per operator; each shape is border-heavy (windows reach past the map) and/or non-square.
SMALL = {
    "featup-jbu": {"patch": 2},
    "lift": {"patch": 8},
    "loftup": {"patch": 2},
    "jafar": {"patch": 2, "qk_dim": 16},
    "anyup": {"patch": 2, "qk_dim": 16, "window_ratio": 0.3},
    "naf": {"patch": 2, "dim": 32, "heads": 2, "kernel": 3},
    "uplift": {"patch": 2},
}
SHAPES = [dict(H=3, W=5, s=2), dict(H=4, W=3, s=4, B=2), dict(H=2, W=2, s=8)]


def case_of(name: str, dtype: str = "float32", C: int = 8, **kw):
    return make_case(name, C=C, dtype=dtype, hp=SMALL[name], **kw)


def built(name: str, case):
    """Module with weights moved off their init, scaled so softmaxes stay far from one-hot."""
    op, m, inputs = build(name, case)
    perturb(m, case.seed(), scale=0.05 if name == "uplift" else 0.3)
    return op, m, inputs


def runs(op, case, backward: bool = False):
    """The impls that can run ``case`` here (kernel impls need their device; fused ones are forward-only)."""
    return [i for i in op.impls if i.skip_reason(case) is None and (i.backward or not backward)]


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    monkeypatch.setattr(vfm_common, "CHUNK_ELEMENTS", 1)


@pytest.mark.parametrize("name", VFM)
def test_registered(name):
    op = op_(name)
    assert op.family == "foundation" and op.description
    assert "official" in {i.name for i in op.impls}
    assert op.check(make_case(name, C=384, H=28, W=28, s=16)) is None


@pytest.mark.parametrize("name", VFM)
@pytest.mark.parametrize("shape", range(len(SHAPES)))
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_impls_match_reference(name, shape, dtype):
    case = case_of(name, dtype, **SHAPES[shape])
    if op_(name).check(case):  # NAF's window needs h, w ≥ kernel
        case = case_of(name, dtype, H=3, W=4, s=SHAPES[shape]["s"])
    op, m, inputs = built(name, case)
    with torch.no_grad():
        ref = reference(op, case, m, inputs)
        assert ref.shape == (case.B, case.C, *case.out_hw)
        outs = {i.name: run_impl(op, i.name, case, m, inputs) for i in runs(op, case)}
    for impl, out in outs.items():
        assert rel_err(out, ref) <= op.tolerance[dtype], (name, impl, rel_err(out, ref))
    if "lean" in outs:  # official and lean agree with each other as well
        assert rel_err(outs["lean"], outs["official"].double()) <= op.tolerance[dtype]


@pytest.mark.parametrize("name", VFM)
def test_poisoned_buffers(name):
    case = case_of(name, H=3, W=4, s=2)
    op, m, inputs = built(name, case)
    with torch.no_grad():
        ref = reference(op, case, m, inputs)
        for impl in runs(op, case):
            with Poison():
                out = run_impl(op, impl.name, case, m, inputs)
            assert rel_err(out, ref) <= op.tolerance["float32"], (name, impl.name)


@pytest.mark.parametrize("name", VFM)
def test_gradcheck(name):
    """float64 gradcheck w.r.t. x and the image; every impl's input and parameter gradients equal the
    reference's. LoftUp's image code has phases up to e^10 rad, beyond what finite differences resolve, so
    its image gradient is checked against the reference's only."""
    case = case_of(name, "float64", C=4, H=3, W=3, s=2)
    op, m, inputs = built(name, case)
    m = m.double()
    x, image = (t.double() for t in inputs.values())
    for impl in runs(op, case, backward=True):
        fn = impl.factory(case, m)
        if name == "loftup":
            assert torch.autograd.gradcheck(lambda x, fn=fn: fn(x, image), [x.requires_grad_(True)], fast_mode=True)
        else:
            assert torch.autograd.gradcheck(fn, [x.requires_grad_(True), image.requires_grad_(True)],
                                            fast_mode=True), (name, impl.name)
    leaves = [x.requires_grad_(True), image.requires_grad_(True), *m.parameters()]
    ref = op.reference(case, {"x": x, "image": image}, m)
    g = torch.randn(ref.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    want = torch.autograd.grad(ref, leaves, g, allow_unused=True)
    for impl in runs(op, case, backward=True):
        got = torch.autograd.grad(impl.factory(case, m)(x, image), leaves, g, allow_unused=True)
        for a, b in zip(got, want, strict=True):
            assert (a is None) == (b is None)
            if a is not None:
                torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9)


# The public sizes users compare: defaults, C = 128 … 1024; featup-jbu at s = 16 (the shipped 4-layer stack).
PUBLIC_PARAMS = {  # each equals the official module's count (checked against the official code)
    "featup-jbu": (41444, 172772, 615524, 1074532),
    "lift": (180816, 1187280, 4417296, 7717520),
    "loftup": (743446, 4303894, 15051286, 25820694),
    "jafar": (562688, 628480, 727168, 792960),
    "anyup": (878080, 878080, 878080, 878080),
    "naf": (662528, 662528, 662528, 662528),
    "uplift": (642065, 789521, 1010705, 1158161),
}


@pytest.mark.parametrize("name", VFM)
def test_params_formula(name):
    op = op_(name)
    for C, want in zip((128, 384, 768, 1024), PUBLIC_PARAMS[name], strict=True):
        case = make_case(name, C=C, H=28, W=28, s=16)
        n = sum(p.numel() for p in op.module(case).parameters())
        assert op.params(case) == n == op.params_formula(case) == want, (name, C, n)


@pytest.mark.parametrize("name", CONVEX)
def test_constant_map_stays_constant(name):
    """Convex combinations of the low-res features map a constant feature map to the same constant."""
    case = case_of(name, "float64", H=3, W=5, s=4)
    if op_(name).check(case):
        case = case_of(name, "float64", H=3, W=4, s=4)
    op, m, inputs = built(name, case)
    inputs = {**inputs, "x": torch.full_like(inputs["x"], 0.7)}
    m = m.double()
    with torch.no_grad():
        for impl in runs(op, case):
            ins = [t.double() for t in inputs.values()]
            out = impl.factory(case, m)(*ins)
            torch.testing.assert_close(out, torch.full_like(out, ins[0].flatten()[0].item()), rtol=0, atol=1e-12)


def test_macs_count_the_scaling_terms():
    """Attention MACs grow with L·S; the window operators' with L·window only."""
    for name in ("jafar", "loftup"):
        op = op_(name)
        a, b = (op.mac_terms(make_case(name, C=384, H=28, W=28, s=s)) for s in (2, 4))
        assert b["qk"] == 4 * a["qk"] and b["av"] == 4 * a["av"]
    naf = op_("naf").mac_terms(make_case("naf", C=384, H=28, W=28, s=16))
    assert naf["av"] == 448 * 448 * 81 * 384
    full = 448 * 448 * 28 * 28 * 384
    assert op_("anyup").mac_terms(make_case("anyup", C=384, H=28, W=28, s=16))["av"] < full / 10


def test_checks():
    assert "at least kernel×kernel" in op_("naf").check(make_case("naf", H=8, W=28))
    assert "2× steps" in op_("uplift").check(make_case("uplift", s=3))
    assert "2× steps" in op_("lift").check(make_case("lift", s=6))
    assert "patch=12" in op_("lift").check(make_case("lift", hp={"patch": 12}))
    assert op_("jafar").check(make_case("jafar", hp={"patch": 0})) == (
        "jafar needs patch to be a positive integer (got patch=0)")


def test_anyup_window_matches_shipped_extent():
    """At 28² tokens → 448², window_ratio 0.1 lets each query see a 6–7 row × 6–7 column block."""
    from upbench.operators.anyup import windows

    lo, hi = windows(448, 28, 0.1)
    assert set((hi - lo).tolist()) <= {3, 4, 5, 6, 7} and (hi - lo)[100:300].min() >= 6


def test_uplift_official_materialises_stacked_product():
    """The official attender's 17× product is what the lean one avoids: same values, no 17× tensor."""
    from upbench.memory import peak_cpu

    case = case_of("uplift", C=64, H=8, W=8, s=2)
    op, m, inputs = built("uplift", case)
    x = inputs["x"]
    a = torch.rand(1, 17, 16, 16).softmax(1)
    from upbench.operators.uplift import attend_inplace, attend_stacked

    with torch.no_grad():
        torch.testing.assert_close(attend_inplace(x, a), attend_stacked(x, a))
        out_bytes = x.numel() * 4 * 4
        assert peak_cpu(lambda: attend_stacked(x, a)) >= 17 * out_bytes
        assert peak_cpu(lambda: attend_inplace(x, a)) <= 3 * out_bytes
    del op, m
