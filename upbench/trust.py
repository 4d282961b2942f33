"""The ``trust`` column: one short summary of every check that can make a row's numbers a lie.

``ok`` when every check that ran passed, else the failed checks, comma-separated: ``modified-input``,
``wrong`` (disagrees with the reference; ``wrong@uniform`` names the input that showed it), ``property``,
``implausible`` (faster than the speed of light), ``escaped-stream`` and ``host-sync`` (CUDA timing check).
Skipped cells and cells that failed for another reason have no trust value: there is no number to trust.
"""

from __future__ import annotations

from typing import Any

MODIFIED_INPUT = "ModifiedInput"  # the exception name the runner writes into a failed row's reason


def flags(row: dict[str, Any]) -> list[str]:
    """The failed checks of one results row (possibly read back from JSON)."""
    out = []
    if row.get("status") in ("failed", "oom"):
        return ["modified-input"] if str(row.get("reason", "")).startswith(MODIFIED_INPUT) else []
    agree = row.get("agree")
    if agree is not None and agree not in (True, "True", "true", 1):
        worst = row.get("agree_worst_input") or "normal"
        out.append("wrong" if worst == "normal" else f"wrong@{str(worst).split('@')[0]}")
    if str(row.get("property_check") or "").startswith("failed"):
        out.append("property")
    if row.get("floor_verdict") == "implausible":
        out.append("implausible")
    tc = str(row.get("timing_check") or "ok")
    out += [p.split(" ")[0] for p in tc.split("; ") if p and p != "ok"]
    return out


def trust(row: dict[str, Any]) -> str | None:
    """``ok``, the comma-separated failed checks, or None for a row with no measured number."""
    f = flags(row)
    if f:
        return ",".join(f)
    return "ok" if row.get("status") == "ok" else None
