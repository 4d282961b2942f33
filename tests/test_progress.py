"""Progress in a log (stderr not a terminal): one line per cell or per 30 s, whichever is rarer."""

import io

from upbench.progress import Progress


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_log_lines_at_most_one_per_30_s_naming_the_cell_running():
    out, clock = io.StringIO(), Clock()
    p = Progress(100, stream=out, clock=clock)
    for i in range(100):  # a cell every 2 s: 200 s in all
        p.running(f"cell{i}")
        clock.t += 2.0
        p.finished()
    lines = out.getvalue().splitlines()
    assert lines[0] == "upbench: [1/100] running cell0"  # the cell starting, not the last one finished
    assert lines[1] == "upbench: [16/100] running cell15"  # 30 s later
    assert len(lines) == 7


def test_slow_cells_get_one_line_each_and_disabled_prints_nothing():
    out, clock = io.StringIO(), Clock()
    p = Progress(3, done=1, stream=out, clock=clock)  # a resumed run: one cell was already done
    for i in range(2):
        p.running(f"c{i}")
        clock.t += 100.0
        p.finished()
    assert out.getvalue().splitlines() == ["upbench: [2/3] running c0", "upbench: [3/3] running c1"]
    quiet = io.StringIO()
    q = Progress(3, enabled=False, stream=quiet)
    q.running("x")
    assert quiet.getvalue() == ""
