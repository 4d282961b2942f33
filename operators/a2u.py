"""A2U, affinity-aware upsampling (guided by the high-res y), DESIGN.md §4; the compared setting only.

Two dynamic k×k filters u, v = Conv1×1(Cy→1, bias)(AdaptiveAvgPool_k(y)), each shared by all channels and
applied depthwise to y with stride 2 and padding ⌊(k−1)/2⌋; U, V = LeakyReLU(GroupNorm32(·)) at low res;
rank-1 affinity a = Σ_c U_c·V_c / √Cy; point-wise weights p = Conv1×1(Cy → 4·s_u², bias)(GlobalAvgPool(y));
logits z = p·a → pixel_shuffle(2) → softmax over s_u² of sigmoid(z); reassemble x with kernel s_u, one group.
The original's unused downsampling branch is left out. s = 2 only (stride-2 encoder, 2×2 pixel shuffle).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from upbench.cases import Case
from upbench.plugin import HyperParam, Operator

from .reassembly import ReassembleFn, module_impls, reassemble_lean, reassemble_reference, window_border

S = 2
GN_GROUPS = 32


class A2UModule(nn.Module):
    def __init__(self, Cy: int, s_u: int = 3, k: int = 6) -> None:
        super().__init__()
        self.s_u, self.k = s_u, k
        self.filter_u = nn.Conv2d(Cy, 1, 1)
        self.filter_v = nn.Conv2d(Cy, 1, 1)
        self.norm_u = nn.GroupNorm(GN_GROUPS, Cy)
        self.norm_v = nn.GroupNorm(GN_GROUPS, Cy)
        self.point = nn.Conv2d(Cy, S * S * s_u * s_u, 1)

    def _encode(self, y: Tensor, filt: nn.Conv2d, norm: nn.GroupNorm) -> Tensor:
        B, Cy, oh, ow = y.shape
        f = filt(F.adaptive_avg_pool2d(y, self.k))  # (B, 1, k, k): one filter per sample
        w = f.expand(B, Cy, self.k, self.k).reshape(B * Cy, 1, self.k, self.k)
        # Per-sample filters: fold the batch into the channels and run one grouped conv.
        out = F.conv2d(y.reshape(1, B * Cy, oh, ow), w, stride=S, padding=(self.k - 1) // 2, groups=B * Cy)
        return F.leaky_relu(norm(out.view(B, Cy, oh // S, ow // S)), 0.01)

    def kernels(self, y: Tensor) -> Tensor:
        """Reassembly kernels (B, s_u², sH, sW), summing to 1 over the s_u² slots."""
        U = self._encode(y, self.filter_u, self.norm_u)
        V = self._encode(y, self.filter_v, self.norm_v)
        a = torch.einsum("bchw,bchw->bhw", U, V).unsqueeze(1) / math.sqrt(y.shape[1])
        p = self.point(y.mean((2, 3), keepdim=True))  # (B, 4·s_u², 1, 1)
        return torch.sigmoid(F.pixel_shuffle(p * a, S)).softmax(1)

    def forward(self, x: Tensor, y: Tensor, reassemble: ReassembleFn = reassemble_lean) -> Tensor:
        return reassemble(x, self.kernels(y), self.s_u, S, 1)


class A2U(Operator):
    name = "a2u"
    description = ("A2U: channel-shared k=6 dynamic filters on y, GN32 + LeakyReLU, rank-1 affinity × pooled "
                   "point-wise weights → softmax(sigmoid) s_u=3 kernels reassembling x; no downsampling branch")
    guided = True
    uses_K = False
    hyperparams = (
        HyperParam("s_u", 3, "reassembly kernel size", (3, 5, 7)),
        HyperParam("k", 6, "size of the dynamic encoding filters", (2, 3, 4, 5, 6, 7)),
    )
    impls = module_impls()
    model_impls = ("cupy", "cpu-kernel", "lean", "unfold")

    def _hp(self, case: Case) -> tuple[int, int]:
        p = {**self.defaults(), **case.params}
        return int(p["s_u"]), int(p["k"])

    def check(self, case: Case) -> str | None:
        why = super().check(case)
        if why:
            return why
        if case.s != S:
            return f"a2u upsamples by a stride-2 encoder and a 2×2 pixel shuffle, so it needs s=2 (got s={case.s})"
        if case.cy % GN_GROUPS:
            return f"a2u's GroupNorm has {GN_GROUPS} groups, so it needs Cy divisible by {GN_GROUPS} (got Cy={case.cy})"
        if case.H * case.w * case.cy // GN_GROUPS < 2:
            return (f"a2u's GroupNorm needs more than one value per group, H·W·Cy/{GN_GROUPS} ≥ 2 "
                    f"(got H={case.H}, W={case.w}, Cy={case.cy})")
        return None

    def module(self, case: Case) -> nn.Module:
        return A2UModule(case.cy, *self._hp(case))

    def reference(self, case: Case, inputs: dict[str, Tensor], module: nn.Module | None) -> Tensor:
        assert isinstance(module, A2UModule)
        return reassemble_reference(inputs["x"], module.kernels(inputs["y"]), module.s_u, S, 1)

    def border_mask(self, case: Case) -> Tensor:
        return window_border(case, (self._hp(case)[0] - 1) // 2)

    # -- counts -------------------------------------------------------------------------------------------
    def params_formula(self, case: Case) -> int:
        s_u, _ = self._hp(case)
        Cy = case.cy
        return 2 * (Cy + 1) + 2 * 2 * Cy + (Cy + 1) * S * S * s_u * s_u

    def mac_terms(self, case: Case) -> dict[str, int]:
        """Counted work; the per-sample filter and weight generators on pooled y do not scale with H×W (§6)."""
        s_u, k = self._hp(case)
        lo = case.B * case.H * case.w
        return {
            "encode_u": lo * case.cy * k * k,
            "encode_v": lo * case.cy * k * k,
            "affinity": lo * case.cy,
            "logits": lo * S * S * s_u * s_u,  # p · a
            "reassembly": lo * S * S * s_u * s_u * case.C,
        }


A2U_OP = A2U()
