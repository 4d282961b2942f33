import math

import torch

from upbench.accuracy import Agreement, agreement
from upbench.plugin import DEFAULT_TOLERANCE


def _ref(shape=(2, 3, 8, 10)):
    return torch.randn(*shape, dtype=torch.float64)


def _border(h=8, w=10, r=1):
    m = torch.zeros(h, w, dtype=torch.bool)
    m[:r], m[-r:], m[:, :r], m[:, -r:] = True, True, True, True
    return m


def test_rounding_level_noise_passes():
    ref = _ref()
    out = ref.float()  # fp32 rounding only
    a = agreement(out, ref, _border(), DEFAULT_TOLERANCE["float32"])
    assert a.ok and a.max_rel < 1e-6


def test_planted_error_is_caught():
    ref = _ref()
    out = ref.clone()
    out[1, 2, 4, 5] += 0.01
    a = agreement(out, ref, _border(), DEFAULT_TOLERANCE["float32"])
    assert not a.ok and a.interior_max_rel > a.border_max_rel


def test_planted_border_only_error_is_caught_and_located():
    ref = _ref()
    out = ref.clone()
    out[..., 0, 3] += 0.05  # top row only
    a = agreement(out, ref, _border(), DEFAULT_TOLERANCE["float32"])
    assert not a.ok
    assert a.border_max_rel > 1e-2 and a.interior_max_rel == 0.0


def test_relative_to_rms_so_tiny_outputs_cannot_hide_errors():
    ref = _ref() * 1e-6
    out = ref * 1.01  # 1 % wrong; an absolute tolerance of 1e-5 would pass it
    assert not agreement(out, ref, _border(), DEFAULT_TOLERANCE["float32"]).ok


def test_nan_fails_and_channels_last_masks():
    ref = _ref((1, 8, 10, 3))
    out = ref.clone()
    out[0, 0, 0, 0] = math.nan
    a = agreement(out, ref, _border(), 1e-4, channels_last=True)
    assert not a.ok and math.isinf(a.border_max_rel)


def test_worst_of_several():
    good = Agreement(0, 0, 1e-7, 0, 1e-7, 1e-4, True)
    bad = Agreement(1, 1, 1e-1, 1e-1, 0, 1e-4, False)
    assert Agreement.worst([good, bad]) is bad
