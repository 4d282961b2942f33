"""The fused forward's extra peak memory: at most 1.05× its output's bytes, for every registered impl named
``cpu-kernel-fused`` (discovered from the registry, so an operator that gains one is covered without an edit).

Each impl runs once on a moderate case; its fused kernel op (``upbench::*fused*``) is captured with the very
inputs the impl gave it (upbench.memory.op_calls) and re-run alone under the CPU allocator's exact peak
(upbench.memory.peak_cpu), inputs already built. Two bounds: with the inputs in the layout the kernel reads
(contiguous channels-last), extra ≤ 1.05 × output — no weight map, no workspace; as the impl calls it, extra ≤
1.05 × output + the bytes of the inputs the op must first make contiguous (its only other allocation).
"""

from __future__ import annotations

import copy

import pytest
import torch
from test_op_common import build, make_case

from upbench import _cpu_shim, registry
from upbench.memory import op_calls, peak_cpu, result_bytes

pytestmark = pytest.mark.skipif(_cpu_shim.unavailable_reason() is not None,
                                reason=str(_cpu_shim.unavailable_reason()))

BOUND = 1.05
FUSED = sorted(name for name, op in registry.operators().items()
               if any(i.name == "cpu-kernel-fused" for i in op.impls))
# Moderate: an output of ~0.5 MB, far above the few small tensors an op may allocate (a cached offset table).
SIZE = dict(B=1, C=64, H=24, W=20, s=2, K=5)
SMALL_IMAGE = {"patch": 2}  # the foundation-model family's guidance image: small, it does not reach the kernel


def _case(name: str):
    op = registry.get(name)
    return make_case(name, **SIZE, hp=SMALL_IMAGE if op.family == "foundation" else {})


def _fused_calls(name: str):
    case = _case(name)
    op, m, inputs = build(name, case)
    fn = op.impl("cpu-kernel-fused").factory(case, copy.deepcopy(m))
    with torch.no_grad():
        calls = op_calls(lambda: fn(*inputs.values()), lambda op_name: op_name.startswith("upbench::")
                         and "fused" in op_name)
    return calls


def test_every_fused_kernel_impl_is_covered():
    assert {"sapa", "sapa-b", "sapa-g", "sapa-i", "naf", "uplift", "anyup"} <= set(FUSED), FUSED


@pytest.mark.parametrize("name", FUSED)
def test_fused_forward_extra_peak_is_its_output(name):
    calls = _fused_calls(name)
    assert calls, f"{name}/cpu-kernel-fused ran no upbench fused kernel op"
    with torch.no_grad():
        for func, args, kwargs in calls:
            built = [a.contiguous() if isinstance(a, torch.Tensor) else a for a in args]
            out = result_bytes(func(*built, **kwargs))  # also the warm-up: caches filled outside the window
            assert out >= 2**18, f"{func}: output of {out} B is too small to dominate allocator noise"
            extra = peak_cpu(lambda: func(*built, **kwargs))
            assert extra <= BOUND * out, f"{name} {func}: extra peak {extra} B = {extra / out:.3f}× output"
            copies = sum(result_bytes(a) for a in args if isinstance(a, torch.Tensor) and not a.is_contiguous())
            as_called = peak_cpu(lambda: func(*args, **kwargs))
            assert as_called <= BOUND * out + copies, (
                f"{name} {func} as called: extra peak {as_called} B, output {out} B, input copies {copies} B")
