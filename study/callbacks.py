"""Driver-side Tune callback: each trial that ends is written to Parquet at once.

``on_trial_complete`` (complete or stopped early) and ``on_trial_error`` (failed after its
retries) read each member's :class:`study.outcome.MemberOutcome` and tables from the trial's
last checkpoint (folder ``g<k>/``, see study.trainable), build its row with
:func:`study.outcome.trial_row` and write ``parts/<row id>/``. The union tables are not
touched here (rewriting them after every trial costs O(trials²)): the driver writes them when
the study ends, and readers meanwhile read ``parts/`` (study.results). A part is written
once: a trial reported again after a resume leaves its rows untouched, and a group recorded
in part before a crash gets only its missing members written. After each trial recorded, a
whole copy of Tune's state is kept (study.resume.keep_whole_state); a full disk, met here or
by a trial, writes no row and stops the study (study.resume.note_storage_fault).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from ray import tune

from study import results, resume
from study.groups import member_result
from study.outcome import OUTCOME, MemberOutcome, trial_row
from study.records import TrialSpec
from study.schema import ROW_TABLES
from study.storage import Store


@dataclass(frozen=True)
class RecordContext:
    """What the results callback needs to build and write each trial's rows."""
    study: str
    results_location: str
    budget: str
    imb_factors: dict[str, float | None]  # per data set, as run
    epochs_planned: dict[str, dict[str, int]]  # data set -> method -> Stage-2 epochs
    versions: dict[str, str]  # the driver's versions (fallback when a trial left no outcome)
    git_commit: str | None
    optuna_local: str | None = None  # local Optuna journal to upload after each trial (remote storage)


def _member_files(trial: Any, k: int) -> tuple[MemberOutcome | None, dict[str, Any]]:
    """Member k's outcome and Parquet tables from the trial's last checkpoint."""
    ckpt = trial.checkpoint
    if ckpt is None:
        return None, {}
    tables: dict[str, Any] = {}
    with ckpt.as_directory() as folder:
        sub = Path(folder) / f"g{k}"
        outcome = MemberOutcome.from_json((sub / OUTCOME).read_bytes()) if (sub / OUTCOME).exists() else None
        for name in ROW_TABLES:
            if (sub / f"{name}.parquet").exists():
                tables[name] = pq.read_table(sub / f"{name}.parquet")
    return outcome, tables


def error_text(trial: Any) -> str:
    """Return the last line of a failed trial's error, for its row.

    The last line of a failed trial's error (the exception), for the row: from the study's
    storage, or from the driver's local copy Tune writes first (``Trial.error_file``), which is
    all there is when the storage is full.
    """
    try:
        text = str(trial.get_error() or "")
    except Exception:  # the error file may be gone
        text = ""
    if not text.strip():
        try:
            text = Path(trial.error_file).read_text(errors="replace") if trial.error_file else ""
        except (OSError, AttributeError, TypeError):
            text = ""
    lines = [ln for ln in str(text).strip().splitlines() if ln.strip()]
    return (lines[-1] if lines else "trial failed")[:2000]


class ResultsCallback(tune.Callback):
    """Write each ended trial's members to ``<storage>/<name>/parts/<row id>/`` (the driver writes the unions)."""

    KEEP_EVERY_S = 30.0  # how often a whole copy of Tune's state is taken between trials' ends

    def __init__(self, ctx: RecordContext) -> None:
        self.ctx = ctx
        self._kept_at = 0.0

    def on_step_end(self, iteration: int, trials: list[Any], **info: Any) -> None:
        """Keep a whole copy of Tune's state every half minute, until one succeeds.

        Every half minute, a whole copy of Tune's state (study.resume.keep_whole_state), until
        one succeeds: Tune uploads its state in the background, so a copy may catch it mid-way.
        """
        if time.monotonic() - getattr(self, "_kept_at", 0.0) < self.KEEP_EVERY_S:  # (a pickle of an older run)
            return
        try:
            if resume.keep_whole_state(Store(self.ctx.results_location)):
                self._kept_at = time.monotonic()
        except OSError as exc:
            if not resume.is_no_space(exc):
                raise
            resume.note_storage_fault(self.ctx.results_location)

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        """Record a trial that completed or was stopped early."""
        self._guarded(trial, None)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        """Record a trial that failed after its retries; a full disk stops the study instead."""
        error = error_text(trial)
        if resume.is_no_space(error):  # a full disk is no result of the trial: no row, the study stops
            resume.note_storage_fault(self.ctx.results_location)
            return
        self._guarded(trial, error)

    def on_trial_recover(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        """A trial that will be retried: a full disk fails every retry, so the study stops at once."""
        if resume.is_no_space(error_text(trial)):
            resume.note_storage_fault(self.ctx.results_location)

    def _guarded(self, trial: Any, error: str | None) -> None:
        """Record the trial and keep a whole copy of Tune's state; a full disk stops the study.

        Record the trial and keep a whole copy of Tune's state (study.resume); a full disk
        stops the study (one line from the driver, the rows written before it stay).
        """
        try:
            if self.record(trial, error=error) and resume.keep_whole_state(Store(self.ctx.results_location)):
                self._kept_at = time.monotonic()
        except OSError as exc:
            if not resume.is_no_space(exc):
                raise
            resume.note_storage_fault(exc.filename if isinstance(exc.filename, str) else self.ctx.results_location)

    def record(self, trial: Any, *, error: str | None) -> bool:
        """Write the trial's members not yet recorded (then upload the journal); return whether any was."""
        store = Store(self.ctx.results_location)
        spec: TrialSpec = trial.config["spec"]
        ids = spec.member_ids(trial.trial_id)
        if all(results.part_complete(store, i) for i in ids):
            return False
        last = dict(trial.last_result or {})
        if error is None and not last.get("done"):
            # Ended without finishing, without an error and without a scheduler STOP (which
            # marks the last result done): the experiment was interrupted (Ctrl-C) or the trial
            # never ran. It stays unfinished; a resume continues it.
            return False
        wrote = False
        for k, mid in enumerate(ids):
            if results.part_complete(store, mid):
                continue
            try:
                outcome, tables = _member_files(trial, k)
            except Exception as exc:  # an unreadable checkpoint must not lose the row
                print(f"[study] trial {mid}: cannot read its checkpoint ({exc})", file=sys.stderr)
                outcome, tables = None, {}
            wrote |= self._write(store, spec, k, mid, trial.trial_id, outcome, tables,
                                 last=member_result(last, k) or {}, error=error)
        if wrote:
            if self.ctx.optuna_local and Path(self.ctx.optuna_local).exists():
                store.upload(Path(self.ctx.optuna_local), "optuna.log")
        return wrote

    def _write(self, store: Store, spec: TrialSpec, k: int, mid: str, group_id: str,
               outcome: MemberOutcome | None, tables: dict[str, Any], *, last: dict[str, Any],
               error: str | None) -> bool:
        row = trial_row(spec, k, mid, group_id, outcome, last=last, study=self.ctx.study, budget=self.ctx.budget,
                        imb_factor=self.ctx.imb_factors.get(spec.dataset),
                        epochs_planned=self.ctx.epochs_planned.get(spec.dataset, {}).get(spec.method, 0),
                        error=error, fallback_versions=self.ctx.versions, fallback_commit=self.ctx.git_commit,
                        now=datetime.now(timezone.utc))
        written = results.write_part(store, mid, {"trials": results.table("trials", [row]), **tables})
        if written:
            val = row.get("val_acc")
            print(f"[study] {mid} {row['dataset']} {row['method']} seed {row['seed']}: {row['status']}"
                  + (f", val acc {val:.2f}" if val is not None else "") + f" -> {store.uri(results.PARTS, mid)}",
                  file=sys.stderr, flush=True)
        return written
