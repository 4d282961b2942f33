"""SAPA as full upsampling modules (variants I, B, G) over the SAPA core op, DESIGN.md §3.

Inputs NCHW: x (B, C, H, W), y (B, Cy, sH, sW); the modules work channels-last and return the core's
(B, sH, sW, C) result as an NCHW view (torch's channels_last memory format), so no copy is made.
- SAPA-B: q = Linear(Cy→d)(LN(y)), k = Linear(C→d)(LN(x)) (affine LayerNorms, biased linears), v = raw x.
- SAPA-I: no parameters; q = LN(y), k = LN(x) with non-affine LayerNorms (needs Cy = C); v = raw x.
- SAPA-G: SAPA-B's key; q = g·Linear_y(LN(y)) + (1−g)·Linear_x(nearest(x)) with
  g = nearest(σ(Linear(C→1)(LN(x)))). Linear_x is applied at low res (it commutes with nearest upsampling).
Init: linear weights truncated normal std 0.02, biases 0; LayerNorm weight 1, bias 0; eps 1e-5.
Each impl is one SAPA core impl (sapa_core.CORE_IMPLS), with that impl's devices, dtypes and backward.
"""

from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from upbench.cases import Case
from upbench.plugin import DEFAULT_TOLERANCE, HyperParam, Impl, Operator

from .reassembly import check_positive_ints
from .sapa_core import CORE_IMPLS, SAPA_CORE, CoreFn, core_lean, core_reference

# Kernel-backed core impls register themselves into CORE_IMPLS when their module is imported; the package
# must import without them (no CuPy, no compiler), so a failed import only means fewer impls.
if importlib.util.find_spec("upbench.operators.sapa_kernels") is not None:
    try:
        importlib.import_module("upbench.operators.sapa_kernels")
    except ImportError:
        pass


def _linear(cin: int, cout: int) -> nn.Linear:
    lin = nn.Linear(cin, cout)
    nn.init.trunc_normal_(lin.weight, std=0.02)  # bounds ±2 absolute, as timm's: a plain normal in effect
    nn.init.zeros_(lin.bias)
    return lin


class SapaModule(nn.Module):
    def __init__(self, variant: str, C: int, Cy: int, d: int, K: int, s: int) -> None:
        super().__init__()
        self.variant, self.K, self.s = variant, K, s
        affine = variant != "i"
        self.norm_x = nn.LayerNorm(C, eps=1e-5, elementwise_affine=affine)
        self.norm_y = nn.LayerNorm(Cy, eps=1e-5, elementwise_affine=affine)
        if variant in ("b", "g"):
            self.q = _linear(Cy, d)
            self.k = _linear(C, d)
        if variant == "g":
            self.gate = _linear(C, 1)
            self.q_x = _linear(C, d)

    def qkv(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Channels-last q (B, sH, sW, d), k (B, H, W, d) and v (B, H, W, C)."""
        xl = x.permute(0, 2, 3, 1).contiguous()
        xn, yn = self.norm_x(xl), self.norm_y(y.permute(0, 2, 3, 1))
        if self.variant == "i":
            return yn, xn, xl
        q, k = self.q(yn), self.k(xn)
        if self.variant == "g":
            B, H, W, _ = xl.shape
            s, d = self.s, q.shape[-1]
            g = torch.sigmoid(self.gate(xn)).view(B, H, 1, W, 1, 1)
            qx = self.q_x(xl).view(B, H, 1, W, 1, d)
            # Broadcasting over the s×s children is the nearest upsampling of g and of Linear_x(x).
            q = (g * q.view(B, H, s, W, s, d) + (1 - g) * qx).view(B, H * s, W * s, d)
        return q, k, xl

    def forward(self, x: Tensor, y: Tensor, core: CoreFn = core_lean) -> Tensor:
        return core(*self.qkv(x, y), self.K, self.s).permute(0, 3, 1, 2)


def _qkv_reference(m: SapaModule, x: Tensor, y: Tensor, s: int) -> tuple[Tensor, Tensor, Tensor]:
    """The definition written literally: full-res nearest upsampling, Linear_x applied at high res."""
    xl, yl = x.permute(0, 2, 3, 1), y.permute(0, 2, 3, 1)
    w = (m.norm_x.weight, m.norm_x.bias) if m.variant != "i" else (None, None)
    xn = F.layer_norm(xl, xl.shape[-1:], *w, eps=1e-5)
    w = (m.norm_y.weight, m.norm_y.bias) if m.variant != "i" else (None, None)
    yn = F.layer_norm(yl, yl.shape[-1:], *w, eps=1e-5)
    if m.variant == "i":
        return yn, xn, xl
    q = F.linear(yn, m.q.weight, m.q.bias)
    k = F.linear(xn, m.k.weight, m.k.bias)
    if m.variant == "g":
        up = lambda t: t.repeat_interleave(s, 1).repeat_interleave(s, 2)  # noqa: E731
        g = up(torch.sigmoid(F.linear(xn, m.gate.weight, m.gate.bias)))
        q = g * q + (1 - g) * F.linear(up(xl), m.q_x.weight, m.q_x.bias)
    return q, k, xl


def _core_impls() -> tuple[Impl, ...]:
    specs = {i.name: i for i in SAPA_CORE.impls}
    impls = []
    for name, core in CORE_IMPLS.items():
        spec = specs.get(name)

        def factory(case: Case, module: nn.Module | None, core: CoreFn = core):
            assert module is not None

            def run(x: Tensor, y: Tensor) -> Tensor:
                return module(x, y, core=core)

            return run

        if spec is None:
            impls.append(Impl(name, factory, f"SAPA core impl {name}"))
            continue

        def supports(case: Case, spec: Impl = spec) -> str | None:
            return spec.supports(_core_case(case))

        impls.append(Impl(name, factory, f"core: {spec.description}", devices=spec.devices, dtypes=spec.dtypes,
                          backward=spec.backward, deterministic=spec.deterministic, available=spec.available,
                          supports=supports, sources=spec.sources))
    return tuple(impls)


def _core_case(case: Case) -> Case:
    """The core-op workload inside a SAPA module case: q/k width d in the Cy axis."""
    d = case.C if case.op == "sapa-i" else int(case.params.get("d", 32))
    return case.with_(op=SAPA_CORE.name, Cy=d, hp=())


class _Sapa(Operator):
    variant = "b"
    guided = True
    impls = _core_impls()
    model_impls = ("cupy-fused", "cupy", "cpu-kernel", "lean", "unfold")
    # LayerNorm and the projections run in the working dtype before the softmax, so bf16 logits carry more
    # rounding than the bare core op's (measured: up to ~0.06 of the output RMS at C = 256).
    tolerance = {**DEFAULT_TOLERANCE, "bfloat16": 1e-1}

    def _d(self, case: Case) -> int:
        return case.C if self.variant == "i" else int(case.params.get("d", 32))

    def check(self, case: Case) -> str | None:
        why = super().check(case)
        if why:
            return why
        if self.variant == "i" and case.cy != case.C:
            return (f"sapa-i compares y and x features directly, so it needs Cy == C (got Cy={case.cy}, "
                    f"C={case.C}); set Cy = C or use sapa-b, which projects both to d")
        return check_positive_ints(self, case, ("d",)) if self.variant != "i" else None

    def module(self, case: Case) -> nn.Module:
        return SapaModule(self.variant, case.C, case.cy, self._d(case), case.K, case.s)

    def reference(self, case: Case, inputs: dict[str, Tensor], module: nn.Module | None) -> Tensor:
        assert isinstance(module, SapaModule)
        q, k, v = _qkv_reference(module, inputs["x"], inputs["y"], case.s)
        return core_reference(q, k, v, case.K, case.s).permute(0, 3, 1, 2)

    # -- counts -------------------------------------------------------------------------------------------
    def params_formula(self, case: Case) -> int:
        C, Cy, d = case.C, case.cy, self._d(case)
        if self.variant == "i":
            return 0
        n = 2 * C + 2 * Cy + (Cy + 1) * d + (C + 1) * d
        return n + ((C + 1) + (C + 1) * d if self.variant == "g" else 0)

    def mac_terms(self, case: Case) -> dict[str, int]:
        lo = case.B * case.H * case.w
        hi = lo * case.s ** 2
        d, KK = self._d(case), case.K ** 2
        terms = {"similarity": hi * KK * d, "aggregation": hi * KK * case.C}
        if self.variant != "i":
            terms |= {"query": hi * case.cy * d, "key": lo * case.C * d}
        if self.variant == "g":
            # Gate and Linear_x run at low res; the blend g·a + (1−g)·b is two products per query element.
            terms |= {"gate": lo * case.C, "query_x": lo * case.C * d, "blend": 2 * hi * d}
        return terms


_D = HyperParam("d", 32, "query/key embedding width (32 in the reported experiments; 64 in a released default)")


class SapaI(_Sapa):
    name = "sapa-i"
    variant = "i"
    uses_Cy = False  # y must have x's channels, so Cy is not a free axis
    # Unprojected, unscaled logits ⟨LN(y), LN(x)⟩ have std √C, so half-precision rounding of the logits grows
    # with C (measured at C = 256: fp16 0.03, bf16 0.14 of the output RMS, the same for every impl).
    tolerance = {**DEFAULT_TOLERANCE, "float16": 5e-2, "bfloat16": 2.5e-1}
    description = ("SAPA-I: parameter-free; similarity ⟨LN(y), LN(x)⟩ with non-affine LayerNorms (needs Cy = C), "
                   "softmax over K², aggregation of raw x")


class SapaB(_Sapa):
    name = "sapa-b"
    variant = "b"
    description = ("SAPA-B: affine LayerNorms, q = Linear(Cy→d)(LN(y)), k = Linear(C→d)(LN(x)), no 1/√d, "
                   "softmax over K², aggregation of raw x")
    hyperparams = (_D,)


class SapaG(_Sapa):
    name = "sapa-g"
    variant = "g"
    description = ("SAPA-G: SAPA-B with a gated query g·Linear_y(LN(y)) + (1−g)·Linear_x(nearest(x)), "
                   "g = nearest(σ(Linear(C→1)(LN(x))))")
    hyperparams = (_D,)


SAPA_I = SapaI()
SAPA_B = SapaB()
SAPA_G = SapaG()
