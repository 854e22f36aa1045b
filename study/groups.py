"""What a Tune trial reports for its 1..G members, and one member's share of it.

Every trial reports each member's metrics under ``g<k>_`` (flat scalars, so Tune's loggers and
the searcher see them as they are) and the group's best ``val_acc`` / ``val_ece`` (for a group
of one, the member's own), which is what a scheduler and the progress table act on. The
searcher tells each member's own values to its own Optuna trial. Torch-free.
"""

from __future__ import annotations

import math
from typing import Any


def _finite(values: list[Any]) -> list[float]:
    return [float(v) for v in values if v is not None and not math.isnan(float(v))]


def group_metrics(*, epoch: int, final: bool, members: list[dict[str, Any]]) -> dict[str, Any]:
    """The report of a trial whose members' metrics are ``members`` (in member order)."""
    out: dict[str, Any] = {"epoch": epoch, "final": int(final), "group_size": len(members)}
    for k, m in enumerate(members):
        out.update({f"g{k}_{name}": v for name, v in m.items()})
    kept = [m for m in members if not (m.get("diverged") or m.get("failed"))]  # their metrics are no result
    accs = _finite([m.get("val_acc") for m in kept])
    eces = _finite([m.get("val_ece") for m in kept])
    out["val_acc"] = max(accs) if accs else float("nan")
    out["val_ece"] = min(eces) if eces else float("nan")
    if any(m.get("diverged") for m in members):
        out["diverged"] = 1
    if any(m.get("failed") for m in members):  # (only a told trial replays a failed row)
        out["failed"] = 1
    return out


def member_result(result: dict[str, Any] | None, k: int) -> dict[str, Any] | None:
    """Member ``k``'s own metrics out of a trial's result (None stays None)."""
    if result is None:
        return None
    prefix = f"g{k}_"
    out = {name[len(prefix):]: v for name, v in result.items() if name.startswith(prefix)}
    for name in ("done", "training_iteration", "epoch", "final"):
        if name in result:
            out[name] = result[name]
    return out
