"""pytest-benchmark integration: run any suite cell as a pytest-benchmark benchmark.

Registered through the ``pytest11`` entry point, so with upbench installed a test file can say::

    import pytest
    from upbench.pytest_plugin import suite_params

    @pytest.mark.parametrize("cell", suite_params("gate"))
    def test_gate(upbench_benchmark, cell):
        upbench_benchmark(cell)

and ``pytest --benchmark-only --benchmark-autosave --benchmark-compare-fail=median:10%`` works as usual.
upbench's own metrics (MACs, FLOPs, params, minimal bytes, agreement with the float64 reference) travel
in each benchmark's ``extra_info``; cells upbench would skip are pytest skips with the same reason.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest


def suite_params(suite: str, ops: tuple[str, ...] | None = None, impls: tuple[str, ...] | None = None,
                 overrides: dict[str, tuple[Any, ...]] | None = None) -> list[Any]:
    """One ``pytest.param`` per cell of ``suite`` (a built-in name or a path), id'd by impl and case."""
    from . import sweeps

    cells = sweeps.expand(sweeps.load(suite), ops, impls, overrides)
    return [pytest.param(c, id=f"{c.impl}-{c.case.label()}-{c.id}",
                         marks=[pytest.mark.skip(reason=c.skip)] if c.skip else []) for c in cells]


@pytest.fixture
def upbench_benchmark(benchmark: Any) -> Callable[[Any], Any]:
    """``upbench_benchmark(cell)``: prepare the cell outside the timer, record metrics, benchmark it.

    Depends on pytest-benchmark's ``benchmark`` fixture by name, so ``--benchmark-only`` sees a benchmark.
    """

    def run(cell: Any) -> Any:
        from . import registry
        from .runner import _agreement, counts, impl_hash
        from .workload import make_callable, prepare_stage

        op = registry.get(cell.op)
        impl = op.impl(cell.impl)
        stages = [prepare_stage(op, impl, c) for c in cell.stages]
        agree = _agreement(op, stages, cell.case.pass_)
        benchmark.extra_info.update(counts(op, cell.stages, cell.case.pass_))
        benchmark.extra_info.update(upbench_cell_id=cell.id, op=cell.op, impl=cell.impl,
                                    case=cell.case.label(), impl_hash=impl_hash(cell.op, cell.impl),
                                    err_max_rel=agree.max_rel, agree=agree.ok)
        fn = make_callable(stages, cell.case.pass_, cell.op, cell.impl)
        if cell.case.device == "cuda":
            import torch

            def synced() -> object:
                out = fn()
                torch.cuda.synchronize()  # pytest-benchmark times wall clock: wait for the kernels
                return out
            return benchmark(synced)
        return benchmark(fn)

    return run
