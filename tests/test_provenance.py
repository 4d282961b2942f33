"""impl_hash covers an impl's whole source closure; compare notes and merge refuses a change of code."""

import json
import shutil
import sys

from upbench import registry
from upbench.provenance import impl_hash


def _hashes(fake) -> dict[str, str]:
    op = fake.FAKE_SCALE
    return {i.name: impl_hash(op, i) for i in op.impls}


def test_each_impl_has_its_own_hash_and_a_kernel_edit_changes_exactly_its_users(tmp_path, monkeypatch):
    from pathlib import Path

    src = Path(__file__).parent / "plugins" / "upbench_fakeop"
    shutil.copytree(src, tmp_path / "upbench_fakeop")  # a copy of the package: its .cu is edited below
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "upbench_fakeop", raising=False)
    import upbench_fakeop as fake

    try:
        assert Path(fake.__file__).parent == tmp_path / "upbench_fakeop"
        before = _hashes(fake)
        assert len(set(before.values())) == len(before)  # every impl its own hash, same files or not
        assert before == _hashes(fake)  # stable
        cu = tmp_path / "upbench_fakeop" / "scale.cu"
        cu.write_text(cu.read_text() + "// one more line\n")
        after = _hashes(fake)
        assert {n for n in before if before[n] != after[n]} == {"kernel"}
    finally:
        sys.modules.pop("upbench_fakeop", None)


def test_hash_does_not_depend_on_where_the_code_is_installed(tmp_path, fake_plugin):
    op = fake_plugin.FAKE_SCALE
    here = impl_hash(op, op.impl("kernel"))
    moved = tmp_path / "elsewhere.cu"
    moved.write_bytes(fake_plugin.KERNEL.read_bytes())
    from dataclasses import replace

    assert impl_hash(op, replace(op.impl("kernel"), sources=(str(moved),))) == here


def test_registered_impls_hash_their_sources(fake_plugin):
    for op in registry.operators().values():
        hashes = {impl_hash(op, i) for i in op.impls}
        assert len(hashes) == len(op.impls), op.name


def test_compare_notes_changed_code_and_merge_refuses_mixed_code(run_cli, tmp_path):
    code, _, err = run_cli("run", "--suite", "smoke", "--op", "nearest", "--set", "H=4", "--shard", "0/2",
                           "--out", tmp_path / "s0", "--no-progress")
    assert code == 0, err
    code, _, err = run_cli("run", "--suite", "smoke", "--op", "nearest", "--set", "H=4", "--shard", "1/2",
                           "--out", tmp_path / "s1", "--no-progress")
    assert code == 0, err
    doc = json.loads((tmp_path / "s1" / "results.json").read_text())
    for r in doc["rows"]:
        r["impl_hash"] = "0123456789ab"  # as if shard 1 ran an edited checkout
    (tmp_path / "s1" / "results.json").write_text(json.dumps(doc))
    code, _, err = run_cli("merge", tmp_path / "s0", tmp_path / "s1", "--out", tmp_path / "m")
    assert code == 2 and "ran code 0123456789ab" in err and not (tmp_path / "m").exists()
    shutil.copytree(tmp_path / "s1", tmp_path / "s1-copy")
    doc["rows"][0]["impl_hash"] = "ba9876543210"
    (tmp_path / "s1-copy" / "results.json").write_text(json.dumps(doc))
    code, out, _ = run_cli("compare", tmp_path / "s1", tmp_path / "s1-copy")
    assert "code changed: impl_hash 0123456789ab → ba9876543210" in out
