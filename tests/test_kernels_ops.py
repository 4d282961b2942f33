"""The SAPA kernel custom ops on the CPU: opcheck, gradcheck, FLOP counting, torch.compile, impls."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from upbench import _cpu_shim
from upbench.cases import Case
from upbench.operators import sapa_kernels as sk
from upbench.operators.sapa_core import CORE_IMPLS, SAPA_CORE, core_reference

pytestmark = pytest.mark.skipif(_cpu_shim.unavailable_reason() is not None,
                                reason=str(_cpu_shim.unavailable_reason()))

B, H, W, D, C, K, s = 1, 3, 4, 5, 6, 3, 2  # tiny, border-heavy


def _qkv(dtype=torch.float64, grad=False):
    g = torch.Generator().manual_seed(1)
    q = torch.randn(B, H * s, W * s, D, generator=g, dtype=dtype) * 0.5
    k = torch.randn(B, H, W, D, generator=g, dtype=dtype)
    v = torch.randn(B, H, W, C, generator=g, dtype=dtype)
    return [t.requires_grad_(grad) for t in (q, k, v)]


def _A(dtype=torch.float64, grad=False):
    g = torch.Generator().manual_seed(2)
    return torch.randn(B, H * s, W * s, K * K, generator=g, dtype=dtype).softmax(-1).requires_grad_(grad)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_opcheck(dtype):
    q, k, v = _qkv(dtype, grad=True)
    A = _A(dtype, grad=True)
    gout = torch.randn(B, H * s, W * s, C, dtype=dtype)
    torch.library.opcheck(sk.sapa_sim, (q, k, K, s))
    torch.library.opcheck(sk.sapa_atn, (A, v, K, s))
    torch.library.opcheck(sk.sapa_atn_t, (A.detach(), gout, K, s))
    torch.library.opcheck(sk.sapa_fused, (q.detach(), k.detach(), v.detach(), K, s))


def test_gradcheck_float64():
    q, k, v = _qkv(grad=True)
    assert torch.autograd.gradcheck(lambda q, k: sk.sapa_sim(q, k, K, s), (q, k))
    assert torch.autograd.gradcheck(lambda A, v: sk.sapa_atn(A, v, K, s), (_A(grad=True), v))
    assert torch.autograd.gradcheck(lambda q, k, v: sk.core_kernel(q, k, v, K, s), (q, k, v))


def test_forward_and_backward_match_reference():
    q, k, v = _qkv(grad=True)
    out = sk.core_kernel(q, k, v, K, s)
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), g)
    q2, k2, v2 = (t.detach().clone().requires_grad_() for t in (q, k, v))
    ref = core_reference(q2, k2, v2, K, s)
    ref_grads = torch.autograd.grad(ref, (q2, k2, v2), g)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    for a, b in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    torch.testing.assert_close(sk.core_kernel_fused(q, k, v, K, s), ref, rtol=0, atol=1e-12)


def test_flop_counter_uses_registered_formulas():
    q, k, v = _qkv(torch.float32, grad=True)
    taps = B * H * s * W * s * K * K
    with FlopCounterMode(display=False) as fc:
        out = sk.core_kernel(q, k, v, K, s)
    counts = fc.get_flop_counts()["Global"]
    assert counts[torch.ops.upbench.sapa_sim] == 2 * taps * D
    assert counts[torch.ops.upbench.sapa_atn] == 2 * taps * C
    with FlopCounterMode(display=False) as fc:
        out.sum().backward()
    counts = fc.get_flop_counts()["Global"]
    # d sim: atn(dS, k) + atn_t(dS, q); d atn: sim(dout, v) + atn_t(A, dout)
    assert counts[torch.ops.upbench.sapa_atn] == 2 * taps * D
    assert counts[torch.ops.upbench.sapa_sim] == 2 * taps * C
    assert counts[torch.ops.upbench.sapa_atn_t] == 2 * taps * (D + C)
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        sk.core_kernel_fused(q, k, v, K, s)
    assert fc.get_total_flops() == 2 * taps * (D + C) == 2 * SAPA_CORE.macs(Case("sapa", B, C, D, H, W, s, K))


def test_torch_compile_traces_the_ops():
    q, k, v = _qkv(torch.float32, grad=True)
    fn = torch.compile(sk.core_kernel, backend="aot_eager", fullgraph=True)
    out = fn(q, k, v, K, s)
    out.sum().backward()
    grads = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    ref = sk.core_kernel(q, k, v, K, s)
    ref.sum().backward()
    torch.testing.assert_close(out, ref)
    for t, gr in zip((q, k, v), grads, strict=True):
        torch.testing.assert_close(gr, t.grad)


def test_argument_errors_name_the_op_and_the_fix():
    q, k, v = _qkv(torch.float32)
    with pytest.raises(ValueError, match="sapa_sim: K=4; the kernels need an odd K"):
        sk.sapa_sim(q, k, 4, s)
    with pytest.raises(ValueError, match="sapa_atn: all tensors must share dtype"):
        sk.sapa_atn(_A(torch.float64), v, K, s)
    with pytest.raises(ValueError, match=r"sapa_sim: q has shape \(1, 6, 8, 5\), expected \(1, 9, 12"):
        sk.sapa_sim(q, k, K, 3)


def test_impls_are_registered_with_reasons():
    names = [i.name for i in SAPA_CORE.impls]
    for name in ("cupy", "cupy-fused", "cpu-kernel", "cpu-kernel-fused"):
        assert name in names and name in CORE_IMPLS
    assert SAPA_CORE.impl("cupy-fused").backward is False
    assert SAPA_CORE.impl("cpu-kernel").available("cpu") is None
    if not torch.cuda.is_available():
        assert SAPA_CORE.impl("cupy").available("cuda") == "needs a CUDA device (torch.cuda.is_available() is False)"
    case = Case("sapa", C=8, Cy=4, H=4, s=2, K=17)
    assert "odd K from 1 to 15" in SAPA_CORE.impl("cpu-kernel").supports(case)


@pytest.mark.parametrize("impl", ["cpu-kernel", "cpu-kernel-fused"])
def test_impl_factories_match_the_operator_reference(impl):
    case = Case("sapa", B=2, C=20, Cy=12, H=5, W=6, s=2, K=5)
    inputs = SAPA_CORE.inputs(case, torch.Generator().manual_seed(0))
    fn = SAPA_CORE.impl(impl).factory(case, None)
    got = fn(*inputs.values())
    ref = SAPA_CORE.reference(case, {k: v.double() for k, v in inputs.items()}, None)
    err = (got.double() - ref).abs().max() / ref.pow(2).mean().sqrt()
    assert err < SAPA_CORE.tolerance["float32"]
