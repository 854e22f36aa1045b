"""What a trial hands to the driver for each of its members, and how that becomes a row.

The trial (study.trainable) writes one :class:`MemberOutcome` per member as ``outcome.json``
beside the member's Parquet tables in its checkpoint (folder ``g<k>/``); the driver's
callback (study.callbacks) reads it back and calls :func:`trial_row` with what only the
driver knows (the status a scheduler gave, the error of a dead worker).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from typing import Any

from study import schema
from study.records import TrialSpec

OUTCOME = "outcome.json"


@dataclass
class MemberOutcome:
    """One member's facts as the trial knows them; updated after every epoch and at the end."""

    trial_id: str
    started_at: str
    epochs_planned: int
    hostname: str | None = None
    node_id: str | None = None  # the Ray node the member ran on (hostnames of nodes can repeat)
    node_ip: str | None = None
    device_name: str | None = None
    arch: str | None = None
    data_fingerprint: str | None = None
    config_json: str | None = None
    stage1_key: str | None = None
    stage1_metrics: dict[str, Any] = field(default_factory=dict)
    stage1_trained: bool = False
    stage1_s: float | None = None
    stage1_workers: int | None = None  # data-parallel processes that trained the Stage 1 (None: a given file)
    git_commit: str | None = None
    versions: dict[str, str] = field(default_factory=dict)  # mislas/torch/ray/optuna/python versions
    epochs_run: int = 0
    final: bool = False  # all planned epochs ran and test metrics were computed
    val: dict[str, float | None] = field(default_factory=dict)
    test: dict[str, float | None] = field(default_factory=dict)
    tau: float | None = None
    shift_bn: bool | None = None  # the BN mode Stage 2 actually used (every method)
    temperature: float | None = None  # post-hoc temperature scaling: T fitted on val
    val_ts: dict[str, float | None] = field(default_factory=dict)  # metrics of logits / T
    test_ts: dict[str, float | None] = field(default_factory=dict)
    stage2_s: float | None = None
    wall_s: float | None = None
    finished_at: str | None = None
    error: str | None = None  # set by the trial itself (diverged): not retried
    diverged: bool = False  # non-finite, or a loss / NLL above the bound (divergence()): status diverged

    def to_json(self) -> bytes:
        """The outcome as JSON bytes (``outcome.json`` in the trial's checkpoint)."""
        return json.dumps(asdict(self), indent=1, default=_jsonable).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> MemberOutcome:
        """Read an outcome back, ignoring fields a newer version added."""
        raw = json.loads(data)
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known})


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"cannot serialise {type(value).__name__}")


def divergence(num_classes: int, *, nll: dict[str, Any], train_losses: list[Any]) -> str | None:
    """Say why a member counts as diverged, or None.

    Why a member counts as diverged, or None: a Stage-2 epoch's train loss or a split's NLL
    (``nll``: split -> value, None for an undefined one) that is non-finite or above
    ``schema.DIVERGENCE_NATS`` x ln(C) nats (a uniform guess over C classes scores ln C).
    """
    bound = schema.DIVERGENCE_NATS * math.log(max(num_classes, 2))
    values = [(f"{split} NLL", v) for split, v in nll.items() if v is not None]
    values += [(f"epoch {e} train loss", v) for e, v in enumerate(train_losses, 1) if v is not None]
    for what, value in values:
        v = float(value)
        if not math.isfinite(v) or v > bound:
            return f"{what} {v:.4g} is above the bound {bound:.3g} nats ({schema.DIVERGENCE_NATS:g} x ln {num_classes})" \
                if math.isfinite(v) else f"{what} is {v}"
    return None


def at_bound(temperature: float | None) -> bool | None:
    """Whether a fitted temperature sits on the fit's search bound.

    Whether a fitted temperature sits on the fit's search bound (mislas.calibration's
    TEMPERATURE_BOUNDS): there the NLL was still falling, so T is no optimum (None: no T).
    """
    if temperature is None or temperature != temperature:
        return None
    from mislas.calibration import TEMPERATURE_BOUNDS

    low, high = TEMPERATURE_BOUNDS
    return bool(temperature <= low * (1 + 1e-6) or temperature >= high * (1 - 1e-6))


def status_of(outcome: MemberOutcome | None, *, error: str | None) -> str:
    """The row status of a member's outcome.

    Complete (all epochs, test metrics), diverged (blew up: see divergence()), failed (an
    error) or stopped_early.
    """
    if outcome is not None and outcome.diverged:
        return schema.DIVERGED
    if error is not None or (outcome is not None and outcome.error):
        return schema.FAILED
    if outcome is not None and outcome.final:
        return schema.COMPLETE
    return schema.STOPPED_EARLY


def _num(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return None if v != v else v


def _ts(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def trial_row(spec: TrialSpec, k: int, trial_id: str, group_id: str, outcome: MemberOutcome | None, *,
              last: Mapping[str, Any], study: str, budget: str, imb_factor: float | None, epochs_planned: int,
              error: str | None, fallback_versions: dict[str, str], fallback_commit: str | None,
              now: datetime) -> dict[str, Any]:
    """The trials.parquet row of member ``k`` of the Tune trial ``group_id``.

    Without an outcome (a trial that died before its first checkpoint) the row takes what the
    member's ``last`` reported result holds.
    """
    o = outcome or MemberOutcome(
        trial_id=trial_id, started_at="", epochs_planned=epochs_planned, epochs_run=int(last.get("epoch") or 0),
        val={m: last.get(f"val_{m}") for m in schema.METRICS}, test={m: last.get(f"test_{m}") for m in schema.METRICS})
    member = spec.members[k]
    error = error if error is not None else o.error
    s1 = o.stage1_metrics or {}
    row: dict[str, Any] = {
        "trial_id": trial_id, "study": study, "dataset": spec.dataset, "imb_factor": imb_factor, "arch": o.arch,
        "method": spec.method, "mixup": spec.mixup, "seed": spec.seed, "is_paper_setting": member.is_paper_setting,
        "variant": member.variant, "group_id": group_id if spec.grouped else None, "group_size": len(spec.members),
        **(member.setting.columns() if member.setting is not None else {"shift_bn": o.shift_bn}),
        "tau": o.tau, "epochs_planned": o.epochs_planned if outcome else epochs_planned, "epochs_run": o.epochs_run,
        "status": status_of(outcome, error=error),
        **{f"val_{m}": _num(o.val.get(m)) for m in schema.METRICS},
        **{f"test_{m}": _num(o.test.get(m)) for m in schema.METRICS},
        "temperature": o.temperature, "temperature_at_bound": at_bound(o.temperature),
        **{f"val_{m}_ts": _num(o.val_ts.get(m)) for m in schema.TS_METRICS},
        **{f"test_{m}_ts": _num(o.test_ts.get(m)) for m in schema.TS_METRICS},
        "stage1_key": o.stage1_key, "stage1_val_acc": _num(s1.get("val", {}).get("acc")),
        "stage1_test_acc": _num(s1.get("test", {}).get("acc")), "stage1_test_ece": _num(s1.get("test", {}).get("ece")),
        "stage1_trained": o.stage1_trained if outcome else None, "stage1_s": o.stage1_s,
        "stage1_workers": o.stage1_workers, "stage2_s": o.stage2_s,
        "wall_s": o.wall_s, "started_at": _ts(o.started_at), "finished_at": _ts(o.finished_at) or now,
        "error": None if error is None else error[:2000], "budget": budget,
        "optuna_study": spec.optuna_study, "optuna_trial_number": member.optuna_trial_number,
        "data_fingerprint": o.data_fingerprint, "config_json": o.config_json,
        **{name: o.versions.get(name, fallback_versions.get(name)) for name in VERSION_COLUMNS},
        "git_commit": o.git_commit or fallback_commit, "device_name": o.device_name, "hostname": o.hostname,
        "node_id": o.node_id, "node_ip": o.node_ip,
    }
    return row


VERSION_COLUMNS = ("mislas_version", "torch_version", "ray_version", "optuna_version", "python_version")
