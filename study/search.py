"""The study's searcher and scheduler: Optuna per data set, ASHA per data set, fixed baselines.

* :class:`MislasOptunaSearch` -- Ray Tune's ``OptunaSearch`` with one change: trials the
  scheduler stopped early are told to Optuna as PRUNED, not COMPLETE.
* :class:`StudySearcher` -- one ``MislasOptunaSearch`` (one Optuna study, TPE) per data set,
  plus the fixed baseline trials (ce, crt, lws, tau_norm per data set x seed), interleaved
  so that several data sets run in one Tune experiment.
* :class:`GroupedASHA` -- ASHA over Stage-2 epochs, one bracket set per data set, so a trial
  is only compared with trials of its own data set; baselines are never stopped.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.storages.journal import JournalFileBackend
from optuna.study import StudyDirection
from optuna.trial import TrialState
from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher

from mislas.spec import member_row_ids
from study.groups import member_result
from study.records import Stage2Setting, TrialMember, TrialSpec
from study.schema import CONFIRM_VARIANT
from study.space import SearchSpace
from study.tune_adapter import attach_trial, trial_storage_id, trial_to_json

logger = logging.getLogger(__name__)



def make_sampler(seed: int) -> optuna.samplers.TPESampler:
    """Make the study's TPE sampler, fit for parallel trials.

    TPE fit for parallel trials: the constant liar keeps concurrent suggestions apart;
    ``multivariate`` + ``group`` model the conditional ``p`` jointly with the rest.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True, multivariate=True, group=True)


@dataclass(frozen=True)
class Asked:
    """One Optuna ask: the live trial, its storage-wide id and the setting's parameters."""

    trial: optuna.trial.Trial
    storage_id: int
    params: dict[str, Any]
    is_paper: bool = False


class MislasOptunaSearch:
    """One data set's TPE search on Optuna's public ask-and-tell interface (one Optuna study).

    Why not Ray's ``OptunaSearch``: its trials, study and finished set are private members (a
    resume would have to pickle or patch them), and its ``on_trial_complete`` tells Optuna
    ``COMPLETE`` with the last reported values for every trial that has a result, including one
    the scheduler stopped after its first Stage-2 epoch; those partial values would enter TPE's
    model, the Pareto front (``study.best_trials``) and parameter importances as if final. Only
    the last report of a trial that ran all its epochs carries ``final = 1`` (study.trainable),
    so a trial completing without it was stopped early: it is told ``PRUNED`` (for a single
    objective Optuna keeps the last intermediate value as the trial's value; for two objectives
    none), which every Optuna consumer of finished trials leaves out. Otherwise as
    ``OptunaSearch``: ``NopPruner``, the define-by-run ``space`` called on the asked trial,
    intermediate values per ``training_iteration`` for a single objective. Each trial gets user
    attrs ``status`` (complete / stopped_early / failed / not_run); StudySearcher sets the rest.

    Its state (:meth:`get_state`) is JSON: the study by name, Tune trial id -> Optuna trial id,
    the finished set, and each asked trial as the journal holds it (for a journal rebuild).
    """

    def __init__(self, *, space: SearchSpace, metric: str | Sequence[str], mode: str | Sequence[str],
                 sampler_seed: int, study_name: str, storage: optuna.storages.BaseStorage) -> None:
        self.space = space
        self.metrics = (metric,) if isinstance(metric, str) else tuple(metric)
        self.modes = (mode,) if isinstance(mode, str) else tuple(mode)
        self.sampler_seed = int(sampler_seed)
        self.study_name = study_name
        self.storage = storage
        self.trial_ids: dict[str, int] = {}  # Tune trial id -> Optuna's storage-wide trial id
        self.numbers: dict[str, int] = {}  # Tune trial id -> Optuna trial number
        self.completed: set[str] = set()  # Tune trial ids told to Optuna
        self.attrs: dict[str, dict[str, Any]] = {}  # Tune trial id -> user attrs given (ask-ahead groups)
        self._handles: dict[str, optuna.trial.Trial] = {}
        self.study = self._open(storage, make_sampler(self.sampler_seed))

    def _open(self, storage: optuna.storages.BaseStorage, sampler: optuna.samplers.BaseSampler) -> optuna.Study:
        directions = [StudyDirection.MINIMIZE if m == "min" else StudyDirection.MAXIMIZE for m in self.modes]
        return optuna.create_study(storage=storage, sampler=sampler, pruner=optuna.pruners.NopPruner(),
                                   study_name=self.study_name, load_if_exists=True, directions=directions)

    def ot_trial(self, trial_id: str) -> optuna.trial.Trial | None:
        """The Optuna trial of Tune trial ``trial_id`` (None: not asked here)."""
        if trial_id not in self._handles and trial_id in self.trial_ids:
            self._handles[trial_id] = attach_trial(self.study, self.trial_ids[trial_id])
        return self._handles.get(trial_id)

    def suggest(self, trial_id: str) -> dict[str, Any]:
        """Ask Optuna (once per Tune trial) and sample the space on that trial."""
        trial = self.ot_trial(trial_id)
        if trial is None:
            asked = self.ask()
            self.adopt(trial_id, asked)
            return asked.params
        derived = self.space(trial)
        return {**trial.params, **(derived or {})}

    def ask(self) -> Asked:
        """Ask Optuna for a trial and sample the space on it, for no Tune trial yet.

        One Optuna ask with the space sampled on it, for no Tune trial yet (:meth:`adopt` gives
        it one). Runs in the ask-ahead thread too: Optuna's storages lock their own state, and the
        asks of one study are made in one thread at a time.
        """
        trial = self.study.ask()
        derived = self.space(trial)
        return Asked(trial, trial_storage_id(self.storage, self.study_name, trial.number),
                     {**trial.params, **(derived or {})})

    def adopt(self, trial_id: str, asked: Asked) -> None:
        """Make an asked trial Tune trial ``trial_id``'s (cheap: no storage access)."""
        self.trial_ids[trial_id] = asked.storage_id
        self.numbers[trial_id] = asked.trial.number
        self._handles[trial_id] = asked.trial

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        """A single objective's intermediate value per ``training_iteration`` (none for two)."""
        trial = self.ot_trial(trial_id)
        if len(self.metrics) != 1 or trial is None or trial_id in self.completed:
            return
        trial.report(result[self.metrics[0]], result["training_iteration"])

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        """Tell Optuna how the trial ended (COMPLETE, PRUNED or FAIL) and set its status attr."""
        trial = self.ot_trial(trial_id)
        if trial is None or trial_id in self.completed:
            logger.warning("Optuna search %s: trial %s is not open (already told, or not asked here)",
                           self.study_name, trial_id)
            return
        status = _status(result, error)
        try:
            trial.set_user_attr("status", status)
        except Exception as exc:  # e.g. the Optuna trial finished already (resume)
            logger.warning("could not mark Optuna trial of %s: %s", trial_id, exc)
        values = [result.get(m) for m in self.metrics] if result else None
        if status in ("stopped_early", "not_run"):
            self._tell(trial_id, trial, TrialState.PRUNED)
        elif status in ("failed", "diverged") or values is None or any(v is None or _nan(v) for v in values):
            self._tell(trial_id, trial, TrialState.FAIL)  # an error, a diverged setting, an undefined metric
        else:
            self._tell(trial_id, trial, TrialState.COMPLETE, values if len(values) > 1 else values[0])

    def _tell(self, trial_id: str, trial: optuna.trial.Trial, state: TrialState, values: Any = None) -> None:
        try:
            self.study.tell(trial, values, state=state)
        except Exception as exc:  # e.g. already finished (resume)
            logger.warning(exc)
        self.completed.add(trial_id)

    def get_state(self) -> dict[str, Any]:
        """This search as JSON (see the class docstring)."""
        by_number = {t.number: t for t in self.study.get_trials(deepcopy=False)}
        asked = {tid: trial_to_json(by_number[self.numbers[tid]], oid) for tid, oid in self.trial_ids.items()}
        for tid, attrs in self.attrs.items():  # (user attrs the ask-ahead thread may not have written yet)
            if tid in asked:
                asked[tid]["user_attrs"] = {**asked[tid]["user_attrs"], **attrs}
        return {"study_name": self.study_name, "study_id": self.storage.get_study_id_from_name(self.study_name),
                "sampler_seed": self.sampler_seed, "trials": asked,
                "completed": sorted(self.completed)}

    def set_state(self, state: Mapping[str, Any], storage: optuna.storages.BaseStorage) -> None:
        """Continue from :meth:`get_state` on ``storage`` (the journal, checked and rebuilt first).

        The sampler is seeded from the first seed and the number of trials asked so far: a
        resumed search does not draw the first trials' settings again.
        """
        if state["study_name"] != self.study_name:
            raise ValueError(f"searcher state of Optuna study {state['study_name']!r}, not {self.study_name!r}")
        self.trial_ids = {tid: int(t["trial_id"]) for tid, t in state["trials"].items()}
        self.numbers = {tid: int(t["number"]) for tid, t in state["trials"].items()}
        self.storage = storage
        self.completed = set(state["completed"])
        self._handles, self.attrs = {}, {}
        seed = int(np.random.SeedSequence([self.sampler_seed, len(self.trial_ids)]).generate_state(1)[0])
        self.study = self._open(storage, make_sampler(seed))


def _nan(v: Any) -> bool:
    return isinstance(v, float) and math.isnan(v)


def _status(result: Mapping[str, Any] | None, error: bool) -> str:
    """Return a finished member's status from its last result.

    A finished member's status: failed (an error), diverged (as its row), not_run (removed while
    pending), complete (``final = 1``: it ran all its epochs) or stopped_early (the scheduler stopped it).
    """
    if error or (result is not None and int(result.get("failed", 0) or 0) == 1):  # (a replayed failed row)
        return "failed"
    if result is not None and int(result.get("diverged", 0) or 0) == 1:
        return "diverged"
    if result is None:
        return "not_run"
    return "complete" if int(result.get("final", 0) or 0) == 1 else "stopped_early"


class StudySearcher(Searcher):
    """All trials of a study: a TPE search per data set and the fixed baselines.

    Per data set the search issues ``n_trials`` MiSLAS settings in Tune trials of up to
    ``group_size`` members (1 by default: one setting per trial). Each member is one ask of
    the data set's Optuna study, an Optuna trial of its own (user attrs ``ray_trial_id`` = the
    member's row id, ``group_id``, ``seed``, ``is_paper_setting``). Trial j of a data set runs
    with seed ``seeds[j % len(seeds)]`` (members of a trial share it). The Table 6 setting is
    member 0 of the first ``len(seeds)`` trials of each data set, enqueued just before that
    ask, so it runs first on every seed. Baselines (``method`` != mislas) are issued as given.
    Streams are interleaved by their progress (the least advanced first), so data sets and
    the fixed trials run side by side. When a trial ends, each member's own values go to its Optuna
    trial.
    """

    def __init__(self, *, searchers: Mapping[str, MislasOptunaSearch], n_trials: Mapping[str, int],
                 seeds: Sequence[int], table6: Mapping[str, Stage2Setting], spaces: Mapping[str, SearchSpace],
                 fixed: Sequence[TrialSpec],
                 metric: str | list[str], mode: str | list[str], study_names: Mapping[str, str],
                 group_size: int = 1, confirm_seeds: Sequence[int] = (), journal_file: str | None = None) -> None:
        super().__init__(metric=metric, mode=mode)  # type: ignore[arg-type]  # a list: multi-objective
        self.journal_file = journal_file  # the searchers' journal (None: their storage is no journal file)
        self.group_size = int(group_size)
        self.searchers = dict(searchers)
        self.n_trials = dict(n_trials)
        self.seeds = tuple(seeds)
        self.table6 = dict(table6)
        # what to enqueue for Table 6: the names Optuna suggests (fixed ones are not parameters)
        self.table6_params = {d: {n: v for n, v in t6.params().items() if n in spaces[d].searched_names(t6.params())}
                              for d, t6 in self.table6.items()}
        self.study_names = dict(study_names)
        self.fixed = list(fixed)
        self.issued = {d: 0 for d in self.searchers}  # settings asked per data set
        self.trials_issued = {d: 0 for d in self.searchers}  # Tune trials per data set
        self.fixed_issued = 0
        self.owner: dict[str, str | None] = {}  # Tune trial id -> data set (None: a fixed trial)
        self.members: dict[str, list[str]] = {}  # Tune trial id -> its members' Optuna ids
        # --confirm-best: per data set, the seeds still to run the setting best on validation on,
        # once every searched trial of the data set has ended (the scores it is chosen by).
        self.confirm_pending = {d: list(confirm_seeds) for d in self.searchers}
        self.member_settings: dict[str, Stage2Setting] = {}  # member row id -> its setting
        self.search_open: dict[str, set[str]] = {d: set() for d in self.searchers}  # Tune trials not yet ended
        self.search_scores: dict[str, dict[Stage2Setting, list[tuple[float, float]]]] = {d: {} for d in self.searchers}
        self.confirmed: dict[str, Stage2Setting | None] = {}  # data set -> the setting confirmed (None: none scored)
        # groups of G > 1: the next group's asks, made ahead in one thread (see _suggest_mislas)
        self._executor: ThreadPoolExecutor | None = None
        self._ahead: dict[str, tuple[int, Future[list[Asked]]]] = {}
        self._attr_jobs: dict[str, Future[None]] = {}

    @property
    def total(self) -> int:
        """Tune trials: MiSLAS trials (groups of up to G settings) per data set, plus the fixed trials."""
        g = self.group_size
        confirm = sum(len(v) for v in self.confirm_pending.values()) + sum(
            1 for _ in self._confirm_issued())
        return sum(-(-n // g) for n in self.n_trials.values()) + len(self.fixed) + confirm

    def _confirm_issued(self) -> list[str]:
        return [t for t, owner in self.owner.items() if owner is not None and owner.startswith(CONFIRM_PREFIX)]

    def _next_stream(self) -> str | None:
        best, best_progress = None, math.inf
        for d in self.searchers:
            if self.issued[d] < self.n_trials[d]:
                progress = self.issued[d] / self.n_trials[d]
                if progress < best_progress:
                    best, best_progress = d, progress
        if self.fixed_issued < len(self.fixed):
            progress = self.fixed_issued / len(self.fixed)
            if progress < best_progress:
                best = "__fixed__"
        return best

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        """Return the next trial's spec (confirm, fixed or MiSLAS group), None for not now, or FINISHED."""
        confirm = self._suggest_confirm(trial_id)
        if confirm is not None:
            return {"spec": confirm}
        stream = self._next_stream()
        if stream is None:
            if any(self.confirm_pending.values()):
                return None  # the search is still running; Tune asks again (Searcher.suggest's "not now")
            return Searcher.FINISHED  # type: ignore[return-value]  # Tune's own sentinel, a str
        if stream == "__fixed__":
            spec = self.fixed[self.fixed_issued]
            self.fixed_issued += 1
            self.owner[trial_id] = None
            return {"spec": spec}
        group = self._suggest_mislas(stream, trial_id)
        return None if group is None else {"spec": group}  # None: its group's asks are being made ahead

    def _suggest_mislas(self, stream: str, trial_id: str) -> TrialSpec | None:
        """The next group of ``stream``; None ("not now") while its asks are still being made.

        A group of G > 1 is asked ahead, in one background thread: its G asks (each a TPE fit
        and a few journal writes, ~0.1 s at 200 trials) would otherwise block Tune's loop
        for G times that inside this call. The first group is asked when Tune first asks for it
        (Tune asks again on None); each next group's asks start as soon as this one is issued,
        while it trains. Issuing a group then takes no Optuna work here: its trials' row ids
        are written to the journal by the same thread, after the asks, and kept in
        ``attrs`` until then (the searcher's state reads them from there). A study interrupted
        with a group asked ahead leaves those Optuna trials RUNNING and never run: they are
        marked FAIL (orphaned) when the study ends (study.journal.close_orphans).
        """
        searcher = self.searchers[stream]
        j = self.trials_issued[stream]
        n = min(self.group_size, self.n_trials[stream] - self.issued[stream])
        seed = self.seeds[j % len(self.seeds)]
        ids = member_row_ids(trial_id, n)
        if self.group_size == 1 or searcher.ot_trial(ids[0]) is not None:  # (a resumed searcher re-asks)
            asked = [self._ask_member(stream, j, k, mid) for k, mid in enumerate(ids)]
            for a, mid in zip(asked, ids):
                for name, value in self._member_attrs(mid, trial_id, seed, a.is_paper).items():
                    a.trial.set_user_attr(name, value)
        else:
            ready = self._asked_ahead(stream, j)
            if ready is None:
                return None
            asked = ready
            for a, mid in zip(asked, ids):
                searcher.adopt(mid, a)
                searcher.attrs[mid] = self._member_attrs(mid, trial_id, seed, a.is_paper)
            self._attr_jobs[trial_id] = self._pool().submit(_write_attrs, asked, [searcher.attrs[m] for m in ids])
        members = []
        for a, mid in zip(asked, ids):
            setting = Stage2Setting.from_params(a.params)
            members.append(TrialMember(setting, a.is_paper, a.trial.number))
            self.member_settings[mid] = setting
        self.issued[stream] += n
        self.trials_issued[stream] += 1
        self.owner[trial_id] = stream
        self.members[trial_id] = ids
        self.search_open[stream].add(trial_id)
        self._ask_ahead(stream)  # the next group's asks, while this one trains
        return TrialSpec(dataset=stream, method="mislas", mixup=True, seed=seed, members=tuple(members),
                         optuna_study=self.study_names[stream])

    @staticmethod
    def _member_attrs(mid: str, group_id: str, seed: int, is_paper: bool) -> dict[str, Any]:
        return {"ray_trial_id": mid, "group_id": group_id, "seed": seed, "is_paper_setting": is_paper}

    def _ask_member(self, stream: str, j: int, k: int, mid: str | None) -> Asked:
        """Ask the Optuna trial of member ``k`` of group ``j``.

        Member ``k`` of group ``j``: the Table 6 setting enqueued first in its paper slot
        (member 0 of the first ``len(seeds)`` groups); ``mid`` given: adopted by that row id.
        """
        searcher = self.searchers[stream]
        paper_slot = k == 0 and j < len(self.seeds)
        if paper_slot and (mid is None or searcher.ot_trial(mid) is None):  # (not again on a re-ask)
            searcher.study.enqueue_trial(dict(self.table6_params[stream]))
        if mid is not None:
            params = searcher.suggest(mid)
            ot_trial = searcher.ot_trial(mid)
            assert ot_trial is not None  # (suggest asked it)
            asked = Asked(ot_trial, searcher.trial_ids[mid], params)
        else:
            asked = searcher.ask()
        is_paper = paper_slot and Stage2Setting.from_params(asked.params).same(self.table6[stream])
        return replace(asked, is_paper=is_paper)

    def _ask_group(self, stream: str, j: int, n: int) -> list[Asked]:
        """Group ``j``'s ``n`` asks, with the user attrs known before it is issued (the ask-ahead thread)."""
        asked = [self._ask_member(stream, j, k, None) for k in range(n)]
        for a in asked:
            a.trial.set_user_attr("seed", self.seeds[j % len(self.seeds)])
            a.trial.set_user_attr("is_paper_setting", a.is_paper)
        return asked

    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="optuna-ask-ahead")
        return self._executor

    def _ask_ahead(self, stream: str) -> None:
        """Start the asks of ``stream``'s next group (groups of G > 1 only; none when all are issued)."""
        n = min(self.group_size, self.n_trials[stream] - self.issued[stream])
        if self.group_size > 1 and n > 0 and stream not in self._ahead:
            j = self.trials_issued[stream]
            self._ahead[stream] = (j, self._pool().submit(self._ask_group, stream, j, n))

    def _asked_ahead(self, stream: str, j: int) -> list[Asked] | None:
        """Return group ``j``'s asks made ahead, or None while they are pending.

        Group ``j``'s asks if they are made (an error in them is raised here), else None,
        starting them if they were not.
        """
        if stream in self._ahead and self._ahead[stream][0] != j:  # (asked for another group: not used)
            del self._ahead[stream]
        self._ask_ahead(stream)
        future = self._ahead[stream][1]
        if not future.done():
            return None
        del self._ahead[stream]
        return future.result()

    def close(self) -> None:
        """Wait for the ask-ahead thread's work and stop the thread.

        Wait for the ask-ahead thread's work (asks and row ids) and stop the thread; asks made
        ahead stay for their group (a later group starts a new thread).
        """
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    def __getstate__(self) -> dict[str, Any]:
        """Return the state to copy, without the ask-ahead thread and its futures (Tune may copy its searcher)."""
        state = dict(self.__dict__)
        state.update(_executor=None, _ahead={}, _attr_jobs={})
        return state

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        """Forward an ungrouped MiSLAS trial's result to its data set's search."""
        stream = self.owner.get(trial_id)
        ids = self.members.get(trial_id, [])
        if stream is not None and len(ids) == 1:
            # (a group's members' intermediate values would feed no pruner: groups run under FIFO)
            self.searchers[stream].on_trial_result(ids[0], member_result(result, 0) or {})

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        """Tell each member's search how it ended and keep its validation score for --confirm-best."""
        stream = self.owner.get(trial_id)
        if stream is None or stream.startswith(CONFIRM_PREFIX):
            return
        job = self._attr_jobs.pop(trial_id, None)
        if job is not None:
            job.result()  # its row ids are in the journal before it is told (long done: the trial ran)
        for k, mid in enumerate(self.members.get(trial_id, [])):
            values = member_result(result, k)
            self.searchers[stream].on_trial_complete(mid, result=values, error=error)
            score = None if error else confirm_score(values)
            if score is not None and mid in self.member_settings:
                self.search_scores[stream].setdefault(self.member_settings[mid], []).append(score)
        self.search_open[stream].discard(trial_id)

    def _suggest_confirm(self, trial_id: str) -> TrialSpec | None:
        """Return the next ``--confirm-best`` trial, or None.

        The next --confirm-best trial: the best setting on validation (highest mean val acc,
        then lowest mean val ECE: the report's rule, study.reporting.comparison) on one more seed,
        once every searched trial of its data set has ended.
        """
        for d, seeds in self.confirm_pending.items():
            if not seeds or self.issued[d] < self.n_trials[d] or self.search_open[d]:
                continue
            if d not in self.confirmed:
                self.confirmed[d] = best_setting(self.search_scores[d])
                if self.confirmed[d] is None:
                    logger.warning("%s: no searched setting has validation values; --confirm-best runs nothing", d)
            best = self.confirmed[d]
            if best is None:
                seeds.clear()
                continue
            seed = seeds.pop(0)
            self.owner[trial_id] = CONFIRM_PREFIX + d
            return TrialSpec(dataset=d, method="mislas", mixup=True, seed=seed,
                             members=(TrialMember(best, variant=CONFIRM_VARIANT),))
        return None

    # --- state: JSON, never a pickle (Tune calls save/restore with a path under tune/) ----------

    CKPT_FILE_TMPL = "searcher-state-{}.json"  # Tune's name for the file (Searcher.save_to_dir)

    def get_state(self) -> dict[str, Any]:
        """Return the searcher's changing state as JSON.

        What changes as trials are asked and end, as JSON; what the settings fix (spaces,
        seeds, the fixed trials, ...) is built again from them, as Tune restores the searcher.
        """
        def setting(s: Stage2Setting | None) -> dict[str, Any] | None:
            return None if s is None else s.columns()

        return {
            "format": STATE_FORMAT, "journal_file": self.journal_file,
            "searchers": {d: s.get_state() for d, s in self.searchers.items()},
            "issued": self.issued, "trials_issued": self.trials_issued, "fixed_issued": self.fixed_issued,
            "owner": self.owner, "members": self.members, "confirm_pending": self.confirm_pending,
            "member_settings": {m: setting(s) for m, s in self.member_settings.items()},
            "search_open": {d: sorted(v) for d, v in self.search_open.items()},
            "search_scores": {d: [[setting(s), [list(v) for v in vs]] for s, vs in scores.items()]
                              for d, scores in self.search_scores.items()},
            "confirmed": {d: setting(s) for d, s in self.confirmed.items()},
        }

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Continue from a state saved by :meth:`get_state`.

        Continue from :meth:`get_state`; the Optuna studies are opened on ``journal_file``
        (which study.journal checks, rebuilds and retargets before Tune restores this).
        """
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"not a StudySearcher state of format {STATE_FORMAT} (format {state.get('format')!r})")
        if set(state["searchers"]) != set(self.searchers):
            raise ValueError(f"searcher state of data sets {sorted(state['searchers'])}, not {sorted(self.searchers)}")
        self.close()
        self._ahead.clear()  # (asks made ahead on the old studies are not used)
        self.journal_file = state["journal_file"]
        shared = None if self.journal_file is None else optuna.storages.JournalStorage(
            JournalFileBackend(self.journal_file))
        for d, sub in self.searchers.items():
            sub.set_state(state["searchers"][d], shared or sub.storage)
        setting = Stage2Setting.from_params
        self.issued, self.trials_issued = dict(state["issued"]), dict(state["trials_issued"])
        self.fixed_issued = int(state["fixed_issued"])
        self.owner, self.members = dict(state["owner"]), {t: list(m) for t, m in state["members"].items()}
        self.confirm_pending = {d: list(v) for d, v in state["confirm_pending"].items()}
        self.member_settings = {m: setting(s) for m, s in state["member_settings"].items()}
        self.search_open = {d: set(v) for d, v in state["search_open"].items()}
        self.search_scores = {d: {setting(s): [(float(a), float(e)) for a, e in vs] for s, vs in pairs}
                              for d, pairs in state["search_scores"].items()}
        self.confirmed = {d: None if s is None else setting(s) for d, s in state["confirmed"].items()}

    def save(self, checkpoint_path: str) -> None:
        """Write the searcher's state (:meth:`get_state`) as JSON to ``checkpoint_path``."""
        Path(checkpoint_path).write_text(json.dumps(self.get_state()))

    def restore(self, checkpoint_path: str) -> None:
        """Continue from the JSON state in ``checkpoint_path``."""
        self.set_state(read_state(Path(checkpoint_path)))


STATE_FORMAT = 1


def _write_attrs(asked: Sequence[Asked], attrs: Sequence[Mapping[str, Any]]) -> None:
    """The user attrs of an issued group's Optuna trials (the ask-ahead thread)."""
    for a, values in zip(asked, attrs):
        for name in ("ray_trial_id", "group_id"):  # (seed, is_paper_setting: written at the ask)
            a.trial.set_user_attr(name, values[name])


def read_state(path: Path) -> dict[str, Any]:
    """A StudySearcher state file (JSON), or ValueError naming the file and what is wrong."""
    try:
        state = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"{path}: not a searcher state (JSON) file: {exc}") from None
    if not isinstance(state, dict):
        raise ValueError(f"{path}: not a searcher state (JSON object) file")
    return state


CONFIRM_PREFIX = "__confirm__:"


def confirm_score(values: Mapping[str, Any] | None) -> tuple[float, float] | None:
    """(val acc, val ECE) of a member that ran all its epochs, or None (stopped early, failed, NaN)."""
    if not values or int(values.get("final", 0) or 0) != 1 or int(values.get("diverged", 0) or 0) == 1:
        return None
    acc, ece = values.get("val_acc"), values.get("val_ece")
    if not isinstance(acc, (int, float)) or not isinstance(ece, (int, float)) or _nan(acc) or _nan(ece):
        return None
    return float(acc), float(ece)


def best_setting(scores: Mapping[Stage2Setting, Sequence[tuple[float, float]]]) -> Stage2Setting | None:
    """The setting of highest mean val acc, ties to the lowest mean val ECE, then the first asked."""
    ranked = sorted(scores.items(), key=lambda kv: (-sum(a for a, _ in kv[1]) / len(kv[1]),
                                                    sum(e for _, e in kv[1]) / len(kv[1])))
    return ranked[0][0] if ranked else None


class GroupedASHA(FIFOScheduler):
    """ASHA (asynchronous successive halving) per data set over Stage-2 epochs.

    ``time_attr`` is the Stage-2 ``epoch`` the trial reports rather than Tune's
    ``training_iteration``: the two agree for an uninterrupted trial, but a trial retried from
    its checkpoint restarts counting reports, while its epoch number stays right. Trials of
    other data sets are in other brackets (their accuracies are not comparable); baseline
    trials are never stopped.
    """

    def __init__(self, *, metric: str, mode: str, max_t: Mapping[str, int], grace_period: int = 1,
                 reduction_factor: float = 3, time_attr: str = "epoch") -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        FIFOScheduler.set_search_properties(self, metric, mode)  # Tune's public setter of metric/mode
        self.asha = {
            d: AsyncHyperBandScheduler(time_attr=time_attr, metric=metric, mode=mode, max_t=max(1, t),
                                       grace_period=max(1, min(grace_period, t)), reduction_factor=reduction_factor)
            for d, t in max_t.items()
        }
        # the trials each data set's ASHA was given and has not let go (so as to forward only
        # those: Tune may report a trial it restored before adding it), and its stops
        self.added: dict[str, set[str]] = {d: set() for d in self.asha}
        self.stopped = dict.fromkeys(self.asha, 0)

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        """Keep the metric and mode given at construction; return True so that Tune accepts them."""
        return True

    def _sub(self, trial: Any) -> str | None:
        """The data set whose ASHA judges ``trial`` (None: baselines and ablation rows, never stopped)."""
        spec: TrialSpec | None = (trial.config or {}).get("spec")
        if spec is None or spec.optuna_study is None or spec.dataset not in self.asha:
            return None
        return spec.dataset

    def _known(self, trial: Any) -> str | None:
        d = self._sub(trial)
        return d if d is not None and trial.trial_id in self.added[d] else None

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        """Hand a searched trial to its data set's ASHA."""
        d = self._sub(trial)
        if d is not None:
            self.asha[d].on_trial_add(tune_controller, trial)
            self.added[d].add(trial.trial_id)

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        """Let the trial's data set's ASHA decide whether it goes on; other trials continue."""
        d = self._known(trial)
        if d is None:
            return TrialScheduler.CONTINUE
        action: str = self.asha[d].on_trial_result(tune_controller, trial, result)
        self.stopped[d] += action == TrialScheduler.STOP
        return action

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> None:
        """Tell the trial's data set's ASHA that it completed."""
        d = self._known(trial)
        if d is not None:
            self.asha[d].on_trial_complete(tune_controller, trial, result)
            self.added[d].discard(trial.trial_id)

    def on_trial_remove(self, tune_controller: Any, trial: Any) -> None:
        """Tell the trial's data set's ASHA that it was removed."""
        d = self._known(trial)
        if d is not None:
            self.asha[d].on_trial_remove(tune_controller, trial)
            self.added[d].discard(trial.trial_id)

    def debug_string(self) -> str:
        """Say how many trials each data set's ASHA stopped (Tune's status line)."""
        return "Using AsyncHyperBand per data set: " + ", ".join(f"{d} stopped {n}" for d, n in self.stopped.items())
