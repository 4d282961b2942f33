"""Every public kernel entry — the ``*_into`` helpers, the custom ops and reassemble_kernel — rejects bad
arguments (K out of range, mismatched shapes, a wrong dtype, non-contiguous buffers) with one ValueError that
names the op, before any kernel runs. Under ASan (tests/test_kernels_sanitize.py) the same calls raise and
report no memory error; the debug builds' device-side check is exercised there too.
"""

from __future__ import annotations

import pytest
import torch

from upbench import _cpu_shim
from upbench.operators import carafe_kernels as ck
from upbench.operators import kernel_binding as kb
from upbench.operators import sapa_kernels as sk

pytestmark = pytest.mark.skipif(_cpu_shim.unavailable_reason() is not None,
                                reason=str(_cpu_shim.unavailable_reason()))

B, H, W, D, C, K, s = 1, 3, 4, 5, 6, 3, 2


def _sapa(dtype=torch.float32, K=K):
    return dict(q=torch.randn(B, H * s, W * s, D, dtype=dtype), k=torch.randn(B, H, W, D, dtype=dtype),
                v=torch.randn(B, H, W, C, dtype=dtype), g=torch.randn(B, H * s, W * s, C, dtype=dtype),
                A=torch.randn(B, H * s, W * s, K * K, dtype=dtype))


def _calls(t, K=K, s=s):
    """Every SAPA entry with the tensors in ``t`` (outputs allocated to the right shapes for ``K``)."""
    e = torch.empty
    return {
        "sim_into": lambda: sk.sim_into(t["q"], t["k"], e(B, H * s, W * s, K * K, dtype=t["q"].dtype), K, s),
        "atn_into": lambda: sk.atn_into(t["A"], t["v"], e(B, H * s, W * s, C, dtype=t["v"].dtype), K, s),
        "atn_t_into": lambda: sk.atn_t_into(t["A"], t["g"], e(B, H, W, C, dtype=t["g"].dtype), K, s),
        "fused_into": lambda: sk.fused_into(t["q"], t["k"], t["v"], e(B, H * s, W * s, C, dtype=t["v"].dtype), K, s),
        "sapa_sim": lambda: sk.sapa_sim(t["q"], t["k"], K, s),
        "sapa_atn": lambda: sk.sapa_atn(t["A"], t["v"], K, s),
        "sapa_atn_t": lambda: sk.sapa_atn_t(t["A"], t["g"], K, s),
        "sapa_fused": lambda: sk.sapa_fused(t["q"], t["k"], t["v"], K, s),
    }


def _one_clear_error(fn, *words):
    with pytest.raises((ValueError, TypeError)) as exc:
        fn()
    msg = str(exc.value)
    assert msg.startswith("upbench::") and "\n" not in msg, msg
    for w in words:  # "a|b": either
        assert any(alt in msg for alt in w.split("|")), msg


@pytest.mark.parametrize("bad_k", [17, 4, 0, -1])
@pytest.mark.parametrize("entry", list(_calls(_sapa())))
def test_sapa_entries_reject_k(entry, bad_k):
    t = _sapa(K=max(bad_k, 1))
    _one_clear_error(_calls(t, K=bad_k)[entry], f"K={bad_k}")


@pytest.mark.parametrize("entry", list(_calls(_sapa())))
def test_sapa_entries_reject_wrong_dtypes(entry):
    t = _sapa()
    t = {n: x.to(torch.float64) if n in ("k", "A") else x for n, x in t.items()}  # mixed dtypes
    _one_clear_error(_calls(t)[entry], "dtype")
    t = {n: x.to(torch.int32) for n, x in _sapa().items()}
    _one_clear_error(_calls(t)[entry], "not supported")


@pytest.mark.parametrize("entry", list(_calls(_sapa())))
def test_sapa_entries_reject_mismatched_shapes(entry):
    t = _sapa()
    t = {n: x[:, :-1] if n in ("q", "A", "g") else x for n, x in t.items()}  # one high-res row short
    _one_clear_error(_calls(t)[entry], "shape|size")


@pytest.mark.parametrize("entry", ["sim_into", "atn_into", "atn_t_into", "fused_into"])
def test_into_helpers_reject_non_contiguous_buffers(entry):
    t = _sapa()
    t = {n: x.transpose(1, 2).contiguous().transpose(1, 2) for n, x in t.items()}  # same shapes, other strides
    _one_clear_error(_calls(t)[entry], "contiguous")


def test_into_helpers_reject_a_wrong_output():
    t = _sapa()
    with pytest.raises(ValueError, match=r"upbench::sapa_fused: out has shape \(1, 6, 8, 5\), expected"):
        sk.fused_into(t["q"], t["k"], t["v"], torch.empty(B, H * s, W * s, C - 1), K, s)
    with pytest.raises(ValueError, match="upbench::sapa_sim: S has shape"):
        sk.sim_into(t["q"], t["k"], torch.empty(B, H * s, W * s, K * K - 1), K, s)


def test_grid_y_limit_is_checked_before_a_launch():
    with pytest.raises(ValueError, match="grid.y limit"):
        kb.check_grid_y("upbench::x", 65536)


@pytest.mark.parametrize("case", ["K17", "K4", "G0", "Cg", "M", "dtype", "dout"])
def test_carafe_entries_reject_bad_arguments(case):
    Bc, Cc, Hc, Wc, Kc, sc, G = 1, 6, 3, 4, 3, 2, 2
    x = torch.randn(Bc, Cc, Hc, Wc)
    M = torch.randn(Bc, G * Kc * Kc, Hc * sc, Wc * sc)
    dout = torch.randn(Bc, Cc, Hc * sc, Wc * sc)
    args = dict(K=Kc, s=sc, G=G)
    if case == "K17":
        args["K"] = 17
    elif case == "K4":
        args["K"] = 4
    elif case == "G0":
        args["G"] = 0
    elif case == "Cg":
        args["G"] = 4
        M = torch.randn(Bc, 4 * Kc * Kc, Hc * sc, Wc * sc)
    elif case == "M":
        M = M[:, :-1]
    elif case == "dtype":
        M = M.double()
    elif case == "dout":
        dout = dout[:, :, :-2]
    K_, s_, G_ = args["K"], args["s"], args["G"]
    calls = [lambda: ck.carafe_reassemble_dx(M, dout, K_, s_, G_), lambda: ck.carafe_reassemble_dm(dout, x, K_, s_, G_)]
    if case != "dout":
        calls.append(lambda: ck.reassemble_kernel(x, M, K_, s_, G_))
        calls.append(lambda: ck.reassemble_fused(x, M, K_, s_, G_))  # M as logits: the same checks
    for call in calls:
        if case == "M" and call is calls[1]:
            continue  # dm takes no M
        if case == "dtype" and call is calls[1]:
            continue  # dm takes no M
        _one_clear_error(call)
