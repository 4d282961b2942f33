"""CARAFE: content-aware reassembly of features (guidance-free), DESIGN.md §2 and §4.

compressor Conv1×1(C→Cm, bias) → content encoder Conv k_e×k_e(Cm → G·K²·s², padding k_e//2, bias) at low res
→ pixel_shuffle(s) → softmax over the K² slots of each group → reassembly of the original x. Encoder output
channel (g·K² + m)·s² + t becomes kernel channel g·K² + m of sub-pixel t after the shuffle.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from upbench.cases import Case
from upbench.plugin import HyperParam, Operator

from .reassembly import (
    LogitsFn,
    ReassembleFn,
    check_positive_ints,
    module_impls,
    reassemble_lean,
    reassemble_reference,
)


class CarafeModule(nn.Module):
    def __init__(self, C: int, K: int, s: int, G: int = 1, Cm: int = 64, k_enc: int = 3) -> None:
        super().__init__()
        self.K, self.s, self.G = K, s, G
        self.compressor = nn.Conv2d(C, Cm, 1)
        self.encoder = nn.Conv2d(Cm, G * K * K * s * s, k_enc, padding=k_enc // 2)
        nn.init.xavier_uniform_(self.compressor.weight)
        nn.init.zeros_(self.compressor.bias)
        nn.init.normal_(self.encoder.weight, std=0.001)
        nn.init.zeros_(self.encoder.bias)

    def logits(self, x: Tensor) -> Tensor:
        """Kernel logits (B, G·K², sH, sW): the shuffled encoder output."""
        return F.pixel_shuffle(self.encoder(self.compressor(x)), self.s)

    def kernels(self, x: Tensor) -> Tensor:
        """Reassembly kernels (B, G·K², sH, sW), each group's K² weights summing to 1."""
        z = self.logits(x)
        B, _, oh, ow = z.shape
        return z.view(B, self.G, self.K * self.K, oh, ow).softmax(2).view(B, -1, oh, ow)

    def forward(self, x: Tensor, reassemble: ReassembleFn = reassemble_lean, fused: LogitsFn | None = None) -> Tensor:
        if fused is not None:  # softmax inside the reassembly kernel: no normalised kernel map in memory
            return fused(x, self.logits(x), self.K, self.s, self.G)
        return reassemble(x, self.kernels(x), self.K, self.s, self.G)


class Carafe(Operator):
    name = "carafe"
    properties = ("convex",)  # softmax-weighted reassembly; zero-padded border slots keep weight
    description = ("CARAFE: Conv1×1 C→Cm compressor, k_enc×k_enc content encoder to G·K²·s², pixel shuffle, "
                   "softmax over K², reassembly of x; guidance-free")
    hyperparams = (
        HyperParam("Cm", 64, "compressed channels of the 1×1 compressor"),
        HyperParam("k_enc", 3, "kernel size of the content encoder", (1, 3, 5, 7)),
        HyperParam("groups", 1, "channel groups sharing one reassembly kernel (C must divide)"),
    )
    impls = module_impls(fused=True)  # the kernels are softmax(logits): DESIGN.md §4
    model_impls = ("cupy", "cpu-kernel", "lean", "unfold")

    def _hp(self, case: Case) -> tuple[int, int, int]:
        p = {**self.defaults(), **case.params}
        return int(p["groups"]), int(p["Cm"]), int(p["k_enc"])

    def check(self, case: Case) -> str | None:
        why = super().check(case)
        if why:
            return why
        why = check_positive_ints(self, case, ("Cm", "groups"))
        if why:
            return why
        G, _, _ = self._hp(case)
        if case.C % G:
            return f"carafe with groups={G} needs C divisible by {G} (got C={case.C}); pick groups dividing C"
        return None

    def module(self, case: Case) -> nn.Module:
        G, Cm, k_enc = self._hp(case)
        return CarafeModule(case.C, case.K, case.s, G, Cm, k_enc)

    def reference(self, case: Case, inputs: dict[str, Tensor], module: nn.Module | None) -> Tensor:
        assert isinstance(module, CarafeModule)
        x = inputs["x"]
        return reassemble_reference(x, module.kernels(x), case.K, case.s, module.G)

    # -- counts -------------------------------------------------------------------------------------------
    def params_formula(self, case: Case) -> int:
        G, Cm, k_enc = self._hp(case)
        n_out = G * case.K ** 2 * case.s ** 2
        return case.C * Cm + Cm + k_enc ** 2 * Cm * n_out + n_out

    def mac_terms(self, case: Case) -> dict[str, int]:
        G, Cm, k_enc = self._hp(case)
        lo = case.B * case.H * case.w
        return {
            "compressor": lo * case.C * Cm,
            "encoder": lo * k_enc ** 2 * Cm * G * case.K ** 2 * case.s ** 2,
            "reassembly": lo * case.s ** 2 * case.K ** 2 * case.C,
        }


CARAFE = Carafe()
