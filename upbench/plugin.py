"""The operator plugin surface: what an operator file declares, and nothing the harness does with it.

An operator is a subclass of :class:`Operator` (an instance is registered under the entry-point group
``upbench.operators``); each way of computing it is an :class:`Impl`. The operator owns every fact about
itself — semantics (its float64 ``reference``), inputs, learned parameters, MACs and minimal bytes — so the
harness never names an operator. See docs/plugins.md for a worked example.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .cases import Case
from .dtypes import DEFAULT_BWD_TOLERANCE, DEFAULT_TOLERANCE, DTYPES

# A factory receives the case and the operator's module (already cast to the case's dtype and device, or
# None for parameter-free operators) and returns the callable to measure: ``fn(*inputs) -> Tensor``.
Factory = Callable[[Case, "nn.Module | None"], Callable[..., Tensor]]


def _always(_: Any) -> str | None:
    return None


@dataclass(frozen=True)
class HyperParam:
    """A hyperparameter of an operator, settable per suite (``[op.params]``) or ``--param NAME=VALUE``."""

    name: str
    default: Any
    help: str
    choices: tuple[Any, ...] | None = None


@dataclass(frozen=True)
class Impl:
    """One implementation of an operator.

    ``available(device)`` answers "can it run on this machine?" with ``None`` or the reason (a missing
    library, no CUDA device); ``supports(case)`` answers the same for one case. Both reasons end up in the
    results as a skip, never as a failure.
    """

    name: str
    factory: Factory
    description: str = ""
    devices: tuple[str, ...] = ("cpu", "cuda")
    dtypes: tuple[str, ...] = tuple(DTYPES)
    backward: bool = True
    deterministic: bool = True
    available: Callable[[str], str | None] = _always
    supports: Callable[[Case], str | None] = _always
    sources: tuple[str, ...] = ()  # extra files (e.g. .cu) whose hash identifies this impl's results

    def unavailable(self, device: str) -> str | None:
        """Why this impl cannot run on ``device`` on this machine, or None."""
        if device not in self.devices:
            return f"runs on {'/'.join(self.devices)} only"
        if device == "cuda" and not torch.cuda.is_available():
            return "needs a CUDA device (torch.cuda.is_available() is False)"
        return self.available(device)

    def skip_reason(self, case: Case) -> str | None:
        """Why this impl cannot run ``case`` here, or None."""
        if case.device not in self.devices:
            return f"impl {self.name} runs on {'/'.join(self.devices)}, not {case.device}"
        if case.dtype not in self.dtypes:
            return f"impl {self.name} supports {'/'.join(self.dtypes)}, not {case.dtype}"
        if case.pass_ != "fwd" and not self.backward:
            return f"impl {self.name} is forward-only"
        return self.unavailable(case.device) or self.supports(case)


class Operator:
    """Base class of an operator plugin. Subclasses set the class attributes and override the methods."""

    name: str = ""
    description: str = ""
    guided: bool = False  # needs a high-res guidance feature y (B, Cy, sH, sW)
    uses_K: bool = True  # whether the kernel-size axis means anything for this operator
    uses_Cy: bool | None = None  # whether Cy is an axis; defaults to `guided`
    channels_last: bool = False  # output is (B, sH, sW, C) rather than (B, C, sH, sW)
    # Reports group operators by family (e.g. in-network decoder upsamplers apart from upsamplers of frozen
    # foundation-model features) so the two are never ranked in one table.
    family: str = "in-network"
    hyperparams: tuple[HyperParam, ...] = ()
    impls: tuple[Impl, ...] = ()
    # Model suites run one impl per operator: the first of these that can run on the device, else the first
    # declared. Put the impl a paper would ship (a kernel, then the lean torch form) before the reference.
    model_impls: tuple[str, ...] = ()
    tolerance: dict[str, float] = DEFAULT_TOLERANCE
    bwd_tolerance: dict[str, float] = DEFAULT_BWD_TOLERANCE  # for gradients (bwd, fwd+bwd passes)

    # -- validation -----------------------------------------------------------------------------------
    @property
    def has_Cy(self) -> bool:
        return self.guided if self.uses_Cy is None else self.uses_Cy

    def defaults(self) -> dict[str, Any]:
        return {p.name: p.default for p in self.hyperparams}

    def impl(self, name: str) -> Impl:
        for impl in self.impls:
            if impl.name == name:
                return impl
        raise KeyError(name)

    def check(self, case: Case) -> str | None:
        """Why ``case`` is not a valid workload of this operator (even K, channel mismatch…), or None."""
        if case.s < 1:
            return f"scale s={case.s} must be a positive integer"
        if self.uses_K and case.K is not None and (case.K < 1 or case.K % 2 == 0):
            return f"K={case.K} is even or < 1; {self.name} needs an odd kernel size (1, 3, 5, …)"
        for p in self.hyperparams:
            v = case.params.get(p.name, p.default)
            if p.choices is not None and v not in p.choices:
                return f"{p.name}={v!r} is not one of {', '.join(map(repr, p.choices))}"
        return None

    # -- workload ---------------------------------------------------------------------------------------
    def inputs(self, case: Case, gen: torch.Generator) -> dict[str, Tensor]:
        """Fresh random inputs (float32 on the CPU; the runner casts and moves them). Never zeros."""
        oh, ow = case.out_hw
        d = {"x": torch.randn(case.B, case.C, case.H, case.w, generator=gen)}
        if self.guided:
            d["y"] = torch.randn(case.B, case.cy, oh, ow, generator=gen)
        return d

    def module(self, case: Case) -> nn.Module | None:
        """The learned parts, initialised as the paper does (the runner seeds torch first), or None."""
        return None

    def reference(self, case: Case, inputs: dict[str, Tensor], module: nn.Module | None) -> Tensor:
        """The operator's float64 definition; inputs and module arrive in float64 on the CPU."""
        raise NotImplementedError

    def border_mask(self, case: Case) -> Tensor:
        """Output pixels (sH, sW) whose window reaches past the low-res map; the rest is interior."""
        r = (case.K - 1) // 2 if (self.uses_K and case.K) else 1
        oh, ow = case.out_hw
        pi = torch.arange(oh) // case.s
        pj = torch.arange(ow) // case.s
        row = (pi < r) | (pi >= case.H - r)
        col = (pj < r) | (pj >= case.w - r)
        return row[:, None] | col[None, :]

    # -- analytic counts --------------------------------------------------------------------------------
    def params(self, case: Case) -> int:
        """Parameter count, taken from the real module."""
        m = self.module(case)
        return 0 if m is None else sum(p.numel() for p in m.parameters())

    def params_formula(self, case: Case) -> int:
        """Learned parameters by formula (the tests hold it equal to :meth:`params`); 0 when parameter-free."""
        return 0

    def mac_terms(self, case: Case) -> dict[str, int]:
        """Forward multiply-accumulates by named term (docs/operators.md's convention)."""
        raise NotImplementedError

    def macs(self, case: Case) -> int:
        """Forward multiply-accumulates: the sum of :meth:`mac_terms` unless an operator says otherwise."""
        return sum(self.mac_terms(case).values())

    def bwd_macs(self, case: Case) -> int:
        """Backward MACs: by default 2× forward (one product for each operand's gradient)."""
        return 2 * self.macs(case)

    def min_bytes(self, case: Case) -> int:
        """Bytes an ideal forward must move: read every input and parameter once, write the output once."""
        oh, ow = case.out_hw
        n = case.B * case.C * case.H * case.w + case.B * case.C * oh * ow
        if self.guided:
            n += case.B * case.cy * oh * ow
        return (n + self.params_formula(case)) * case.torch_dtype.itemsize
