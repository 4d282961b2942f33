"""The three outcomes of the house style: user error, skip, failure.

A `UsageError` is the user's fault (bad flag, bad suite, bad hyperparameter): the CLI prints its one-line
message as ``upbench: error: …`` and exits 2 before anything is written. Anything else that escapes is a bug
and keeps its traceback. A failing sweep cell is not an exception at this level: the runner records it.
"""

from __future__ import annotations


class UsageError(Exception):
    """Bad input from the user: one line that names where, what and the fix."""

    def __init__(self, where: str, what: str, fix: str = "") -> None:
        self.where, self.what, self.fix = where, what, fix
        msg = f"{where}: {what}" if where else what
        if fix:
            msg += f"; {fix}"
        super().__init__(msg)
