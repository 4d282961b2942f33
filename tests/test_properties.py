"""Declared operator properties: every built-in declares known ones, and its reference satisfies them."""

import pytest
import torch

from upbench import registry
from upbench.adversarial import CONSTANT, distribution_inputs
from upbench.cases import Case
from upbench.properties import PROPERTIES, check_properties, unknown

BUILTIN = ("nearest", "bilinear", "sapa", "carafe", "sapa-i", "sapa-b", "sapa-g", "fade", "a2u", "indexnet",
           "dysample", "pixelshuffle", "deconv")
# Where a property does not hold, and why (docs/results.md says the same).
NOT_CONVEX = {"indexnet": "sigmoid index maps do not sum to 1", "pixelshuffle": "learned conv with bias",
              "deconv": "learned transposed conv with bias"}


def _constant_output(name):
    op = registry.get(name)
    case = Case(op=name, B=1, C=32, H=9, W=8, K=3 if op.uses_K else None, s=2, dtype="float64",
                hp=tuple(sorted(op.defaults().items())))
    ins = {k: v.double() for k, v in distribution_inputs(op, case, "constant", torch.Generator()).items()}
    torch.manual_seed(0)
    m = op.module(case)
    m = m.double().eval() if m is not None else None
    with torch.no_grad():
        return op, case, op.reference(case, ins, m)


@pytest.mark.parametrize("name", BUILTIN)
def test_builtin_reference_satisfies_its_declared_properties(name):
    op, case, out = _constant_output(name)
    assert not unknown(op.properties)
    assert check_properties(op, case, out, CONSTANT) == []
    if name in NOT_CONVEX:
        assert op.properties == ()
        op.properties = ("convex",)  # on the instance: the class declaration stays
        try:
            assert check_properties(op, case, out, CONSTANT)  # and the property really fails for it
        finally:
            del op.properties
    else:
        assert "convex" in op.properties


def test_border_windows_are_exempt_from_convex_but_not_from_exact():
    op, case, out = _constant_output("carafe")
    assert check_properties(op, case, out, CONSTANT) == []
    op.properties = ("convex", "exact_on_constant")
    try:
        failed = check_properties(op, case, out, CONSTANT)
    finally:
        del op.properties
    assert len(failed) == 1 and failed[0].startswith("exact_on_constant")


def test_unknown_property_is_refused():
    op, case, out = _constant_output("nearest")
    op.properties = ("monotone",)
    try:
        with pytest.raises(ValueError, match="unknown properties"):
            check_properties(op, case, out, CONSTANT)
    finally:
        del op.properties
    assert set(PROPERTIES) == {"convex", "exact_on_constant"}
