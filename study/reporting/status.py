"""Where a (possibly partial) study stands: trials by status, and the unfinished ones listed apart.

trials.parquet holds finished trials (complete, stopped_early, failed); a trial still running
is only in the Optuna journal (state RUNNING), so running trials are counted from there.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from study.reporting.common import COMPLETE, FAILED, KNOWN_STATUSES, STOPPED, groups_of
from study.reporting.load import OptunaInfo

LIST_COLUMNS = ("trial_id", "dataset", "imb_factor", "arch", "method", "mixup", "seed", "variant")


@dataclass(frozen=True)
class StatusSummary:
    """Counts per group and status, plus the trials that did not complete."""

    counts: pd.DataFrame  # index: group label and "all"; columns: statuses found, then "total"
    stopped: pd.DataFrame
    failed: pd.DataFrame
    other: pd.DataFrame  # rows whose status is none of complete/stopped_early/failed
    running: pd.DataFrame  # Optuna RUNNING trials (not yet in trials.parquet)
    optuna_states: dict[str, int]

    @property
    def n_running(self) -> int:
        return len(self.running)


def _counts(trials: pd.DataFrame) -> pd.DataFrame:
    statuses = [*KNOWN_STATUSES, *sorted(set(trials["status"]) - set(KNOWN_STATUSES))]
    rows = {}
    for group in groups_of(trials):
        sub = trials[group.mask(trials)]
        rows[group.label] = {s: int((sub["status"] == s).sum()) for s in statuses}
    rows["all"] = {s: int((trials["status"] == s).sum()) for s in statuses}
    frame = pd.DataFrame.from_dict(rows, orient="index")[statuses]
    frame["total"] = frame.sum(axis=1)
    frame.index.name = "group"
    return frame


def status_summary(trials: pd.DataFrame, info: OptunaInfo) -> StatusSummary:
    """Counts and lists; a trial is listed once, under its status."""
    base = list(LIST_COLUMNS)
    stopped = trials.loc[trials["status"] == STOPPED, [*base, "epochs_run", "epochs_planned", "val_acc", "val_ece"]]
    failed = trials.loc[trials["status"] == FAILED, [*base, "epochs_run", "error"]]
    other = trials.loc[~trials["status"].isin([COMPLETE, STOPPED, FAILED]), [*base, "status"]]
    return StatusSummary(
        counts=_counts(trials),
        stopped=stopped.reset_index(drop=True),
        failed=failed.reset_index(drop=True),
        other=other.reset_index(drop=True),
        running=info.running,
        optuna_states=dict(info.states),
    )
