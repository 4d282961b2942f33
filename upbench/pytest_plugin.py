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
        from .metrics import Context, Options, metric
        from .prepare import prepare
        from .runner import identity
        from .timing import Stopping

        ctx = Context(cell, Options("", frozenset({"accuracy"}), Stopping()), {})
        ctx.prepared = prepare(cell)  # the one way a cell is prepared, as in `upbench run`
        ids = identity("", cell)
        benchmark.extra_info.update(metric("counts").measure(ctx))
        agree = metric("accuracy").measure(ctx)
        benchmark.extra_info.update(upbench_cell_id=cell.id, op=cell.op, impl=cell.impl,
                                    case=cell.case.label(), impl_hash=ids["impl_hash"],
                                    err_max_rel=agree["err_max_rel"], agree=agree["agree"])
        fn = ctx.prepared.fn
        if cell.case.device == "cuda":
            import torch

            def synced() -> object:
                out = fn()
                torch.cuda.synchronize()  # pytest-benchmark times wall clock: wait for the kernels
                return out
            return benchmark(synced)
        return benchmark(fn)

    return run
