"""The study's Optuna journal: where it lives, checking, rebuilding, uploading and closing orphans.

The study's Optuna journal (``optuna.log`` beside the results): where it lives, setting a
stale one aside, checking and rebuilding a damaged one, uploading a local copy, closing
trials a killed driver left RUNNING.

Nothing damaged is trusted. On a resume the journal is checked before Tune restores its
searcher (which replays the file): it must exist, end with a whole record, hold only JSON
records that replay, hold the study's Optuna studies, a trial for every finished MiSLAS row
in ``parts/`` (same number, same ``ray_trial_id``), and every trial Tune's searcher state
refers to. A journal that fails is set aside (``optuna.log.damaged-<stamp>``) and rebuilt:
each study created again with its name and directions, and its trials added again in their
order (``optuna.trial.create_trial``), so that the trial numbers the rows record and the
trial ids the restored searcher holds mean the same trials as before:

* a finished row (parts/) -> its params (the setting columns Optuna suggested; ``p`` only for
  form ``exp``), values (the objectives' columns), state (complete -> COMPLETE,
  stopped_early -> PRUNED, failed or an undefined value -> FAIL), user attrs (``ray_trial_id``,
  ``seed``, ``is_paper_setting``, ``status``) and, for a single objective, the per-epoch values;
* a trial Tune's searcher state (``tune/searcher-state-*.json``, StudySearcher's JSON) knows and
  no row has yet (an unfinished Tune trial) -> RUNNING with the params it was given, told
  when the trial ends;
* a number neither knows (a trial a killed driver asked for and never ran) -> FAIL with
  user attr ``status = orphaned``, as :func:`close_orphans` marks such trials.

What cannot be rebuilt consistently stops the resume with one line (:class:`UsageError`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from mislas.errors import UsageError
from study.storage import Store, stamp
from study.tune_adapter import quiet_optuna, trial_from_json, trial_storage_id

JOURNAL = "optuna.log"
STATES = {"complete": "COMPLETE", "stopped_early": "PRUNED", "failed": "FAIL"}


def journal_path(results: Store, local_cache: Path) -> Path:
    """The journal file this driver writes: in the results folder, or a local copy for remote results."""
    return results.local_path(JOURNAL) if results.local else local_cache / JOURNAL


def fetch(results: Store, local_cache: Path) -> Path:
    """:func:`journal_path`, downloaded first when the results are remote and there is no local copy."""
    path = journal_path(results, local_cache)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not results.local and results.exists(JOURNAL) and not path.exists():
        results.download(path, JOURNAL)
    return path


def open_journal(results: Store, local_cache: Path) -> Any:
    """A JournalStorage on :func:`journal_path` (fetched first when the results are remote)."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(str(fetch(results, local_cache))))


def set_aside_stale(results: Store, local_cache: Path) -> None:
    """Set the journal aside as stale (``optuna.log.stale-<stamp>``).

    A journal without Tune state is from a driver killed before its first snapshot: its
    enqueued Table 6 points and asked trials would leak into this run, so it is set aside.
    """
    _set_aside(results, local_cache, f".stale-{stamp()}")


def _set_aside(results: Store, local_cache: Path, suffix: str) -> None:
    if results.local:
        path = results.local_path(JOURNAL)
        if path.exists():
            os.replace(path, path.with_name(JOURNAL + suffix))
        return
    cached = local_cache / JOURNAL
    if cached.exists():
        os.replace(cached, cached.with_name(JOURNAL + suffix))
    if results.exists(JOURNAL):
        results.set_aside(suffix, JOURNAL)


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
            storage.set_trial_user_attr(trial_storage_id(storage, name, t.number), "status", "orphaned")
            study.tell(t.number, state=TrialState.FAIL)


def tell_finished(results: Store, local_cache: Path, spec: JournalSpec, rows: Iterable[Mapping[str, Any]]) -> int:
    """Tell Optuna the end of every RUNNING trial whose row is written; return how many.

    Tell Optuna the end of every RUNNING trial whose row is written (as the searcher would
    have): a row written again after its part was set aside, by the driver's reconcile step
    rather than by a trial that reported, would otherwise stay RUNNING in a rebuilt journal.
    Returns how many were told.
    """
    import optuna
    from optuna.trial import TrialState

    if not spec.names or not journal_path(results, local_cache).exists():
        return 0
    finished = {r["trial_id"]: r for r in rows if r.get("optuna_study") in set(spec.names.values())}
    storage = open_journal(results, local_cache)
    told = 0
    with quiet_optuna():
        for name in spec.names.values():
            try:
                study = optuna.load_study(study_name=name, storage=storage)
            except KeyError:
                continue
            for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                row = finished.get(t.user_attrs.get("ray_trial_id"))
                if row is None:
                    continue
                state, value_args = _outcome(row, spec, t.intermediate_values)
                storage.set_trial_user_attr(trial_storage_id(storage, name, t.number), "status", row.get("status"))
                study.tell(t.number, value_args.get("values"), state=state)
                told += 1
    return told


# --- checking and rebuilding ----------------------------------------------------------------

@dataclass(frozen=True)
class JournalSpec:
    """What a rebuild needs to know of the study."""

    names: Mapping[str, str]  # data set -> Optuna study name (``<study>:<data set>``)
    directions: Sequence[str]  # "maximize" / "minimize", one per objective
    metrics: Sequence[str]  # the trials columns of the objectives (val_acc, val_ece)
    spaces: Mapping[str, Any]  # data set -> study.space.SearchSpace (define-by-run: the distributions)


@dataclass
class Asked:
    """One Optuna trial as Tune's searcher state holds it."""

    trial_id: int  # the journal-wide id the restored searcher will use
    study: str
    number: int
    params: dict[str, Any]
    distributions: dict[str, Any]
    user_attrs: dict[str, Any]
    system_attrs: dict[str, Any]
    intermediate_values: dict[int, float]
    datetime_start: datetime | None


@dataclass
class SearcherState:
    """The Optuna side of Tune's newest searcher snapshot."""

    file: str  # its name under tune/
    saved: Any = field(repr=False)  # the StudySearcher state (JSON, study.search.StudySearcher.get_state)
    studies: dict[int, str] = field(default_factory=dict)  # study id -> name
    trials: dict[int, Asked] = field(default_factory=dict)  # trial id -> trial
    journal_files: set[str] = field(default_factory=set)  # where the restored searcher will write


STATE_PREFIX, STATE_SUFFIX = "searcher-state-", ".json"  # study.search.StudySearcher.CKPT_FILE_TMPL


def read_searcher_state(results: Store) -> SearcherState | None:
    """Read Tune's newest searcher state of the study, or None.

    Tune's newest ``tune/searcher-state-*.json`` (study.search.StudySearcher's JSON state),
    read without touching the journal. None when there is none or it is not a StudySearcher's;
    a UsageError when the study's searcher state is an older version's pickle (never unpickled).
    """
    listed = results.listdir("tune")
    names = sorted(n for n in listed if n.startswith(STATE_PREFIX) and n.endswith(STATE_SUFFIX))
    if not names:
        if any(n.startswith(STATE_PREFIX) and n.endswith(".pkl") for n in listed):
            raise UsageError(f"--resume: {results.uri('tune')} holds Tune's searcher state as a pickle (a study "
                             f"started before searcher state was JSON), which is not read; pick a new --name")
        return None
    try:
        saved = json.loads(results.read_bytes("tune", names[-1]))
        state = SearcherState(file=names[-1], saved=saved)
        if saved.get("journal_file"):
            state.journal_files.add(str(saved["journal_file"]))
        for search in saved["searchers"].values():
            for t in search["trials"].values():
                asked = Asked(study=search["study_name"], **trial_from_json(t))
                state.trials[asked.trial_id] = asked
        state.studies = {int(s["study_id"]): s["study_name"] for s in saved["searchers"].values()}
    except (ValueError, KeyError, TypeError, AttributeError):  # another searcher's: rebuild from the rows alone
        return None
    return state


def retarget_searcher_state(results: Store, state: SearcherState, path: Path) -> None:
    """Point Tune's searcher snapshot at the journal ``path`` (the state file is rewritten).

    A study folder that was moved keeps the old path in its snapshot (the resumed searcher
    would write another folder's journal); the searcher opens the journal afresh on resume,
    so a rebuilt journal is read from its start.
    """
    saved = dict(state.saved, journal_file=str(path))
    results.write_bytes(json.dumps(saved).encode(), "tune", state.file)


def _mislas_rows(rows: Iterable[Mapping[str, Any]], spec: JournalSpec) -> dict[tuple[str, int], Mapping[str, Any]]:
    studies = set(spec.names.values())
    return {(r["optuna_study"], int(r["optuna_trial_number"])): r for r in rows
            if r.get("optuna_study") in studies and r.get("optuna_trial_number") is not None}


def _record_problem(data: bytes) -> str | None:
    """What is wrong with the journal's bytes as records (None: each line is a whole record)."""
    if not data:
        return "is empty"
    if not data.endswith(b"\n"):
        return "is truncated (its last record is incomplete)"
    for n, line in enumerate(data.splitlines(), 1):
        try:
            record = json.loads(line)
        except ValueError as exc:
            return f"is unreadable (line {n}: {type(exc).__name__}: {exc})"
        if not isinstance(record, dict) or "op_code" not in record:
            return f"is unreadable (line {n} is not a journal record)"
    return None


def _replay(path: Path, spec: JournalSpec) -> tuple[dict[str, dict[int, Any]], int] | str:
    """Replay the journal: the study's trials and the trial count, or what is wrong.

    The study's trials by study name and number, and the journal's trial count; or what
    is wrong (records that do not replay, a study missing).
    """
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    try:
        with quiet_optuna():
            storage = JournalStorage(JournalFileBackend(str(path)))
            studies = {s.study_name for s in storage.get_all_studies()}
            missing = [name for name in spec.names.values() if name not in studies]
            if missing:
                return f"lacks the Optuna study {missing[0]}"
            trials = {name: {t.number: t for t in optuna.load_study(study_name=name, storage=storage).get_trials(
                deepcopy=False)} for name in spec.names.values()}
            count = sum(len(optuna.load_study(study_name=s, storage=storage).get_trials(deepcopy=False))
                        for s in studies)
    except Exception as exc:  # noqa: BLE001 - records that do not replay
        return f"is unreadable ({type(exc).__name__}: {exc})"
    return trials, count


def journal_problem(path: Path, spec: JournalSpec, rows: Iterable[Mapping[str, Any]],
                    state: SearcherState | None = None) -> str | None:
    """What is wrong with the journal at ``path`` (None: nothing)."""
    if not path.exists():
        return "is missing"
    problem = _record_problem(path.read_bytes())
    if problem is not None:
        return problem
    replayed = _replay(path, spec)
    if isinstance(replayed, str):
        return replayed
    trials, count = replayed
    for (name, number), row in sorted(_mislas_rows(rows, spec).items()):
        t = trials[name].get(number)
        if t is None or t.user_attrs.get("ray_trial_id") != row["trial_id"]:
            return f"is truncated: it lacks trial {number} of {name} (row {row['trial_id']})"
    if state is not None and state.trials and max(state.trials) >= count:
        return f"is truncated: it lacks trial id {max(state.trials)}, which Tune's searcher state refers to"
    return None


def _distributions(space: Any, setting: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return the params and distributions Optuna records for ``setting``.

    The params and distributions Optuna records for ``setting``: the space's define-by-run
    replayed on an in-memory trial with the setting enqueued (``p`` only for form exp, fixed
    knobs not at all, ε_K's range up to ε_1).
    """
    import optuna

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.enqueue_trial({k: v for k, v in setting.items() if v is not None})
    trial = study.ask()
    space(trial)
    return dict(trial.params), dict(trial.distributions)


def _finite(v: Any) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v))


def _outcome(row: Mapping[str, Any], spec: JournalSpec, steps: Mapping[int, float]) -> tuple[Any, dict[str, Any]]:
    """The Optuna state of a finished row and its value arguments (as the searcher told them)."""
    from optuna.trial import TrialState

    state = getattr(TrialState, STATES.get(str(row.get("status")), "FAIL"))
    values = [row.get(m) for m in spec.metrics]
    if state == TrialState.COMPLETE:
        if all(_finite(v) for v in values):
            return state, {"values": [float(v) for v in values if v is not None]}
        return TrialState.FAIL, {}  # an undefined value: the searcher told FAIL
    if state == TrialState.PRUNED and len(spec.metrics) == 1 and steps:
        return state, {"value": steps[max(steps)]}  # as Optuna's tell(PRUNED) keeps the last step's value
    return state, {}


def _frozen(row: Mapping[str, Any] | None, asked: Asked | None, spec: JournalSpec, dataset: str,
            epochs: Mapping[str, Sequence[tuple[int, float]]]) -> Any:
    """Build the frozen trial to add for a row, an asked trial, or neither.

    The trial to add: from the finished row (and what the searcher knew), or RUNNING as asked,
    or a FAIL placeholder (neither).
    """
    import optuna
    from optuna.trial import TrialState

    if row is None and asked is None:
        return optuna.trial.create_trial(state=TrialState.FAIL, user_attrs={"status": "orphaned"})
    params, dists = (asked.params, asked.distributions) if asked is not None else ({}, {})
    user = dict(asked.user_attrs) if asked is not None else {}
    system = dict(asked.system_attrs) if asked is not None else {}
    steps = dict(asked.intermediate_values) if asked is not None else {}
    if row is None:
        assert asked is not None
        trial = optuna.trial.create_trial(state=TrialState.RUNNING, params=params, distributions=dists,
                                          user_attrs=user, system_attrs=system, intermediate_values=steps)
        if asked.datetime_start is not None:
            trial.datetime_start = asked.datetime_start
        return trial
    if not params:
        setting = {k: row.get(k) for k in spec.spaces[dataset].describe()}
        params, dists = _distributions(spec.spaces[dataset], setting)
    user.update(ray_trial_id=row["trial_id"], seed=row.get("seed"), is_paper_setting=bool(row.get("is_paper_setting")),
                status=row.get("status"))
    if len(spec.metrics) == 1 and (row.get("group_size") or 1) == 1:
        steps.update({int(e): float(v) for e, v in epochs.get(row["trial_id"], ()) if _finite(v)})
    state, value_args = _outcome(row, spec, steps)
    trial = optuna.trial.create_trial(state=state, params=params, distributions=dists, user_attrs=user,
                                      system_attrs=system, intermediate_values=steps, **value_args)
    if row.get("started_at") is not None:
        trial.datetime_start = row["started_at"]
    if row.get("finished_at") is not None:
        trial.datetime_complete = row["finished_at"]
    return trial


class _Rebuild:
    """The trials of a rebuilt journal, added study by study in the order the ids say."""

    def __init__(self, studies: Mapping[str, Any], spec: JournalSpec, finished: Mapping[tuple[str, int], Any],
                 asked: Mapping[int, Asked], epochs: Mapping[str, Sequence[tuple[int, float]]]) -> None:
        self.studies, self.spec, self.finished, self.asked, self.epochs = studies, spec, finished, asked, epochs
        self.order = list(studies)
        self.dataset_of = {name: d for d, name in spec.names.items()}
        self.next_number = dict.fromkeys(self.order, 0)
        self.counts = {"finished": 0, "running": 0, "orphaned": 0}

    def add(self, name: str) -> None:
        """The next trial of study ``name``: its row, what the searcher asked, or an orphan."""
        number = self.next_number[name]
        row = self.finished.get((name, number))
        known = [a for a in self.asked.values() if a.study == name and a.number == number]
        a = known[0] if known else None
        if row is not None and a is not None and a.user_attrs.get("ray_trial_id") not in (None, row["trial_id"]):
            raise ValueError(f"trial {number} of {name} is row {row['trial_id']} in parts/ but "
                             f"{a.user_attrs['ray_trial_id']} in Tune's searcher state")
        self.studies[name].add_trial(_frozen(row, a, self.spec, self.dataset_of[name], self.epochs))
        self.counts["finished" if row is not None else "running" if a is not None else "orphaned"] += 1
        self.next_number[name] += 1

    def fill_gap(self, gid: int, pending: Sequence[Asked]) -> None:
        """Trial id ``gid``, which the snapshot never saw: the study whose number is missing."""
        later = {b.study: b.trial_id for b in reversed(pending)}
        missing = sorted((later[s], s) for s in later if self.next_number[s] < min(
            b.number for b in pending if b.study == s))
        spare = [s for s in self.order if s not in later]
        if missing:
            self.add(missing[0][1])
        elif spare:
            self.add(spare[0])
        else:
            raise ValueError(f"trial id {gid} fits no study of Tune's searcher state")

    def run(self) -> dict[str, int]:
        pending = sorted(self.asked.values(), key=lambda a: a.trial_id)
        gid = 0
        for i, a in enumerate(pending):
            while gid < a.trial_id:
                self.fill_gap(gid, pending[i:])
                gid += 1
            if self.next_number[a.study] != a.number:
                raise ValueError(f"Tune's searcher state has trial {a.number} of {a.study} at id {a.trial_id}, "
                                 f"where the rebuilt journal has trial {self.next_number[a.study]}")
            self.add(a.study)
            gid += 1
        for name in self.order:  # rows Tune's snapshot predates, and the numbers between
            last = max((n for s, n in self.finished if s == name), default=-1)
            while self.next_number[name] <= last:
                self.add(name)
        return self.counts


def rebuild(path: Path, spec: JournalSpec, rows: Iterable[Mapping[str, Any]],
            epochs: Mapping[str, Sequence[tuple[int, float]]] | None = None,
            state: SearcherState | None = None) -> dict[str, int]:
    """Write a new journal at ``path`` from the rows and the searcher state.

    Write a new journal at ``path`` (which must not exist) from the rows and the searcher
    state; returns counts of the trials added by kind. Raises ValueError when the two disagree.
    """
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    if path.exists():
        raise ValueError(f"{path} exists")
    asked = dict(state.trials) if state is not None else {}
    stray = sorted({a.study for a in asked.values()} - set(spec.names.values()))
    if stray:
        raise ValueError(f"Tune's searcher state holds trials of {', '.join(stray)}, which is not a study of this one")
    order = [n for _, n in sorted((state.studies if state else {}).items()) if n in spec.names.values()]
    order += [n for n in spec.names.values() if n not in order]
    directions = [optuna.study.StudyDirection.MAXIMIZE if d.startswith("max") else optuna.study.StudyDirection.MINIMIZE
                  for d in spec.directions]
    path.parent.mkdir(parents=True, exist_ok=True)
    with quiet_optuna():
        storage = JournalStorage(JournalFileBackend(str(path)))
        studies = {n: optuna.create_study(study_name=n, storage=storage, directions=directions) for n in order}
        return _Rebuild(studies, spec, _mislas_rows(rows, spec), asked, epochs or {}).run()


def check_and_repair(results: Store, local_cache: Path, spec: JournalSpec, rows: Sequence[Mapping[str, Any]],
                     epochs: Mapping[str, Sequence[tuple[int, float]]] | None = None) -> str | None:
    """Check the journal on a resume and rebuild it if damaged; return the line to print.

    On a resume: check the journal (:func:`journal_problem`) and, if it is damaged, set it
    aside and rebuild it (:func:`rebuild`). Returns the one line to print (None: it was sound);
    raises :class:`UsageError` with one line when it cannot be rebuilt.
    """
    path = fetch(results, local_cache)
    state = read_searcher_state(results)
    moved = ""
    if state is not None and state.journal_files and state.journal_files != {str(path)}:
        moved = (f"; Tune's searcher state wrote the journal at {', '.join(sorted(state.journal_files))} "
                 f"(was the study folder moved?): it now writes {path}")
    problem = journal_problem(path, spec, rows, state)
    if problem is None:
        if moved and state is not None:
            retarget_searcher_state(results, state, path)
        return moved[2:] or None
    where = results.uri(JOURNAL)
    suffix = f".damaged-{stamp()}"
    existed = path.exists() or results.exists(JOURNAL)
    _set_aside(results, local_cache, suffix)
    try:
        counts = rebuild(path, spec, rows, epochs, state)
    except Exception as exc:  # noqa: BLE001 - any reason: one line, the resume stops
        bad = path.with_name(path.name + ".unfinished-rebuild")
        if path.exists():
            os.replace(path, bad)
        raise UsageError(f"Optuna journal {where} {problem}, and it cannot be rebuilt from {results.uri('parts')} "
                         f"and Tune's searcher state ({type(exc).__name__}: {exc}); it was set aside as "
                         f"{JOURNAL}{suffix}: pick a new --name, or restore a sound {JOURNAL}") from None
    upload(results, local_cache)
    if state is not None:
        retarget_searcher_state(results, state, path)
    kept = f"set aside as {JOURNAL}{suffix}, " if existed else ""
    orphaned = f" + {counts['orphaned']} never-run trials as FAIL (orphaned)" if counts["orphaned"] else ""
    return (f"Optuna journal {where} {problem}: {kept}rebuilt from {counts['finished']} finished rows of "
            f"{results.uri('parts')} + {counts['running']} unfinished trials of Tune's searcher state{orphaned}"
            + moved)
