"""study.tune_adapter on real Optuna storages and a real Ray MLflow callback (no mocks): what
each function stands in for still holds on the installed versions."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from study import tune_adapter


def journal(path: Path) -> JournalStorage:
    return JournalStorage(JournalFileBackend(str(path)))


def test_trial_storage_id_counts_trials_across_studies_in_ask_order(tmp_path: Path) -> None:
    storage = journal(tmp_path / "optuna.log")
    a = optuna.create_study(study_name="a", storage=storage)
    b = optuna.create_study(study_name="b", storage=storage)
    order = [a, b, b, a, b]  # ids are handed out storage-wide, in this order
    numbers = [s.ask().number for s in order]
    assert numbers == [0, 0, 1, 1, 2]
    got = [tune_adapter.trial_storage_id(storage, s.study_name, n) for s, n in zip(order, numbers)]
    assert got == [0, 1, 2, 3, 4]
    with pytest.raises(KeyError):
        tune_adapter.trial_storage_id(storage, "a", 7)


def test_attach_trial_continues_a_trial_another_process_asked(tmp_path: Path) -> None:
    path = tmp_path / "optuna.log"
    first = optuna.create_study(study_name="s", storage=journal(path))
    asked = first.ask()
    x = asked.suggest_float("x", 0.0, 1.0)
    # a second process: its own storage on the same journal, no Trial object of the first
    storage = journal(path)
    study = optuna.load_study(study_name="s", storage=storage)
    handle = tune_adapter.attach_trial(study, tune_adapter.trial_storage_id(storage, "s", 0))
    assert handle.number == 0 and handle.suggest_float("x", 0.0, 1.0) == x  # the same param, not a new draw
    handle.report(0.25, step=1)
    handle.set_user_attr("status", "complete")
    study.tell(handle, 0.5)
    (done,) = optuna.load_study(study_name="s", storage=journal(path)).trials
    assert (done.state, done.value, done.intermediate_values, done.user_attrs) == (
        TrialState.COMPLETE, 0.5, {1: 0.25}, {"status": "complete"})


def test_trial_json_round_trip_keeps_what_a_rebuild_needs(tmp_path: Path) -> None:
    study = optuna.create_study(study_name="s", storage=journal(tmp_path / "optuna.log"), directions=["maximize"])
    study.enqueue_trial({"form": "exp"})
    trial = study.ask()
    trial.suggest_categorical("form", ["exp", "concave"])
    trial.suggest_float("eps", 0.1, 0.4, log=True)
    trial.set_user_attr("ray_trial_id", "t0")
    trial.report(1.5, step=3)
    frozen = study.trials[0]
    data = json.loads(json.dumps(tune_adapter.trial_to_json(frozen, 0)))  # plain JSON
    back = tune_adapter.trial_from_json(data)
    assert back["trial_id"] == 0 and back["number"] == 0 and back["params"] == frozen.params
    assert back["distributions"] == {"form": CategoricalDistribution(["exp", "concave"]),
                                     "eps": FloatDistribution(0.1, 0.4, log=True)}
    assert back["user_attrs"] == {"ray_trial_id": "t0"} and back["intermediate_values"] == {3: 1.5}
    assert back["system_attrs"] == frozen.system_attrs and "fixed_params" in back["system_attrs"]
    assert back["datetime_start"] == frozen.datetime_start


def test_mlflow_trial_runs_is_where_ray_keeps_its_runs(tmp_path: Path) -> None:
    from ray.air.integrations.mlflow import MLflowLoggerCallback
    from ray.tune.experiment import Trial

    callback = MLflowLoggerCallback(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", experiment_name="e")
    callback.setup()
    trial = Trial("dummy", config={"a": 1}, stub=True, trial_id="t0")
    assert tune_adapter.mlflow_trial_runs(callback) == {}
    callback.log_trial_start(trial)  # Ray's own: starts a run and registers it
    runs = tune_adapter.mlflow_trial_runs(callback)
    assert list(runs) == [trial]
    from mlflow.tracking import MlflowClient

    run = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db").get_run(runs[trial])
    assert run.data.params == {"a": "1"} and run.info.status == "RUNNING"
    callback.log_trial_end(trial)  # Ray looks the run up in the same map and ends it
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    assert client.get_run(runs[trial]).info.status == "FINISHED"


def test_no_private_member_is_used_outside_the_adapter(tmp_path: Path) -> None:
    root = Path(tune_adapter.__file__).parent
    assert tune_adapter.private_uses(root) == []
    tests = Path(__file__).resolve().parents[1]
    assert tune_adapter.private_uses(tests) == []
    u = "_"  # (so that this file holds no use itself)
    (tmp_path / "x.py").write_text(f'a = searcher.{u}ot_trials  # a use\nb = getattr(s, "{u}trial_info")\n# .{u}mode\n')
    assert tune_adapter.private_uses(tmp_path) == [(str(tmp_path / "x.py"), 1, u + "ot_trials"),
                                                   (str(tmp_path / "x.py"), 2, u + "trial_info")]
