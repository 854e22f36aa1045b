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

import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from study.groups import member_result
from study.records import Stage2Setting, TrialMember, TrialSpec
from study.schema import CONFIRM_VARIANT
from study.space import SearchSpace

logger = logging.getLogger(__name__)



def make_sampler(seed: int) -> optuna.samplers.TPESampler:
    """TPE fit for parallel trials: the constant liar keeps concurrent suggestions apart;
    ``multivariate`` + ``group`` model the conditional ``p`` jointly with the rest."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True, multivariate=True, group=True)


class MislasOptunaSearch(OptunaSearch):
    """``OptunaSearch`` that does not record ASHA-stopped trials as complete.

    Ray's ``OptunaSearch.on_trial_complete`` tells Optuna ``COMPLETE`` with the last reported
    values for every trial that has a result, including one the scheduler stopped after its
    first Stage-2 epoch; its partial values would then enter TPE's model, the Pareto front
    (``study.best_trials``) and parameter importances as if they were final. Only the last
    report of a trial that ran all its epochs carries ``final = 1`` (see study.trainable), so
    a trial completing without it was stopped early: we tell Optuna ``PRUNED`` (for a single
    objective Optuna keeps the last intermediate value as the trial's value; for two
    objectives none), which every Optuna consumer of finished trials already leaves out.
    Each trial also gets user attrs: ``ray_trial_id``, ``seed``, ``is_paper_setting``
    (set when suggested) and ``status`` (complete / stopped_early / failed).
    """

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is None or trial_id in self._completed_trials:
            return super().on_trial_complete(trial_id, result=result, error=error)
        if error or (result is not None and int(result.get("diverged", 0) or 0) == 1):
            status = "failed"
        elif result is None:
            status = "not_run"  # removed while pending
        elif int(result.get("final", 0) or 0) == 1:
            status = "complete"
        else:
            status = "stopped_early"
        try:
            ot_trial.set_user_attr("status", status)
        except Exception as exc:  # e.g. the Optuna trial finished already (resume)
            logger.warning("could not mark Optuna trial of %s: %s", trial_id, exc)
        if status == "stopped_early":
            self._close(trial_id, ot_trial, TrialState.PRUNED)
            return
        metrics = self.metric if isinstance(self.metric, list) else [self.metric]
        values = [result.get(m) for m in metrics] if result else None
        if status == "failed" or (values is not None and any(v is None or _nan(v) for v in values)):
            # an error, a diverged setting or an undefined metric: FAIL, never a value
            self._close(trial_id, ot_trial, TrialState.FAIL)
            return
        super().on_trial_complete(trial_id, result=result, error=error)

    def _close(self, trial_id: str, ot_trial: Any, state: TrialState) -> None:
        """Tell Optuna a valueless end (PRUNED or FAIL) and mark the Tune trial as handled."""
        try:
            self.study.tell(ot_trial, state=state)
        except Exception as exc:  # e.g. already finished (resume)
            logger.warning(exc)
        self._completed_trials.add(trial_id)

    def ot_trial(self, trial_id: str) -> Any:
        return self._ot_trials.get(trial_id)

    @property
    def study(self) -> optuna.Study:
        # Ray keeps the Optuna study in a private member and has no public accessor.
        study = self._ot_study
        assert study is not None, "the searcher has no Optuna study yet"
        return study


def _nan(v: Any) -> bool:
    return isinstance(v, float) and math.isnan(v)


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
                 group_size: int = 1, confirm_seeds: Sequence[int] = ()) -> None:
        super().__init__(metric=metric, mode=mode)  # type: ignore[arg-type]  # a list: multi-objective
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
        return {"spec": self._suggest_mislas(stream, trial_id)}

    def _suggest_mislas(self, stream: str, trial_id: str) -> TrialSpec:
        searcher = self.searchers[stream]
        j = self.trials_issued[stream]
        n = min(self.group_size, self.n_trials[stream] - self.issued[stream])
        seed = self.seeds[j % len(self.seeds)]
        t6 = self.table6[stream]
        ids = [trial_id] if n == 1 else [f"{trial_id}-g{k}" for k in range(n)]
        members = []
        for k, mid in enumerate(ids):
            paper_slot = k == 0 and j < len(self.seeds)
            if paper_slot and searcher.ot_trial(mid) is None:  # (not again when a resumed searcher re-asks)
                searcher.study.enqueue_trial(dict(self.table6_params[stream]))
            setting = Stage2Setting.from_params(searcher.suggest(mid) or {})
            is_paper = paper_slot and setting.same(t6)
            ot_trial = searcher.ot_trial(mid)
            for name, value in (("ray_trial_id", mid), ("group_id", trial_id), ("seed", seed),
                                ("is_paper_setting", is_paper)):
                ot_trial.set_user_attr(name, value)
            members.append(TrialMember(setting, is_paper, ot_trial.number))
            self.member_settings[mid] = setting
        self.issued[stream] += n
        self.trials_issued[stream] += 1
        self.owner[trial_id] = stream
        self.members[trial_id] = ids
        self.search_open[stream].add(trial_id)
        return TrialSpec(dataset=stream, method="mislas", mixup=True, seed=seed, members=tuple(members),
                         optuna_study=self.study_names[stream])

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        stream = self.owner.get(trial_id)
        ids = self.members.get(trial_id, [])
        if stream is not None and len(ids) == 1:
            # (a group's members' intermediate values would feed no pruner: groups run under FIFO)
            self.searchers[stream].on_trial_result(ids[0], member_result(result, 0) or {})

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        stream = self.owner.get(trial_id)
        if stream is None or stream.startswith(CONFIRM_PREFIX):
            return
        for k, mid in enumerate(self.members.get(trial_id, [])):
            values = member_result(result, k)
            self.searchers[stream].on_trial_complete(mid, result=values, error=error)
            score = None if error else confirm_score(values)
            if score is not None and mid in self.member_settings:
                self.search_scores[stream].setdefault(self.member_settings[mid], []).append(score)
        self.search_open[stream].discard(trial_id)

    def _suggest_confirm(self, trial_id: str) -> TrialSpec | None:
        """The next --confirm-best trial: the best setting on validation (highest mean val acc,
        then lowest mean val ECE: the report's rule, study.reporting.comparison) on one more seed,
        once every searched trial of its data set has ended."""
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

    def save(self, checkpoint_path: str) -> None:
        import pickle

        with open(checkpoint_path, "wb") as fh:
            pickle.dump(self.__dict__, fh)

    def restore(self, checkpoint_path: str) -> None:
        import pickle

        with open(checkpoint_path, "rb") as fh:
            self.__dict__.update(pickle.load(fh))


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
        super().__init__()
        self._metric = metric
        self._mode = mode
        self.asha = {
            d: AsyncHyperBandScheduler(time_attr=time_attr, metric=metric, mode=mode, max_t=max(1, t),
                                       grace_period=max(1, min(grace_period, t)), reduction_factor=reduction_factor)
            for d, t in max_t.items()
        }

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        return True

    def _sub(self, trial: Any) -> AsyncHyperBandScheduler | None:
        spec: TrialSpec | None = (trial.config or {}).get("spec")
        if spec is None or spec.optuna_study is None:  # baselines and ablation rows are never stopped
            return None
        return self.asha.get(spec.dataset)

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        sub = self._sub(trial)
        if sub is not None:
            sub.on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        sub = self._sub(trial)
        if sub is None or trial.trial_id not in sub._trial_info:
            return TrialScheduler.CONTINUE
        return sub.on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> None:
        sub = self._sub(trial)
        if sub is not None and trial.trial_id in sub._trial_info:
            sub.on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller: Any, trial: Any) -> None:
        sub = self._sub(trial)
        if sub is not None and trial.trial_id in sub._trial_info:
            sub.on_trial_remove(tune_controller, trial)

    def debug_string(self) -> str:
        return "Using AsyncHyperBand per data set: " + ", ".join(
            f"{d} stopped {s._num_stopped}" for d, s in self.asha.items())
