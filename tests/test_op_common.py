"""Checks every zoo operator gets: impl vs float64 reference, poisoned buffers, gradcheck, counts.

Also the helpers the per-operator test files import (`build`, `run_impl`, `reference`, `rel_err`): they
follow the harness's order — seed, module in float32 on the CPU, cast, factory, call — without the runner.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from upbench import registry
from upbench.cases import Case
from upbench.plugin import Operator

# Every registered operator gets the checks below unless it is listed here with where it is checked instead:
# a new operator cannot skip them silently.
CHECKED_ELSEWHERE = {
    "nearest": "parameter-free interpolation: torch's own op; smoke-suite agreement in tests/test_runner.py",
    "bilinear": "parameter-free interpolation: torch's own op; smoke-suite agreement in tests/test_runner.py",
    "sapa": "the core op on given q, k, v (no module): tests/test_sapa_core.py",
    **{n: "foundation-model family (image-guided, own shapes and ratios): tests/test_op_vfm.py"
       for n in ("featup-jbu", "lift", "loftup", "jafar", "anyup", "naf", "uplift")},
}
ZOO = tuple(sorted(n for n in registry.operators() if n not in CHECKED_ELSEWHERE))
aten = torch.ops.aten


def op_(name: str) -> Operator:
    return registry.get(name)


def make_case(name: str, **kw) -> Case:
    """A valid tiny case for operator ``name`` (defaults filled the way the sweep expansion does)."""
    op = op_(name)
    base = {"C": 32 if name == "a2u" else 8, "H": 3, "W": 4, "s": 2, "K": 3}
    base.update(kw)
    hp = {**op.defaults(), **base.pop("hp", {})}
    if not op.uses_K:
        base["K"] = None
    return Case(op=name, hp=tuple(sorted(hp.items())), **base)


def perturb(m: torch.nn.Module | None, seed: int = 0, scale: float = 0.5) -> None:
    """Move every parameter and float buffer off its init so kernels are far from uniform (gate away from 0.5,
    BN statistics non-trivial): the agreement tests must see real weights, not a near-constant map."""
    if m is None:
        return
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in [*m.named_parameters(), *m.named_buffers()]:
            if not t.is_floating_point() or name.endswith("init_pos"):
                continue
            noise = torch.randn(t.shape, generator=g, dtype=t.dtype) * scale
            t.copy_(noise.abs() + 0.5 if name.endswith("running_var") else t + noise)


def build(name: str, case: Case, perturbed: bool = False):
    op = op_(name)
    assert op.check(case) is None, op.check(case)
    gen = torch.Generator().manual_seed(case.seed())
    inputs = op.inputs(case, gen)
    torch.manual_seed(case.seed())
    m = op.module(case)
    if m is not None:
        m.eval()
        if perturbed:
            perturb(m, case.seed())
    return op, m, inputs


def run_impl(op: Operator, impl_name: str, case: Case, m, inputs, dtype=None, grad: bool = False):
    dtype = dtype or case.torch_dtype
    mm = copy.deepcopy(m).to(case.device, dtype) if m is not None else None
    fn = op.impl(impl_name).factory(case, mm)
    args = [t.to(dtype).requires_grad_(grad) for t in inputs.values()]
    return fn(*args)


def reference(op: Operator, case: Case, m, inputs):
    m64 = copy.deepcopy(m).double() if m is not None else None
    return op.reference(case, {k: v.double() for k, v in inputs.items()}, m64)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    assert out.shape == ref.shape, (out.shape, ref.shape)
    err = (out.double() - ref).abs().max().item()
    return math.inf if math.isnan(err) else err / ref.pow(2).mean().sqrt().item()


def runnable(op: Operator, case: Case, pass_: str = "fwd") -> list[str]:
    return [i.name for i in op.impls if i.skip_reason(case.with_(pass_=pass_)) is None]


def assert_agree(name: str, dtypes: tuple[str, ...] = ("float64", "float32"), **kw) -> None:
    """Every runnable impl of ``name`` on ``make_case(name, **kw)`` (perturbed weights) vs the reference."""
    for dtype in dtypes:
        case = make_case(name, dtype=dtype, **kw)
        op, m, inputs = build(name, case, perturbed=True)
        with torch.no_grad():
            ref = reference(op, case, m, inputs)
            impls = runnable(op, case)
            assert impls
            for impl in impls:
                err = rel_err(run_impl(op, impl, case, m, inputs), ref)
                assert err <= op.tolerance[dtype], (name, impl, kw, dtype, err)


# Shapes: interior-rich, border-heavy (H or W ≤ K), non-square, odd, 1×1, other scales and kernel sizes.
SHAPES = [
    dict(H=6, W=7, K=3),
    dict(H=3, W=5, K=5),  # every pixel is a border pixel
    dict(H=1, W=1, K=3),
    dict(H=5, W=2, K=7, B=2),
    dict(H=4, W=3, s=3, K=3),
    dict(H=2, W=5, s=1, K=5),
]


def _shape_ok(name: str, shape: dict) -> bool:
    return op_(name).check(make_case(name, **shape)) is None


CELLS = [(n, i) for n in ZOO for i in range(len(SHAPES)) if _shape_ok(n, SHAPES[i])]


def test_every_registered_operator_is_checked():
    assert set(CHECKED_ELSEWHERE) <= set(registry.operators())  # no stale exemption
    assert ZOO and set(ZOO) == set(SEEN), "a new operator needs its SEEN entry for the MAC check below"


@pytest.mark.parametrize("name", ZOO)
def test_registered_and_described(name):
    op = op_(name)
    assert op.name == name and op.description and op.impls
    assert op.check(make_case(name)) is None
    assert len({i.name for i in op.impls}) == len(op.impls)


@pytest.mark.parametrize("name,shape", CELLS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_impls_match_reference(name, shape, dtype):
    case = make_case(name, dtype=dtype, **SHAPES[shape])
    for perturbed in (False, True):
        op, m, inputs = build(name, case, perturbed)
        with torch.no_grad():
            ref = reference(op, case, m, inputs)
            assert ref.shape == (case.B, case.C, *case.out_hw)
            for impl in runnable(op, case):
                err = rel_err(run_impl(op, impl, case, m, inputs), ref)
                assert err <= op.tolerance[dtype], (name, impl, perturbed, err)


class Poison(TorchDispatchMode):
    """Fill every uninitialised floating-point allocation with NaN, so reading a slot nobody wrote shows."""

    ALLOC = {aten.empty.memory_format, aten.empty_strided.default, aten.new_empty.default,
             aten.new_empty_strided.default, aten.empty_like.default}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in self.ALLOC and out.is_floating_point():
            out.fill_(math.nan)
        return out


@pytest.mark.parametrize("name", ZOO)
def test_poisoned_buffers(name):
    case = make_case(name, H=3, W=5, K=5 if op_(name).uses_K else None)
    op, m, inputs = build(name, case, perturbed=True)
    with torch.no_grad():
        ref = reference(op, case, m, inputs)
        for impl in runnable(op, case):
            with Poison():
                out = run_impl(op, impl, case, m, inputs)
            assert rel_err(out, ref) <= op.tolerance["float32"], (name, impl)


@pytest.mark.parametrize("name", ZOO)
def test_gradcheck(name):
    """float64 gradcheck of each impl with a backward w.r.t. its inputs, and w.r.t. parameters through the
    reference; then each impl's parameter gradients against the reference's."""
    case = make_case(name, dtype="float64", H=3, W=2, K=3 if op_(name).uses_K else None)
    op, m, inputs = build(name, case, perturbed=True)
    m = m.double() if m is not None else None
    ins = [t.double().requires_grad_(True) for t in inputs.values()]
    for impl in runnable(op, case, "fwd+bwd"):
        fn = op.impl(impl).factory(case, m)
        assert torch.autograd.gradcheck(fn, ins, fast_mode=True), (name, impl)
    if m is None or not list(m.parameters()):
        return
    ref_out = op.reference(case, {k: v.double() for k, v in inputs.items()}, m)
    g = torch.randn(ref_out.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    want = torch.autograd.grad(ref_out, list(m.parameters()), g, allow_unused=True)
    for impl in runnable(op, case, "fwd+bwd"):
        out = op.impl(impl).factory(case, m)(*[t.double() for t in inputs.values()])
        got = torch.autograd.grad(out, list(m.parameters()), g, allow_unused=True)
        for a, b in zip(got, want, strict=True):
            assert (a is None) == (b is None)
            if a is not None:
                torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", ZOO)
def test_params_formula(name):
    op = op_(name)
    for C in (32, 64, 96, 256):
        for Cy in (None, 64):
            case = make_case(name, C=C, Cy=Cy if op.has_Cy else None)
            if op.check(case) is None:
                n = sum(p.numel() for p in op.module(case).parameters())
                assert op.params(case) == n == op.params_formula(case), (name, C, Cy)


# What FlopCounterMode sees, per operator: the impl run under the counter, the mac_terms it can see, and
# the work it counts that §6 does not charge (the per-sample filter generators of A2U on pooled y).
# Unseen terms: elementwise products (IndexNet's D ⊙ x, gate blends, DySample's scope product) and
# gathers (the lean reassembly, grid_sample's bilinear taps) — the `unfold` impls express reassembly and
# the SAPA similarity/aggregation as einsum → bmm, which the counter does see.
SEEN = {
    "carafe": ("unfold", ("compressor", "encoder", "reassembly")),
    "indexnet": ("interp", ("conv0", "conv1")),
    "a2u": ("unfold", ("encode_u", "encode_v", "affinity", "reassembly")),
    "sapa-i": ("unfold", ("similarity", "aggregation")),
    "sapa-b": ("unfold", ("query", "key", "similarity", "aggregation")),
    "sapa-g": ("unfold", ("query", "key", "similarity", "aggregation", "gate", "query_x")),
    "fade": ("unfold", ("en", "de", "encoder_hi", "encoder_lo", "gate", "reassembly")),
    "dysample": ("grid_sample", ("offset", "scope")),
    "pixelshuffle": ("torch", ("conv",)),
    "deconv": ("torch", ("deconv",)),
}


def _uncharged(name: str, case: Case) -> int:
    if name != "a2u":
        return 0
    p = case.params
    return case.B * (2 * case.cy * p["k"] ** 2 + case.cy * 4 * p["s_u"] ** 2)


@pytest.mark.parametrize("name", ZOO)
@pytest.mark.parametrize("variant", [{}, {"B": 2, "C": 64, "H": 5, "W": 7, "K": 5}])
def test_macs_match_flop_counter(name, variant):
    hp = {"dynamic": True, "style": "pl" if variant else "lp"} if name == "dysample" else {}
    case = make_case(name, hp=hp, **variant)
    op, m, inputs = build(name, case)
    impl, seen = SEEN[name]
    terms = op.mac_terms(case)
    assert op.macs(case) == sum(terms.values())
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        run_impl(op, impl, case, m, inputs)
    assert fc.get_total_flops() == 2 * (sum(terms[t] for t in seen if t in terms) + _uncharged(name, case))


@pytest.mark.parametrize("name", ZOO)
def test_min_bytes(name):
    op = op_(name)
    case = make_case(name)
    n = case.B * case.C * case.H * case.w * (1 + case.s ** 2) + (case.B * case.cy * case.s ** 2 * case.H * case.w
                                                                   if op.guided else 0)
    assert op.min_bytes(case) >= 4 * (n + op.params(case))
    assert op.min_bytes(case.with_(dtype="float16")) * 2 == op.min_bytes(case)


@pytest.mark.parametrize("name", ZOO)
def test_border_mask_shape(name):
    case = make_case(name, H=3, W=5, K=3)
    mask = op_(name).border_mask(case)
    assert mask.shape == case.out_hw and mask.dtype == torch.bool


def test_docs_table_matches_counts():
    """docs/operators.md's table of params and GMACs at C = Cy = 256, 64² → 128², K = 5 is what the code says."""
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "docs" / "operators.md").read_text()
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[1].replace(",", "").isdigit():
            rows[cells[0]] = (int(cells[1].replace(",", "")), float(cells[2]))
    assert set(ZOO) <= set(rows)
    for name, (params, gmacs) in rows.items():
        case = make_case(name, C=256, H=64, W=64, K=5)
        op = op_(name)
        assert (op.params(case), round(op.macs(case) / 1e9, 4)) == (params, gmacs), name
