import tomllib

import pytest

from upbench import sweeps
from upbench.axes import normalise, parse_param, parse_set
from upbench.errors import UsageError


def suite(text: str) -> sweeps.Suite:
    return sweeps.parse(tomllib.loads(text), "suite test.toml")


BASE = """
[suite]
name = "t"
passes = ["fwd", "bwd"]
[axes]
C = [8, 16]
H = {pow2 = [4, 16]}
K = [3, 5]
[[op]]
name = "sapa"
impls = ["lean"]
[[op]]
name = "nearest"
"""


def test_axis_values_lists_and_ranges():
    assert normalise("H", {"pow2": [16, 128]}, "w") == (16, 32, 64, 128)
    assert normalise("K", {"range": [1, 7, 2]}, "w") == (1, 3, 5, 7)
    assert normalise("C", 8, "w") == (8,)
    assert parse_set("H=32,64") == ("H", (32, 64))
    assert parse_set("H=pow2:16..64") == ("H", (16, 32, 64))
    assert parse_set("K=1..7:2") == ("K", (1, 3, 5, 7))
    assert parse_set("dtype=float32,float16") == ("dtype", ("float32", "float16"))
    assert parse_param("d=64") == ("d", 64) and parse_param("variant=depthwise") == ("variant", "depthwise")


@pytest.mark.parametrize("spec,msg", [
    ("X=3", "unknown axis 'X'"), ("H=abc", "not an integer"), ("H=0", "must be ≥ 1"),
    ("dtype=float8", "not one of"), ("H", "expected NAME=VALUES"), ("H=pow2:3..9", "powers of two"),
])
def test_bad_axis_values_are_usage_errors(spec, msg):
    with pytest.raises(UsageError, match=msg):
        parse_set(spec)


def test_expansion_is_the_cartesian_product_without_unused_axes():
    cells = sweeps.expand(suite(BASE))
    sapa = [c for c in cells if c.op == "sapa"]
    near = [c for c in cells if c.op == "nearest"]
    assert len(sapa) == 2 * 3 * 2 * 2  # C × H × K × pass
    # nearest does not use K: its K=3 and K=5 cells are one cell, labelled K=None
    assert len(near) == 2 * 3 * 2 and {c.case.K for c in near} == {None}
    assert len({c.id for c in cells}) == len(cells)
    # stable ids and order
    assert [c.id for c in sweeps.expand(suite(BASE))] == [c.id for c in cells]
    # W is tied to H when not given; impls and passes selected
    assert all(c.case.W is None for c in cells)
    assert {c.impl for c in sapa} == {"lean"} and {c.case.pass_ for c in sapa} == {"fwd", "bwd"}


def test_overrides_and_selection():
    cells = sweeps.expand(suite(BASE), only_ops=("sapa",), overrides={"H": (7,), "W": (9,), "K": (3,)})
    assert len(cells) == 2 * 2 and all(c.case.H == 7 and c.case.w == 9 for c in cells)
    both = sweeps.expand(suite(BASE), only_ops=("sapa",), only_impls=("unfold",), overrides={"H": (4,)})
    assert {c.impl for c in both} == {"unfold"}


def test_even_K_is_skipped_with_reason_when_other_values_are_valid():
    cells = sweeps.expand(suite(BASE), only_ops=("sapa",), overrides={"K": (3, 4)})
    bad = [c for c in cells if c.case.K == 4]
    assert bad and all(c.skip.startswith("invalid: K=4 is even") for c in bad)
    assert all(c.skip is None for c in cells if c.case.K == 3)


def test_even_K_alone_is_a_usage_error():
    with pytest.raises(UsageError, match="K=4 is even.*odd kernel size"):
        sweeps.expand(suite(BASE), only_ops=("sapa",), overrides={"K": (4,)})


def test_unsupported_device_and_forward_only_are_skips(fake_plugin):
    s = suite(BASE.replace('name = "nearest"', 'name = "fake-scale"'))
    cells = sweeps.expand(s, only_ops=("fake-scale",), overrides={"device": ("cuda",), "C": (8,), "H": (4,)})
    assert all("unsupported" in c.skip for c in cells)
    cells = sweeps.expand(s, only_ops=("fake-scale",), only_impls=("fwd-only",), overrides={"C": (8,), "H": (4,)})
    assert [c.skip for c in cells if c.case.pass_ == "bwd"] == ["unsupported: impl fwd-only is forward-only"]


def test_operator_check_and_filters(fake_plugin):
    text = BASE.replace('name = "nearest"', 'name = "fake-scale"') + """
[[skip]]
where = {op = "sapa", K = 5}
reason = "too slow here"
"""
    cells = sweeps.expand(suite(text), overrides={"C": (8, 1024), "H": (4,)})
    fake = [c for c in cells if c.op == "fake-scale" and c.case.C == 1024]
    assert fake and all("too many channels" in c.skip for c in fake)
    assert all(c.skip == "filtered: too slow here" for c in cells if c.op == "sapa" and c.case.K == 5)


@pytest.mark.parametrize("text,msg", [
    ("[suite]\nname='x'\n", "no \\[\\[op\\]\\] entries"),
    ("[axes]\nQ = 3\n[[op]]\nname='nearest'\n", "unknown axis 'Q'"),
    ("[suite]\nmetrics=['speed']\n[[op]]\nname='nearest'\n", "unknown metric"),
    ("[suite]\nkind='model'\n[[op]]\nname='nearest'\n", "needs at least one \\[\\[stage\\]\\]"),
    ("[oops]\n[[op]]\nname='nearest'\n", "unknown section"),
    ("[timing]\nfoo=1\n[[op]]\nname='nearest'\n", "unknown \\[timing\\] key"),
])
def test_malformed_suites(text, msg):
    with pytest.raises(UsageError, match=msg):
        suite(text)


def test_unknown_names_in_selection():
    with pytest.raises(UsageError, match="not registered"):
        sweeps.expand(suite(BASE.replace('"nearest"', '"nope"')))
    with pytest.raises(UsageError, match="no impl 'fast'"):
        sweeps.expand(suite(BASE.replace('["lean"]', '["fast"]')))
    with pytest.raises(UsageError, match="no selected operator has this impl"):
        sweeps.expand(suite(BASE), only_impls=("zzz",))
    with pytest.raises(UsageError, match="--param bogus: no selected operator has this hyperparameter"):
        sweeps.expand(suite(BASE), params={"bogus": 1})
    with pytest.raises(UsageError, match="operator sapa: unknown hyperparameter"):  # a suite's own [op.params]
        sweeps.expand(suite(BASE.replace('impls = ["lean"]', 'impls = ["lean"]\nparams = { bogus = 1 }')))


def test_builtin_suites_parse_and_expand():
    for name in sweeps.builtin_suites():
        s = sweeps.load(name)
        assert sweeps.expand(s), name


def test_model_suite_cells_run_every_stage():
    text = """
[suite]
kind = "model"
[axes]
B = 1
[[stage]]
C = 8
H = 4
[[stage]]
C = 8
H = 8
W = 6
[[op]]
name = "bilinear"
"""
    cells = sweeps.expand(suite(text))
    assert len(cells) == 1 and [(c.H, c.w) for c in cells[0].stages] == [(4, 4), (8, 6)]


def test_per_operator_axes_and_model_impl_preference():
    text = BASE + '[[op]]\nname = "bilinear"\naxes = { C = 3, K = 9 }\n'
    cells = sweeps.expand(suite(text))
    assert {c.case.C for c in cells if c.op == "bilinear"} == {3}
    assert {c.case.C for c in cells if c.op == "sapa"} == {8, 16}
    model = """
[suite]
kind = "model"
[[stage]]
C = 8
H = 4
[[op]]
name = "sapa"
"""
    (cell,) = sweeps.expand(suite(model))
    pref = [n for n in ("cupy-fused", "cupy", "cpu-kernel", "lean") if n in {i.name for i in
            sweeps.registry.get("sapa").impls} and not sweeps.registry.get("sapa").impl(n).unavailable("cpu")]
    assert cell.impl == (pref[0] if pref else "unfold")
