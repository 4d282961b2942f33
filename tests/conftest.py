from __future__ import annotations

import sys
from pathlib import Path

import pytest

from upbench import registry

PLUGINS = str(Path(__file__).parent / "plugins")


@pytest.fixture
def fake_plugin():
    """Put the test-tree plugin package (with its dist-info entry points) on sys.path, as pip would."""
    sys.path.insert(0, PLUGINS)
    registry.refresh()
    try:
        import upbench_fakeop

        yield upbench_fakeop
    finally:
        sys.path.remove(PLUGINS)
        sys.modules.pop("upbench_fakeop", None)
        registry.refresh()


@pytest.fixture
def run_cli(capsys):
    """Call the CLI in-process; return (exit code, stdout, stderr)."""
    from upbench.cli import main

    def call(*argv: str) -> tuple[int, str, str]:
        code = main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return code, out, err

    return call
