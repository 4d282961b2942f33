"""The `compiled` impl stays compiled however many cells a process runs (dynamo's recompile limit is 8)."""

import torch
from torch._dynamo.utils import counters

from upbench.cases import Case
from upbench.operators import sapa_core


def test_every_cell_compiles_its_own_graph_past_the_recompile_limit(monkeypatch):
    monkeypatch.setattr(sapa_core, "COMPILE_BACKEND", "eager")  # dynamo's tracing, no C++ codegen: fast
    for H in range(3, 15):  # 12 shapes: more than torch._dynamo.config.recompile_limit
        before = counters["stats"]["unique_graphs"]
        case = Case(op="sapa", B=1, C=4, H=H, W=H + 1, K=3, s=2)
        run = sapa_core._compiled_factory(case, None)
        assert counters["stats"]["unique_graphs"] > before, f"H={H}: dynamo gave up compiling"
        x = sapa_core.SAPA_CORE.inputs(case, torch.Generator().manual_seed(H))
        ref = sapa_core.core_reference(x["q"].double(), x["k"].double(), x["v"].double(), 3, 2)
        torch.testing.assert_close(run(x["q"], x["k"], x["v"]).double(), ref, rtol=1e-5, atol=1e-5)
