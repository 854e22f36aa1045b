"""The study's Optuna journal (``optuna.log`` beside the results): where it lives, setting a
stale one aside, uploading a local copy, closing trials a killed driver left RUNNING."""

from __future__ import annotations

import os
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from study.storage import Store

JOURNAL = "optuna.log"


def journal_path(results: Store, local_cache: Path) -> Path:
    """The journal file this driver writes: in the results folder, or a local copy for remote results."""
    return results.local_path(JOURNAL) if results.local else local_cache / JOURNAL


def open_journal(results: Store, local_cache: Path) -> Any:
    """A JournalStorage on :func:`journal_path` (fetched first when the results are remote)."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    path = journal_path(results, local_cache)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not results.local and results.exists(JOURNAL) and not path.exists():
        results.download(path, JOURNAL)
    return JournalStorage(JournalFileBackend(str(path)))


def set_aside_stale(results: Store, local_cache: Path) -> None:
    """A journal without Tune state is from a driver killed before its first snapshot: its
    enqueued Table 6 points and asked trials would leak into this run, so it is set aside."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    if results.local:
        path = results.local_path(JOURNAL)
        if path.exists():
            os.replace(path, path.with_name(f"{JOURNAL}.stale-{stamp}"))
        return
    cached = local_cache / JOURNAL
    if cached.exists():
        os.replace(cached, cached.with_name(f"{JOURNAL}.stale-{stamp}"))
    if results.exists(JOURNAL):
        results.write_bytes(results.read_bytes(JOURNAL), f"{JOURNAL}.stale-{stamp}")
        results.fs.delete_file(results.path(JOURNAL))


def upload(results: Store, local_cache: Path) -> None:
    """Copy the local journal to remote results (nothing to do for local ones)."""
    path = local_cache / JOURNAL
    if not results.local and path.exists():
        results.upload(path, JOURNAL)


def close_orphans(results: Store, local_cache: Path, study_names: Iterable[str]) -> None:
    """Optuna trials left RUNNING by a killed driver (asked, never run) are marked FAIL."""
    import optuna
    from optuna.trial import TrialState

    if not journal_path(results, local_cache).exists():
        return
    storage = open_journal(results, local_cache)
    for name in study_names:
        try:
            study = optuna.load_study(study_name=name, storage=storage)
        except KeyError:
            continue
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            storage.set_trial_user_attr(t._trial_id, "status", "orphaned")
            study.tell(t.number, state=TrialState.FAIL)
