"""Learned convolutional upsamplers: pixel shuffle (sub-pixel conv) and deconvolution (transposed conv).

Both as the CARAFE/FADE/DySample comparisons build them (mmcv's PixelShufflePack and the FPN deconv
upsampler), with kernel size 3 and xavier-uniform init, bias 0:
- pixelshuffle: Conv k×k (C → C·s², padding k//2, bias) → pixel_shuffle(s).
- deconv: ConvTranspose k×k (C → C, stride s, padding (k−1)//2, output_padding s + 2·padding − k, bias),
  which makes the output exactly s·H × s·W for every kernel size (k=3, s=2: padding 1, output_padding 1).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from upbench.cases import Case
from upbench.plugin import HyperParam, Impl, Operator

from .reassembly import window_border


def _deconv_padding(k: int, s: int) -> tuple[int, int]:
    p = (k - 1) // 2
    return p, s + 2 * p - k


class PixelShuffleModule(nn.Module):
    def __init__(self, C: int, s: int, k: int = 3) -> None:
        super().__init__()
        self.s = s
        self.conv = nn.Conv2d(C, C * s * s, k, padding=k // 2)
        nn.init.xavier_uniform_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: Tensor) -> Tensor:
        return F.pixel_shuffle(self.conv(x), self.s)


class DeconvModule(nn.Module):
    def __init__(self, C: int, s: int, k: int = 3) -> None:
        super().__init__()
        p, op = _deconv_padding(k, s)
        self.deconv = nn.ConvTranspose2d(C, C, k, stride=s, padding=p, output_padding=op)
        nn.init.xavier_uniform_(self.deconv.weight)
        nn.init.zeros_(self.deconv.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.deconv(x)


def _module_call(case: Case, module: nn.Module | None):
    assert module is not None
    return module


class _ConvUpsampler(Operator):
    uses_K = False
    impls = (Impl("torch", _module_call, "torch conv layers"),)

    def _k(self, case: Case) -> int:
        return int(case.params.get("kernel", 3))

    def params_formula(self, case: Case) -> int:
        raise NotImplementedError

    def mac_terms(self, case: Case) -> dict[str, int]:
        raise NotImplementedError


class PixelShuffle(_ConvUpsampler):
    name = "pixelshuffle"
    description = "pixel shuffle: Conv k×k C→C·s² (k=3, as mmcv's PixelShufflePack in the compared papers) + shuffle"
    hyperparams = (HyperParam("kernel", 3, "conv kernel size", (1, 3, 5)),)

    def module(self, case: Case) -> nn.Module:
        return PixelShuffleModule(case.C, case.s, self._k(case))

    def reference(self, case: Case, inputs: dict[str, Tensor], module: nn.Module | None) -> Tensor:
        assert isinstance(module, PixelShuffleModule)
        z = module.conv(inputs["x"])
        B, _, H, W = z.shape
        s = case.s
        # channel c·s² + i·s + j goes to row i, column j of channel c's s×s block
        return z.view(B, -1, s, s, H, W).permute(0, 1, 4, 2, 5, 3).reshape(B, -1, H * s, W * s)

    def border_mask(self, case: Case) -> Tensor:
        return window_border(case, self._k(case) // 2)

    def params_formula(self, case: Case) -> int:
        n_out = case.C * case.s ** 2
        return self._k(case) ** 2 * case.C * n_out + n_out

    def mac_terms(self, case: Case) -> dict[str, int]:
        return {"conv": case.B * case.H * case.w * self._k(case) ** 2 * case.C * case.C * case.s ** 2}


class Deconv(_ConvUpsampler):
    name = "deconv"
    description = ("deconvolution: ConvTranspose k×k C→C, stride s, padding (k−1)//2, output_padding "
                   "s+2p−k (k=3, as the compared papers' deconv upsampler)")
    hyperparams = (HyperParam("kernel", 3, "transposed-conv kernel size", (1, 2, 3, 4, 5)),)

    def check(self, case: Case) -> str | None:
        why = super().check(case)
        if why:
            return why
        k = self._k(case)
        if k % 2 == 0 and case.s < 2:
            return f"deconv with an even kernel ({k}) needs s ≥ 2 to keep the output s·H (got s={case.s})"
        return None

    def module(self, case: Case) -> nn.Module:
        return DeconvModule(case.C, case.s, self._k(case))

    def reference(self, case: Case, inputs: dict[str, Tensor], module: nn.Module | None) -> Tensor:
        """Zero-insertion upsampling followed by an ordinary conv with the flipped, transposed kernel."""
        assert isinstance(module, DeconvModule)
        x, w, b = inputs["x"], module.deconv.weight, module.deconv.bias
        B, C, H, W = x.shape
        s, k = case.s, self._k(case)
        p, op = _deconv_padding(k, s)
        z = x.new_zeros(B, C, (H - 1) * s + 1, (W - 1) * s + 1)
        z[:, :, ::s, ::s] = x
        q = k - 1 - p
        z = F.pad(z, (q, q + op, q, q + op))
        return F.conv2d(z, w.transpose(0, 1).flip(2, 3), b)

    def params_formula(self, case: Case) -> int:
        return self._k(case) ** 2 * case.C * case.C + case.C

    def mac_terms(self, case: Case) -> dict[str, int]:
        # every input pixel scatters k²·C·C products (the flop counter's transposed-conv convention)
        return {"deconv": case.B * case.H * case.w * self._k(case) ** 2 * case.C * case.C}


PIXELSHUFFLE = PixelShuffle()
DECONV = Deconv()
