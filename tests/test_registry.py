import pytest

from upbench import registry
from upbench.errors import UsageError


def test_builtins_register_through_the_entry_point_group():
    ops = registry.operators()
    assert {"nearest", "bilinear", "sapa"} <= set(ops)
    assert {i.name for i in ops["sapa"].impls} >= {"unfold", "lean"}


def test_third_party_plugin_is_discovered(fake_plugin):
    ops = registry.operators()
    assert "fake-scale" in ops
    assert ops["fake-scale"] is fake_plugin.FAKE_SCALE
    # A plugin whose object cannot be loaded is reported, and does not take the others down.
    assert "fake-broken" in registry.broken_plugins()
    assert "does_not_exist" in registry.broken_plugins()["fake-broken"]
    with pytest.raises(UsageError, match="fake-broken.*failed to load"):
        registry.get("fake-broken")


def test_plugin_absent_when_not_installed():
    assert "fake-scale" not in registry.operators()


def test_unknown_operator_names_the_known_ones():
    with pytest.raises(UsageError, match="not registered.*known operators: .*bilinear"):
        registry.get("nope")


def test_list_shows_availability_and_reasons(run_cli, fake_plugin):
    code, out, err = run_cli("list")
    assert code == 0 and err == ""
    assert "fake-scale" in out and "fwd-only" in out and "forward-only" in out
    assert "cuda: unavailable — needs a CUDA device" in out or "cuda: available" in out
    assert "fake-broken: BROKEN PLUGIN" in out
