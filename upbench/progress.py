"""Progress of a run on stderr: a bar on a terminal, plain lines in a log.

On a terminal the bar names the cell running now (not the last one finished). When stderr is a file or a
pipe (CI logs, ``nohup``), one line ``upbench: [i/n] running <cell>`` at most once per cell and at most once
every 30 s, so a long run shows it is alive without flooding the log.
"""

from __future__ import annotations

import sys
import time
from typing import IO, Any

LOG_EVERY_S = 30.0


class Progress:
    def __init__(self, total: int, done: int = 0, enabled: bool = True, stream: IO[str] | None = None,
                 clock: Any = time.monotonic) -> None:
        self.total, self.done = total, done
        self.stream = stream or sys.stderr
        self.clock = clock
        self._last_line: float | None = None
        self._bar = None
        self.enabled = enabled
        if enabled and self.stream.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=done, unit="cell", file=self.stream, dynamic_ncols=True)

    def running(self, label: str) -> None:
        """A cell starts (or, for parallel executors, is the oldest still out)."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.set_postfix_str(label, refresh=True)
            return
        now = self.clock()
        if self._last_line is None or now - self._last_line >= LOG_EVERY_S:
            self._last_line = now
            print(f"upbench: [{self.done + 1}/{self.total}] running {label}", file=self.stream, flush=True)

    def finished(self) -> None:
        self.done += 1
        if self._bar is not None:
            self._bar.update(1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
