"""Suite cells as pytest-benchmark benchmarks: `pytest benchmarks --benchmark-only` (docs/ci.md)."""

import os

import pytest

from upbench.pytest_plugin import suite_params

SUITE = os.environ.get("UPBENCH_BENCH_SUITE", "smoke")


@pytest.mark.parametrize("cell", suite_params(SUITE))
def test_suite_cell(upbench_benchmark, cell):
    upbench_benchmark(cell)
