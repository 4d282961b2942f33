"""Prepare a cell for measurement: inputs, weights, the impl's callable, and one callable per pass.

Everything that is not the operator's work — input generation, weight init, compilation, output of the
forward for a backward pass — happens here, before any timer or memory probe sees the callable.
:func:`prepare` is the one way a cell is prepared: the runner, the pytest-benchmark plugin and the tests
all call it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from .cases import Case
from .plugin import Impl, Operator

if TYPE_CHECKING:
    from .sweeps import Cell


@dataclass
class Stage:
    """One stage's inputs, module and the impl's callable (a model cell runs several stages in order)."""

    case: Case
    fn: Callable[..., Tensor]
    inputs: dict[str, Tensor]
    module: nn.Module | None


def prepare_stage(op: Operator, impl: Impl, case: Case) -> Stage:
    gen = torch.Generator().manual_seed(case.seed())
    raw = op.inputs(case, gen)
    torch.manual_seed(case.seed())  # the same weights for every impl and pass of this workload
    module = op.module(case)
    dev, dt = torch.device(case.device), case.torch_dtype
    inputs = {k: v.to(dev, dt) if v.is_floating_point() else v.to(dev) for k, v in raw.items()}
    if module is not None:
        module = module.to(dev, dt).eval()
    return Stage(case, impl.factory(case, module), inputs, module)


@dataclass
class Prepared:
    """A cell ready to measure: its operator and impl, each stage prepared, and the pass's callable.

    The callable is built on first use, after the agreement metric has read the untouched stages.
    """

    cell: Cell
    op: Operator
    impl: Impl
    stages: list[Stage]
    _fn: Callable[[], object] | None = field(default=None, repr=False)

    @property
    def fn(self) -> Callable[[], object]:
        if self._fn is None:
            self._fn = make_callable(self.stages, self.cell.case.pass_)
        return self._fn


def prepare(cell: Cell) -> Prepared:
    """Inputs, weights and the impl's callable of every stage of ``cell`` (on its device, in its dtype)."""
    from . import registry

    op = registry.get(cell.op)
    impl = op.impl(cell.impl)
    return Prepared(cell, op, impl, [prepare_stage(op, impl, c) for c in cell.stages])


def _leaves(st: Stage) -> list[Tensor]:
    return [v for v in st.inputs.values() if v.requires_grad] + (
        [p for p in st.module.parameters() if p.requires_grad] if st.module is not None else [])


def make_callable(stages: list[Stage], pass_: str) -> Callable[[], object]:
    """The zero-argument callable a metric measures for ``pass_``."""
    if pass_ == "fwd":
        def fwd() -> list[Tensor]:
            with torch.no_grad():
                return [st.fn(*st.inputs.values()) for st in stages]
        return fwd
    for st in stages:
        for k, v in st.inputs.items():
            if v.is_floating_point():
                st.inputs[k] = v.detach().requires_grad_(True)
    leaves = [lf for st in stages for lf in _leaves(st)]
    gen = torch.Generator().manual_seed(stages[0].case.seed() + 1)
    with torch.enable_grad():
        probe = [st.fn(*st.inputs.values()) for st in stages]
    grads = [torch.randn(o.shape, generator=gen).to(o.device, o.dtype) for o in probe]
    if pass_ == "bwd":
        def bwd() -> tuple[Tensor | None, ...]:
            return torch.autograd.grad(probe, leaves, grads, retain_graph=True, allow_unused=True)
        return bwd

    def fwd_bwd() -> tuple[Tensor | None, ...]:
        with torch.enable_grad():
            outs = [st.fn(*st.inputs.values()) for st in stages]
            return torch.autograd.grad(outs, leaves, grads, allow_unused=True)
    return fwd_bwd


def reference_outputs(op: Operator, st: Stage, pass_: str, grad_seed: int) -> tuple[list[Tensor], list[Tensor]]:
    """(impl results, float64 reference results) for the agreement metric: outputs, or every gradient."""
    cpu64 = {k: v.detach().to("cpu", torch.float64) for k, v in st.inputs.items()}
    m64 = copy.deepcopy(st.module).to("cpu", torch.float64) if st.module is not None else None
    if pass_ == "fwd":
        with torch.no_grad():
            out = st.fn(*st.inputs.values())
            ref = op.reference(st.case, cpu64, m64)
        return [out], [ref]
    ins = {k: v.detach().requires_grad_(v.is_floating_point()) for k, v in st.inputs.items()}
    mod = st.module
    for v in cpu64.values():
        v.requires_grad_(v.is_floating_point())
    with torch.enable_grad():
        out = st.fn(*ins.values())
        ref = op.reference(st.case, cpu64, m64)
    g = torch.randn(ref.shape, generator=torch.Generator().manual_seed(grad_seed), dtype=torch.float64)
    leaves = [v for v in ins.values() if v.requires_grad] + (list(mod.parameters()) if mod is not None else [])
    leaves64 = [v for v in cpu64.values() if v.requires_grad] + (list(m64.parameters()) if m64 is not None else [])
    got = torch.autograd.grad(out, leaves, g.to(out.device, out.dtype), allow_unused=True)
    want = torch.autograd.grad(ref, leaves64, g, allow_unused=True)
    pairs = [(a, b) for a, b in zip(got, want, strict=True) if a is not None or b is not None]
    return ([a if a is not None else torch.zeros_like(b) for a, b in pairs],
            [b if b is not None else torch.zeros_like(a, dtype=torch.float64, device="cpu") for a, b in pairs])
