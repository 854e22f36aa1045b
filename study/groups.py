"""Grouped Stage-2 trials in the study (``--group-size G``): ids and results of a group's members.

One Tune trial of a grouped study trains G MiSLAS settings of one (data set, seed) on one
backbone pass per batch (:func:`study.trainable.run_group`). Its config carries the settings as
``members``; each member is its own Optuna trial and its own trials row, id ``<group_id>-g<k>``
where ``group_id`` is the Tune trial id. Kept free of torch so the searcher can import it.
"""

from __future__ import annotations

from typing import Any


def member_id(group_id: str, k: int) -> str:
    """The row id of member ``k`` of the group run by Tune trial ``group_id``."""
    return f"{group_id}-g{k}"


def member_ids(trial_id: str, config: dict[str, Any]) -> list[str]:
    """The trials rows a Tune trial yields: its own id, or one id per member of its group."""
    members = config.get("members") or ()
    return [member_id(trial_id, k) for k in range(len(members))] if members else [trial_id]


def member_config(config: dict[str, Any], k: int) -> dict[str, Any]:
    """Member ``k`` of a group's config as a plain trial config (plus group_id and group_size)."""
    out = {key: v for key, v in config.items() if key != "members"}
    out.update(config["members"][k])
    return out


def group_metrics(*, epoch: int, final: bool, members: list[dict[str, Any]]) -> dict[str, Any]:
    """What a group reports to Tune: each member's metrics under ``g<k>_`` (flat scalars, so Tune's
    loggers and the searcher see them as they are), and the group's best val acc / ECE for the
    progress table. The searcher tells each member's own values to its own Optuna trial."""
    out: dict[str, Any] = {"epoch": epoch, "final": int(final), "group_size": len(members)}
    for k, m in enumerate(members):
        out.update({f"g{k}_{name}": v for name, v in m.items()})
    accs = [m.get("val_acc") for m in members if m.get("val_acc") == m.get("val_acc") and m.get("val_acc") is not None]
    eces = [m.get("val_ece") for m in members if m.get("val_ece") == m.get("val_ece") and m.get("val_ece") is not None]
    out["val_acc"] = max(accs) if accs else float("nan")
    out["val_ece"] = min(eces) if eces else float("nan")
    return out


def member_result(result: dict[str, Any] | None, k: int) -> dict[str, Any] | None:
    """Member ``k``'s own metrics out of a group's result (None stays None)."""
    if result is None:
        return None
    prefix = f"g{k}_"
    out = {name[len(prefix):]: v for name, v in result.items() if name.startswith(prefix)}
    for name in ("done", "training_iteration"):
        if name in result:
            out[name] = result[name]
    return out
