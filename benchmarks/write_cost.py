"""How much of a long run goes to writing results: a 5,000-cell run of the test plugin's cheap operator.

    PYTHONPATH=tests/plugins python benchmarks/write_cost.py [CELLS] [OUT_DIR] [--no-report]

Times, around one in-process run: the run's wall time, the per-cell appends to rows.jsonl, the one final
write of results.json + results.csv, and the report (rendered once, at the end; ``--no-report`` leaves it
out, since rendering figures for thousands of rows is not writing results). Prints one JSON object.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from upbench import engine, rundir


def main() -> None:
    args = [a for a in sys.argv[1:] if a != "--no-report"]
    cells = int(args[0]) if args else 5000
    out = Path(args[1]) if len(args) > 1 else Path(tempfile.mkdtemp()) / "run"
    h = max(1, cells // 50)
    suite = out.parent / "write-cost.toml"
    out.parent.mkdir(parents=True, exist_ok=True)
    suite.write_text(f'[suite]\nname = "write-cost"\nmetrics = ["accuracy"]\n[axes]\nC = {{range = [1, 50]}}\n'
                     f'H = {{range = [1, {h}]}}\n[[op]]\nname = "fake-scale"\nimpls = ["good"]\n')
    spent = {"append": 0.0, "final_write": 0.0, "report": 0.0}

    def timed(key, fn):
        def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent[key] += time.perf_counter() - t
        return wrapper

    rundir.RowStream.append = timed("append", rundir.RowStream.append)
    engine.write_run = timed("final_write", engine.write_run)
    import upbench.report

    render = upbench.report.write_report if "--no-report" not in sys.argv else (lambda paths, out: None)
    upbench.report.write_report = timed("report", render)
    plan = engine.plan(engine.Request(str(suite)))
    t = time.perf_counter()
    outcome = engine.Engine(plan, out, "write_cost", progress=False).run()
    wall = time.perf_counter() - t - spent["report"]  # the report is rendered after the results are written
    writing = spent["append"] + spent["final_write"]
    report_s = round(spent["report"], 2) if "--no-report" not in sys.argv else None
    print(json.dumps({"cells": len(outcome.rows), "wall_s": round(wall, 2), "append_s": round(spent["append"], 3),
                      "final_write_s": round(spent["final_write"], 3), "report_s": report_s,
                      "writing_fraction": round(writing / wall, 4),
                      "per_cell_append_ms": round(1e3 * spent["append"] / len(outcome.rows), 4)}))


if __name__ == "__main__":
    main()
