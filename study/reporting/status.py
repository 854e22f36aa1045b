"""Where a (possibly partial) study stands: trials by status, and the unfinished ones listed apart.

trials.parquet holds finished trials (complete, stopped_early, failed, diverged); a trial still running
is only in the Optuna journal (state RUNNING), so running trials are counted from there.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from study.reporting.common import COMPLETE, DIVERGED, FAILED, KNOWN_STATUSES, STOPPED, groups_of
from study.reporting.load import OptunaInfo

LIST_COLUMNS = ("trial_id", "dataset", "imb_factor", "arch", "method", "mixup", "seed", "variant")


@dataclass(frozen=True)
class StatusSummary:
    """Counts per group and status, plus the trials that did not complete."""

    counts: pd.DataFrame  # index: group label and "all"; columns: statuses found, then "total"
    stopped: pd.DataFrame
    failed: pd.DataFrame  # failed and diverged rows
    other: pd.DataFrame  # rows whose status is none of complete/stopped_early/failed/diverged
    running: pd.DataFrame  # Optuna RUNNING trials (not yet in trials.parquet)
    optuna_states: dict[str, int]
    temperature_at_bound: int = 0  # complete rows whose fitted T sits on the fit's bound
    with_temperature: int = 0  # complete rows with a fitted T

    @property
    def n_running(self) -> int:
        """Number of Optuna trials still running."""
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
    # diverged rows are listed with the failed ones (their error says why; the counts keep them apart)
    failed = trials.loc[trials["status"].isin([FAILED, DIVERGED]), [*base, "status", "epochs_run", "error"]]
    other = trials.loc[~trials["status"].isin([COMPLETE, STOPPED, FAILED, DIVERGED]), [*base, "status"]]
    return StatusSummary(
        counts=_counts(trials),
        stopped=stopped.reset_index(drop=True),
        failed=failed.reset_index(drop=True),
        other=other.reset_index(drop=True),
        running=info.running,
        optuna_states=dict(info.states),
        **_temperatures(trials),
    )


def _temperatures(trials: pd.DataFrame) -> dict[str, int]:
    """How many complete rows have a temperature, and how many of those on the fit's bound."""
    done = trials[trials["status"] == COMPLETE]
    if "temperature_at_bound" not in done.columns:
        return {"temperature_at_bound": 0, "with_temperature": int(done["temperature"].notna().sum())}
    flags = done["temperature_at_bound"]
    return {"temperature_at_bound": int((flags == True).sum()),  # noqa: E712  (nulls count as not)
            "with_temperature": int(done["temperature"].notna().sum())}
