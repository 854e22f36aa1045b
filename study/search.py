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

from study.groups import member_id, member_result

logger = logging.getLogger(__name__)

OBJECTIVES = {"acc": ("val_acc", "max"), "ece": ("val_ece", "min")}


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
            self._ot_study.tell(ot_trial, state=state)
        except Exception as exc:  # e.g. already finished (resume)
            logger.warning(exc)
        self._completed_trials.add(trial_id)

    def ot_trial(self, trial_id: str) -> Any:
        return self._ot_trials.get(trial_id)

    @property
    def study(self) -> optuna.Study:
        return self._ot_study


def _nan(v: Any) -> bool:
    return isinstance(v, float) and math.isnan(v)


class StudySearcher(Searcher):
    """All trials of a study: a TPE search per data set and the fixed baselines.

    Per data set the search issues ``n_trials`` trials; trial k of a data set runs with seed
    ``seeds[k % len(seeds)]``. The Table 6 setting is enqueued once per seed
    (``points_to_evaluate``), so the first trials of each data set are the paper's setting on
    every seed. Baseline configs (``method`` != mislas) are issued as given. Streams are
    interleaved by their progress (the least advanced first), so data sets and baselines run
    side by side instead of one after the other.

    With ``group_size`` G > 1 a MiSLAS suggestion is a group: the data set's Optuna study is
    asked G times (fewer for the last group), each ask an Optuna trial of its own (user attrs
    ``ray_trial_id = <tune trial id>-g<k>`` and ``group_id``), all with one seed (group j runs
    ``seeds[j mod len(seeds)]``: members of a group must share it). The Table 6 setting is
    member 0 of the first ``len(seeds)`` groups, enqueued just before that ask (so it lands on
    every seed, not twice in one group); the searchers are then built without
    ``points_to_evaluate``. When the group ends, each member's own values go to its Optuna trial.
    """

    # class defaults: a searcher pickled by a study from before --group-size restores without them
    group_size = 1
    group_members: Mapping[str, int] = {}

    def __init__(self, *, searchers: Mapping[str, MislasOptunaSearch], n_trials: Mapping[str, int],
                 seeds: Sequence[int], table6: Mapping[str, Mapping[str, Any]], baselines: Sequence[dict[str, Any]],
                 metric: str | list[str], mode: str | list[str], study_names: Mapping[str, str],
                 group_size: int = 1) -> None:
        super().__init__(metric=metric, mode=mode)
        self.group_size = int(group_size)
        self.groups_issued = {d: 0 for d in searchers}
        self.group_members: dict[str, int] = {}  # Tune trial id of a group -> its member count
        self.searchers = dict(searchers)
        self.n_trials = dict(n_trials)
        self.seeds = tuple(seeds)
        self.table6 = {d: dict(v) for d, v in table6.items()}
        self.study_names = dict(study_names)
        self.baselines = [dict(b) for b in baselines]
        self.issued = {d: 0 for d in self.searchers}
        self.baselines_issued = 0
        self.owner: dict[str, str | None] = {}

    @property
    def total(self) -> int:
        """Tune trials: MiSLAS trials (or groups of them) per data set, plus the baselines."""
        g = self.group_size
        return sum(-(-n // g) for n in self.n_trials.values()) + len(self.baselines)

    def _next_stream(self) -> str | None:
        best, best_progress = None, math.inf
        for d in self.searchers:
            if self.issued[d] < self.n_trials[d]:
                progress = self.issued[d] / self.n_trials[d]
                if progress < best_progress:
                    best, best_progress = d, progress
        if self.baselines_issued < len(self.baselines):
            progress = self.baselines_issued / len(self.baselines)
            if progress < best_progress:
                best = "__baselines__"
        return best

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        stream = self._next_stream()
        if stream is None:
            return Searcher.FINISHED
        if stream == "__baselines__":
            config = dict(self.baselines[self.baselines_issued])
            self.baselines_issued += 1
            self.owner[trial_id] = None
            return config
        if self.group_size > 1:
            return self._suggest_group(stream, trial_id)
        searcher = self.searchers[stream]
        params = searcher.suggest(trial_id)
        if params is None or params == Searcher.FINISHED:
            return params
        k = self.issued[stream]
        self.issued[stream] += 1
        self.owner[trial_id] = stream
        seed = self.seeds[k % len(self.seeds)]
        t6 = self.table6[stream]
        is_paper = k < len(self.seeds) and all(_same(params.get(n), t6.get(n)) for n in t6)
        ot_trial = searcher.ot_trial(trial_id)
        for name, value in (("ray_trial_id", trial_id), ("seed", seed), ("is_paper_setting", is_paper)):
            ot_trial.set_user_attr(name, value)
        return {"dataset": stream, "method": "mislas", "mixup": True, "seed": seed, "is_paper_setting": is_paper,
                "optuna_study": self.study_names[stream], "optuna_trial_number": ot_trial.number,
                **{n: params.get(n) for n in ("eps_1", "eps_k", "form", "p", "dw_ratio", "shift_bn", "las_target")}}

    def _suggest_group(self, stream: str, trial_id: str) -> dict[str, Any]:
        searcher = self.searchers[stream]
        j = self.groups_issued[stream]
        n = min(self.group_size, self.n_trials[stream] - self.issued[stream])
        seed = self.seeds[j % len(self.seeds)]
        t6 = self.table6[stream]
        members = []
        for k in range(n):
            mid = member_id(trial_id, k)
            paper_slot = k == 0 and j < len(self.seeds)
            if paper_slot and mid not in searcher._ot_trials:
                searcher.study.enqueue_trial(dict(t6))
            params = searcher.suggest(mid)
            is_paper = paper_slot and all(_same(params.get(name), t6.get(name)) for name in t6)
            ot_trial = searcher.ot_trial(mid)
            for name, value in (("ray_trial_id", mid), ("group_id", trial_id), ("seed", seed),
                                ("is_paper_setting", is_paper)):
                ot_trial.set_user_attr(name, value)
            members.append({"is_paper_setting": is_paper, "optuna_trial_number": ot_trial.number,
                            **{name: params.get(name) for name in
                               ("eps_1", "eps_k", "form", "p", "dw_ratio", "shift_bn", "las_target")}})
        self.issued[stream] += n
        self.groups_issued[stream] += 1
        self.owner[trial_id] = stream
        self.group_members[trial_id] = n
        return {"dataset": stream, "method": "mislas", "mixup": True, "seed": seed,
                "is_paper_setting": any(m["is_paper_setting"] for m in members),
                "optuna_study": self.study_names[stream], "group_id": trial_id, "group_size": n, "members": members}

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        stream = self.owner.get(trial_id)
        if stream is not None and trial_id not in self.group_members:
            # (groups run under FIFO: their members' intermediate values would feed no pruner)
            self.searchers[stream].on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        stream = self.owner.get(trial_id)
        if stream is None:
            return
        if trial_id in self.group_members:
            for k in range(self.group_members[trial_id]):
                self.searchers[stream].on_trial_complete(member_id(trial_id, k), result=member_result(result, k),
                                                         error=error)
            return
        self.searchers[stream].on_trial_complete(trial_id, result=result, error=error)

    def save(self, checkpoint_path: str) -> None:
        import pickle

        with open(checkpoint_path, "wb") as fh:
            pickle.dump(self.__dict__, fh)

    def restore(self, checkpoint_path: str) -> None:
        import pickle

        with open(checkpoint_path, "rb") as fh:
            self.__dict__.update(pickle.load(fh))


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return a is not None and b is not None and abs(float(a) - float(b)) < 1e-12
    return a == b


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
        config = trial.config or {}
        if config.get("method") != "mislas":
            return None
        return self.asha.get(config.get("dataset"))

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
