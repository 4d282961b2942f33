"""Pixel shuffle and deconvolution upsamplers."""

from __future__ import annotations

import pytest
import torch
from test_op_common import assert_agree, build, make_case, op_, run_impl


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("s", [2, 3, 4])
def test_deconv_output_is_s_times_input(k, s):
    assert_agree("deconv", C=3, H=3, W=2, s=s, hp={"kernel": k}, dtypes=("float64",))


@pytest.mark.parametrize("k", [1, 3, 5])
def test_pixelshuffle_kernels(k):
    assert_agree("pixelshuffle", C=3, H=4, W=3, s=3, hp={"kernel": k})


def test_pixelshuffle_1x1_is_a_per_pixel_linear_map():
    case = make_case("pixelshuffle", C=2, H=2, W=3, hp={"kernel": 1})
    op, m, inputs = build("pixelshuffle", case, perturbed=True)
    out = run_impl(op, "torch", case, m, inputs)
    x, w, b = inputs["x"], m.conv.weight[:, :, 0, 0], m.conv.bias
    # output channel c, sub-pixel (i, j) = conv output channel c·4 + 2i + j
    for c in range(2):
        for i in range(2):
            for j in range(2):
                o = c * 4 + i * 2 + j
                want = torch.einsum("k,khw->hw", w[o], x[0]) + b[o]
                torch.testing.assert_close(out[0, c, i::2, j::2], want)


def test_counts():
    c = make_case("deconv", C=256, H=64, W=64)
    assert op_("deconv").params(c) == 9 * 256 * 256 + 256
    assert op_("deconv").macs(c) == 64 * 64 * 9 * 256 * 256
    c = make_case("pixelshuffle", C=256, H=64, W=64)
    assert op_("pixelshuffle").params(c) == 9 * 256 * 1024 + 1024
    assert op_("pixelshuffle").macs(c) == 64 * 64 * 9 * 256 * 1024


def test_check_messages():
    assert op_("deconv").check(make_case("deconv", s=1, hp={"kernel": 4})) == (
        "deconv with an even kernel (4) needs s ≥ 2 to keep the output s·H (got s=1)")
    assert op_("pixelshuffle").check(make_case("pixelshuffle", hp={"kernel": 2})) == (
        "kernel=2 is not one of 1, 3, 5")
