"""The searcher without a cluster: Table 6 first per seed, seeds, baselines, PRUNED for ASHA stops."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState
from ray.tune.search import Searcher

from mislas.config import paper_config
from study.groups import group_metrics
from study.records import Stage2Setting, TrialMember, TrialSpec
from study.search import MislasOptunaSearch, StudySearcher
from study.space import default_space_file, load_space

TABLE6_C10 = (0.3, 0.0, "concave", 0.5, False, "reference")  # Table 6, CIFAR-10-LT β=100, reference LAS target


def make(tmp_path: Path, *, n_trials: int = 5, seeds: tuple[int, ...] = (0, 1), baselines: int = 2,
         metric: tuple[str, ...] | str = ("val_acc", "val_ece"), mode: tuple[str, ...] | str = ("max", "min"),
         group_size: int = 1, datasets: tuple[str, ...] = ("cifar10_lt",)) -> StudySearcher:
    metric = list(metric) if isinstance(metric, tuple) else metric
    mode = list(mode) if isinstance(mode, tuple) else mode
    journal = str(tmp_path / "optuna.log")
    storage = JournalStorage(JournalFileBackend(journal))
    searchers, table6, spaces = {}, {}, {}
    for i, d in enumerate(datasets):
        table6[d] = Stage2Setting.from_config(paper_config(d, 100.0 if d == "cifar10_lt" else None))
        spaces[d] = load_space(default_space_file(d), table6=table6[d])
        searchers[d] = MislasOptunaSearch(space=spaces[d], metric=metric, mode=mode, sampler_seed=i,
                                          study_name=f"s:{d}", storage=storage)
    base = [TrialSpec(dataset=datasets[0], method="ce", mixup=False, seed=s) for s in range(baselines)]
    return StudySearcher(searchers=searchers, n_trials={d: n_trials for d in datasets}, seeds=seeds, table6=table6,
                         spaces=spaces, fixed=base, metric=metric, mode=mode,
                         study_names={d: f"s:{d}" for d in datasets}, group_size=group_size, journal_file=journal)


def report(epoch: int, final: bool, **val: float) -> dict:
    """What a trial of one member reports (study.trainable)."""
    return group_metrics(epoch=epoch, final=final, members=[val])


def given(searcher: StudySearcher, trial_id: str) -> Any:
    """``suggest`` called as Tune's loop calls it: again while it says "not now" (None: a group's
    asks are still being made ahead), up to a minute."""
    for _ in range(6000):
        cfg = searcher.suggest(trial_id)
        if cfg is not None:
            return cfg
        time.sleep(0.01)
    raise AssertionError(f"no trial for {trial_id} after a minute")


def specs(searcher: StudySearcher, n: int) -> list[TrialSpec]:
    out = []
    for i in range(n):
        cfg = given(searcher, f"t{i}")
        if cfg == Searcher.FINISHED:
            break
        out.append(cfg["spec"])
    return out


def test_table6_first_on_every_seed_then_search_and_interleaved_baselines(tmp_path: Path) -> None:
    searcher = make(tmp_path)
    configs = specs(searcher, 10)
    assert len(configs) == 7 == searcher.total
    mislas = [c for c in configs if c.method == "mislas"]
    assert [c.seed for c in mislas] == [0, 1, 0, 1, 0]
    assert [c.is_paper_setting for c in mislas] == [True, True, False, False, False]
    for c in mislas[:2]:
        st = c.members[0].setting
        assert (st.eps_1, st.eps_k, st.form, st.dw_ratio, st.shift_bn, st.las_target) == TABLE6_C10
    assert [c.method for c in configs].index("ce") < 4  # baselines are not left to the end
    assert searcher.suggest("t99") == Searcher.FINISHED


def test_stopped_early_is_pruned_failed_is_failed_complete_is_complete(tmp_path: Path) -> None:
    searcher = make(tmp_path, n_trials=3, seeds=(0,), baselines=0)
    for i in range(3):
        searcher.suggest(f"t{i}")
    searcher.on_trial_complete("t0", report(10, True, val_acc=50.0, val_ece=3.0))
    searcher.on_trial_complete("t1", report(1, False, val_acc=30.0, val_ece=9.0))  # ASHA stop
    searcher.on_trial_complete("t2", None, error=True)
    study = optuna.load_study(study_name="s:cifar10_lt",
                              storage=JournalStorage(JournalFileBackend(str(tmp_path / "optuna.log"))))
    states = {t.user_attrs["ray_trial_id"]: (t.state, t.user_attrs["status"]) for t in study.trials}
    assert states == {"t0": (TrialState.COMPLETE, "complete"), "t1": (TrialState.PRUNED, "stopped_early"),
                      "t2": (TrialState.FAIL, "failed")}
    assert [t.user_attrs["ray_trial_id"] for t in study.best_trials] == ["t0"]


def test_single_objective_prunes_with_last_intermediate_value(tmp_path: Path) -> None:
    searcher = make(tmp_path, n_trials=2, seeds=(0,), baselines=0, metric="val_acc", mode="max")
    searcher.suggest("a")
    searcher.on_trial_result("a", report(1, False, val_acc=20.0) | {"training_iteration": 1})
    searcher.on_trial_complete("a", report(1, False, val_acc=20.0))
    trial = searcher.searchers["cifar10_lt"].study.trials[0]
    assert trial.state == TrialState.PRUNED and trial.value == 20.0


def test_searcher_state_round_trips_as_json(tmp_path: Path) -> None:
    """Saved mid-study (two trials running, one ended), restored into a searcher built afresh
    elsewhere: it continues the same Optuna trials in the saved journal, and the file is JSON."""
    searcher = make(tmp_path)
    first = [searcher.suggest(f"t{i}") for i in range(4)]
    assert [c["spec"].method for c in first] == ["mislas", "ce", "mislas", "mislas"]
    searcher.on_trial_complete("t0", report(10, True, val_acc=50.0, val_ece=3.0))
    path = tmp_path / "state.json"
    searcher.save(str(path))
    state = json.loads(path.read_text())  # data, not a pickle
    assert state["journal_file"] == str(tmp_path / "optuna.log") and state["fixed_issued"] == 1
    asked = state["searchers"]["cifar10_lt"]["trials"]
    # (t1 is the first baseline)
    assert sorted(asked) == ["t0", "t2", "t3"] and [asked[t]["number"] for t in ("t0", "t2", "t3")] == [0, 1, 2]
    assert asked["t0"]["user_attrs"]["ray_trial_id"] == "t0" and state["searchers"]["cifar10_lt"]["completed"] == ["t0"]
    (tmp_path / "other").mkdir()
    again = make(tmp_path / "other")
    again.restore(str(path))
    assert again.get_state() == searcher.get_state()
    assert (again.issued, again.fixed_issued, again.owner) == (searcher.issued, 1, searcher.owner)
    assert first[0]["spec"].is_paper_setting
    # the restored searcher tells the trials it did not ask itself, in the saved journal
    again.on_trial_complete("t2", report(10, True, val_acc=40.0, val_ece=4.0))
    again.on_trial_complete("t3", report(1, False, val_acc=20.0, val_ece=9.0))
    again.on_trial_complete("t0", report(10, True, val_acc=1.0, val_ece=1.0))  # told already: ignored
    study = optuna.load_study(study_name="s:cifar10_lt",
                              storage=JournalStorage(JournalFileBackend(str(tmp_path / "optuna.log"))))
    assert [(t.state, t.values) for t in study.trials] == [
        (TrialState.COMPLETE, [50.0, 3.0]), (TrialState.COMPLETE, [40.0, 4.0]), (TrialState.PRUNED, None)]
    # it goes on asking in the saved journal: the next trial is number 3; the fresh one holds none
    nxt = next(c for c in (again.suggest(f"t{i}")["spec"] for i in range(4, 8)) if c.method == "mislas")
    assert nxt.members[0].optuna_trial_number == 3
    other = JournalStorage(JournalFileBackend(str(tmp_path / "other" / "optuna.log")))
    assert not optuna.load_study(study_name="s:cifar10_lt", storage=other).trials


def test_searcher_state_refuses_what_is_not_its_own(tmp_path: Path) -> None:
    import pytest

    from study.search import read_state

    searcher = make(tmp_path)
    bad = tmp_path / "bad.json"
    bad.write_bytes(b"\x80\x04garbage")  # e.g. a pickle
    with pytest.raises(ValueError, match="bad.json: not a searcher state"):
        read_state(bad)
    bad.write_text(json.dumps({"format": 0}))
    with pytest.raises(ValueError, match="format"):
        searcher.restore(str(bad))


class FakeTrial:
    """What the schedulers read of a Tune trial: its id and config."""

    def __init__(self, trial_id: str, dataset: str, method: str = "mislas") -> None:
        members = (TrialMember(Stage2Setting(0.3, 0.0, "concave", None, 0.5, True, "reference")),)
        spec = TrialSpec(dataset=dataset, method=method, mixup=True, seed=0,
                         members=members if method == "mislas" else (TrialMember(),),
                         optuna_study=f"s:{dataset}" if method == "mislas" else None)
        self.trial_id, self.config = trial_id, {"spec": spec}


def test_grouped_asha_compares_trials_within_a_data_set_only() -> None:
    from ray.tune.schedulers import TrialScheduler

    from study.search import GroupedASHA

    asha = GroupedASHA(metric="val_acc", mode="max", max_t={"a": 4, "b": 4}, grace_period=1, reduction_factor=2)
    good_a, bad_a, bad_b = FakeTrial("a1", "a"), FakeTrial("a2", "a"), FakeTrial("b1", "b")
    base = FakeTrial("c", "a", "ce")
    for t in (good_a, bad_a, bad_b, base):
        asha.on_trial_add(None, t)
    assert asha.on_trial_result(None, good_a, {"epoch": 1, "val_acc": 90.0}) == TrialScheduler.CONTINUE
    assert asha.on_trial_result(None, bad_a, {"epoch": 1, "val_acc": 10.0}) == TrialScheduler.STOP
    # data set b has its own rungs: a low accuracy there is not judged against data set a
    assert asha.on_trial_result(None, bad_b, {"epoch": 1, "val_acc": 10.0}) == TrialScheduler.CONTINUE
    assert asha.on_trial_result(None, base, {"epoch": 0, "val_acc": 1.0}) == TrialScheduler.CONTINUE
    # the last epoch ends the trial (max_t), as its final report
    assert asha.on_trial_result(None, good_a, {"epoch": 4, "val_acc": 91.0}) == TrialScheduler.STOP
    assert asha.debug_string().endswith("a stopped 2, b stopped 0")
    assert asha.metric == "val_acc"  # (set through Tune's public setter)
    # a trial it was never given (e.g. restored by Tune before being added) is not judged
    assert asha.on_trial_result(None, FakeTrial("a9", "a"), {"epoch": 1, "val_acc": 0.0}) == TrialScheduler.CONTINUE
    asha.on_trial_complete(None, bad_a, {"epoch": 1, "val_acc": 10.0})
    assert asha.on_trial_result(None, bad_a, {"epoch": 2, "val_acc": 10.0}) == TrialScheduler.CONTINUE


def test_two_data_sets_are_interleaved(tmp_path: Path) -> None:
    searcher = make(tmp_path, n_trials=3, seeds=(0,), baselines=0, datasets=("cifar10_lt", "places_lt"))
    order = [searcher.suggest(f"t{i}")["spec"].dataset for i in range(6)]
    assert order == ["cifar10_lt", "places_lt"] * 3
    assert searcher.suggest("t6") == Searcher.FINISHED


def test_groups_ask_optuna_per_member_and_tell_each_its_own_values(tmp_path: Path) -> None:
    searcher = make(tmp_path, n_trials=5, seeds=(0, 1), baselines=0, group_size=2)
    assert searcher.total == 3  # ceil(5 / 2) groups
    groups = [given(searcher, f"t{i}")["spec"] for i in range(3)]
    assert searcher.suggest("t9") == Searcher.FINISHED
    assert [len(g.members) for g in groups] == [2, 2, 1] and [g.seed for g in groups] == [0, 1, 0]
    # the Table 6 setting: member 0 of the first group on each seed, never twice in one group
    assert [[m.is_paper_setting for m in g.members] for g in groups] == [[True, False], [True, False], [False]]
    assert [g.member_ids(f"t{i}") for i, g in enumerate(groups)][2] == ["t2"]  # a last group of one is a trial
    numbers = [m.optuna_trial_number for g in groups for m in g.members]
    assert numbers == list(range(5))
    result = group_metrics(epoch=10, final=True, members=[{"val_acc": 50.0, "val_ece": 3.0},
                                                         {"val_acc": 40.0, "val_ece": 5.0}])
    searcher.on_trial_complete("t0", result)
    searcher.on_trial_complete("t1", None, error=True)
    study = optuna.load_study(study_name="s:cifar10_lt",
                              storage=JournalStorage(JournalFileBackend(str(tmp_path / "optuna.log"))))
    by_id = {t.user_attrs["ray_trial_id"]: t for t in study.trials}
    assert set(by_id) == {"t0-g0", "t0-g1", "t1-g0", "t1-g1", "t2"}
    assert by_id["t0-g0"].values == [50.0, 3.0] and by_id["t0-g1"].values == [40.0, 5.0]
    assert by_id["t0-g1"].user_attrs["group_id"] == "t0"
    assert by_id["t1-g0"].state == by_id["t1-g1"].state == TrialState.FAIL
    assert by_id["t2"].state == TrialState.RUNNING


def test_groups_are_asked_ahead_in_order(tmp_path: Path) -> None:
    """G > 1: the next group's asks are made in the background once a group is issued; issuing
    one writes nothing itself, yet the state and the journal hold every member's row id."""
    import pickle

    searcher = make(tmp_path, n_trials=7, seeds=(0,), baselines=0, group_size=3)
    first = given(searcher, "a")["spec"]
    assert [m.optuna_trial_number for m in first.members] == [0, 1, 2] and first.members[0].is_paper_setting
    state = searcher.get_state()["searchers"]["cifar10_lt"]["trials"]
    assert sorted(state) == ["a-g0", "a-g1", "a-g2"]
    assert {t: v["user_attrs"]["ray_trial_id"] for t, v in state.items()} == {t: t for t in state}
    pickle.loads(pickle.dumps(searcher))  # (a copy leaves the thread behind)
    searcher.close()  # the asks made ahead and the row ids written: the journal as the thread left it
    study = optuna.load_study(study_name="s:cifar10_lt",
                              storage=JournalStorage(JournalFileBackend(str(tmp_path / "optuna.log"))))
    trials = study.get_trials()
    assert [t.user_attrs.get("ray_trial_id") for t in trials] == ["a-g0", "a-g1", "a-g2", None, None, None]
    assert [t.user_attrs.get("group_id") for t in trials[:3]] == ["a"] * 3
    assert [t.user_attrs["seed"] for t in trials] == [0] * 6 and all(t.state == TrialState.RUNNING for t in trials)
    second = given(searcher, "b")["spec"]  # the three asked ahead
    assert [m.optuna_trial_number for m in second.members] == [3, 4, 5] and not second.members[0].is_paper_setting
    assert [m.setting.params() for m in second.members] == [
        Stage2Setting.from_params(t.params).params() for t in trials[3:]]
    third = given(searcher, "c")["spec"]
    assert [m.optuna_trial_number for m in third.members] == [6] and searcher.suggest("d") == Searcher.FINISHED
    searcher.on_trial_complete("b", group_metrics(epoch=10, final=True, members=[
        {"val_acc": 50.0 + k, "val_ece": 3.0} for k in range(3)]))
    searcher.close()
    trials = study.get_trials()
    assert len(trials) == 7  # nothing asked beyond the study's settings
    assert [t.user_attrs["ray_trial_id"] for t in trials] == [f"{g}-g{k}" for g in "ab" for k in range(3)] + ["c"]
    assert [t.values for t in trials[3:6]] == [[50.0, 3.0], [51.0, 3.0], [52.0, 3.0]]
