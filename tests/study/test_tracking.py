"""study.tracking: ``--log`` parsing and checks, and the three trackers on a real Ray Tune run.

One in-process Ray (1 CPU) for the module; one ``Tuner.fit`` of two trials (a MiSLAS trial of one
member, a group of two) with all trackers at once, each reporting three epochs under the
study's config ``{"spec": TrialSpec}``. What was written is then read back with each tool's own
reader: TensorBoard's event accumulator, MLflow's client, and W&B's protobuf records of the
offline run file (W&B has no offline reader in Python any more).
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mislas.errors import UsageError
from study import tracking
from study.records import Stage2Setting, TrialMember, TrialSpec

# MLflow's SQL store, on SQLAlchemy 2.1 (not ours to fix)
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")

REPO = Path(__file__).resolve().parents[2]
STUDY = "trk"
HAS_WANDB = tracking.importlib.util.find_spec("wandb") is not None
NO_WANDB = 'wandb is not installed: pip install ".[tracking]" (from the repository, or the wheel with [tracking])'

SINGLE = TrialSpec(
    dataset="cifar10_lt", method="mislas", mixup=True, seed=1, optuna_study="trk:cifar10_lt",
    members=(TrialMember(Stage2Setting(eps_1=0.3, eps_k=0.1, form="exp", p=1.5, dw_ratio=0.2, shift_bn=True,
                                       las_target="paper"), optuna_trial_number=4),),
)
GROUP = TrialSpec(
    dataset="cifar100_lt", method="mislas", mixup=True, seed=2,
    members=(TrialMember(Stage2Setting(eps_1=0.4, eps_k=0.0, form="concave", p=None, dw_ratio=0.1, shift_bn=False,
                                       las_target="reference"), is_paper_setting=True, optuna_trial_number=0),
             TrialMember(Stage2Setting(eps_1=0.2, eps_k=0.05, form="linear", p=None, dw_ratio=0.3, shift_bn=True,
                                       las_target="paper"), optuna_trial_number=1)),
)


def val_acc(spec: TrialSpec, epoch: int) -> float:
    return 0.125 * epoch + 0.01 * spec.seed + 0.001


def report_three_epochs(config: dict[str, Any]) -> None:
    """The study's report shape (study.groups), three epochs, values known in advance."""
    from ray import tune

    spec: TrialSpec = config["spec"]
    for epoch in (1, 2, 3):
        metrics: dict[str, Any] = {"epoch": epoch, "final": int(epoch == 3), "group_size": len(spec.members),
                                   "val_acc": val_acc(spec, epoch), "val_ece": 0.5 / epoch}
        for k in range(len(spec.members)):
            metrics[f"g{k}_val_acc"] = val_acc(spec, epoch) - 0.01 * k
        tune.report(metrics)


def trial_name(trial: Any) -> str:  # as study.driver names trials
    return f"{trial.config['spec'].label()}-{trial.trial_id}"


def fixed_specs(specs: list[TrialSpec]) -> Any:
    """A searcher that suggests ``{"spec": spec}`` for each spec, as the study's StudySearcher does
    (Tune's grid search would take the specs apart)."""
    from ray.tune.search import Searcher

    class FixedSpecs(Searcher):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.left = list(specs)

        def suggest(self, trial_id: str) -> dict[str, Any] | None:
            return {"spec": self.left.pop(0)} if self.left else Searcher.FINISHED

        def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
            pass

    return FixedSpecs()


# --- parsing and checks (no Ray) -------------------------------------------------------------

def test_parse_trackers() -> None:
    assert tracking.parse_trackers("") == ()
    assert tracking.parse_trackers("mlflow") == ("mlflow",)
    assert tracking.parse_trackers(" wandb, TensorBoard ,wandb,,mlflow,tensorboard") == (
        "wandb", "tensorboard", "mlflow")
    with pytest.raises(UsageError) as err:
        tracking.parse_trackers("tensorboard,neptune")
    assert str(err.value) == "--log: unknown tracker 'neptune'; allowed: tensorboard, mlflow, wandb"


def test_check_installed_and_import_without_torch_ray_or_trackers() -> None:
    """In a fresh interpreter where torch, Ray and the trackers cannot be imported: the module
    imports, and check_installed names the missing package and the pip command."""
    code = """
import sys
for name in ("torch", "ray", "mlflow", "wandb", "tensorboardX"):
    sys.modules[name] = None  # an import of it raises; importlib.util.find_spec says None
from study import tracking
from mislas.errors import UsageError
print(tracking.parse_trackers("mlflow,wandb"))
for name in tracking.TRACKERS:
    try:
        tracking.check_installed(["tensorboard", "mlflow", "wandb"][tracking.TRACKERS.index(name):])
    except UsageError as e:
        print(e)
tracking.check_installed([])
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "('mlflow', 'wandb')",
        '--log tensorboard needs the tensorboardX package: pip install ".[tracking]" (from the repository, or the wheel with [tracking])',
        '--log mlflow needs the mlflow package: pip install ".[tracking]" (from the repository, or the wheel with [tracking])',
        '--log wandb needs the wandb package: pip install ".[tracking]" (from the repository, or the wheel with [tracking])',
    ]
    tracking.check_installed(["tensorboard", "mlflow"])  # here, both are installed (test extra)


def test_mlflow_uri(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.mlflow_tracking_uri(str(tmp_path)) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    with pytest.raises(UsageError, match="remote; set MLFLOW_TRACKING_URI"):
        tracking.mlflow_tracking_uri(None)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking.mlflow_tracking_uri(None) == "http://127.0.0.1:5000"


def test_spec_params() -> None:
    assert tracking.spec_params(SINGLE) == {
        "dataset": "cifar10_lt", "method": "mislas", "mixup": True, "seed": 1, "group_size": 1,
        "optuna_study": "trk:cifar10_lt", "optuna_trial": 4, "eps_1": 0.3, "eps_k": 0.1, "form": "exp", "p": 1.5,
        "dw_ratio": 0.2, "shift_bn": True, "las_target": "paper"}
    group = tracking.spec_params(GROUP)
    assert group["group_size"] == 2 and group["g0_form"] == "concave" and "g0_p" not in group
    assert group["g0_is_paper_setting"] is True and "g1_is_paper_setting" not in group
    assert group["g1_eps_k"] == 0.05 and group["g1_optuna_trial"] == 1
    baseline = TrialSpec(dataset="places_lt", method="crt", mixup=False, seed=0, shift_bn=False)
    assert tracking.spec_params(baseline) == {"dataset": "places_lt", "method": "crt", "mixup": False, "seed": 0,
                                              "group_size": 1, "shift_bn": False}
    assert tracking.trial_params({"spec": baseline, "lr": 0.1, "tag": None, "x": (1, 2)})["x"] == "(1, 2)"


# --- a real Tune run ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Ray (1 CPU, no dashboard) and one Tuner.fit with every installed tracker; Ray stopped after."""
    import ray
    from ray import tune

    study_dir = tmp_path_factory.mktemp("storage") / STUDY  # <storage>/<name>, as the study lays it out
    study_dir.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        for name in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "WANDB_DIR", "WANDB_PROJECT", "MLFLOW_EXPERIMENT_ID"):
            mp.delenv(name, raising=False)
        mp.setenv("RAY_CHDIR_TO_TRIAL_DIR", "0")
        # only the callbacks passed here write: the TensorBoard files are ours, not Tune's default's
        mp.setenv("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
        mp.setenv("WANDB_MODE", "offline")
        mp.setenv("WANDB_SILENT", "true")
        # workers import this module (the trainable) and study.records (the spec) from the checkout
        mp.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))
        trackers = ("tensorboard", "mlflow", "wandb") if HAS_WANDB else ("tensorboard", "mlflow")
        ray.init(address="local", num_cpus=1, include_dashboard=False, logging_level="WARNING",
                 log_to_driver=False)
        try:
            callbacks = tracking.logger_callbacks(trackers, study_name=STUDY, results_dir=str(study_dir))
            tuner = tune.Tuner(
                report_three_epochs,
                tune_config=tune.TuneConfig(search_alg=fixed_specs([SINGLE, GROUP]), num_samples=2, reuse_actors=True,
                                            trial_name_creator=trial_name, trial_dirname_creator=trial_name),
                run_config=tune.RunConfig(name="tune", storage_path=str(study_dir), callbacks=callbacks, verbose=0),
            )
            grid = tuner.fit()
        finally:
            ray.shutdown()
    assert not grid.errors, grid.errors
    trials = {r.config["spec"].seed: {"id": r.metrics["trial_id"], "path": Path(r.path), "spec": r.config["spec"]}
              for r in grid}
    yield {"study_dir": study_dir, "trials": trials}


def test_tensorboard_events_in_the_trial_folder(fitted: dict[str, Any]) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    for trial in fitted["trials"].values():
        spec, folder = trial["spec"], trial["path"]
        assert folder == fitted["study_dir"] / "tune" / f"{spec.label()}-{trial['id']}"
        assert list(folder.glob("events.out.tfevents.*"))
        acc = EventAccumulator(str(folder))
        acc.Reload()
        events = acc.Scalars("ray/tune/val_acc")
        assert [e.step for e in events] == [1, 2, 3]
        assert [e.value for e in events] == pytest.approx([val_acc(spec, ep) for ep in (1, 2, 3)], rel=1e-6)
        assert [e.value for e in acc.Scalars("ray/tune/epoch")] == [1, 2, 3]
        # the HPARAMS tab: the spec's parameters, not an opaque "spec"
        start = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
        hparams = plugin_data_pb2.HParamsPluginData.FromString(start).session_start_info.hparams
        assert hparams["dataset"].string_value == spec.dataset and hparams["seed"].number_value == spec.seed
        assert "spec" not in hparams


def test_mlflow_runs(fitted: dict[str, Any]) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{fitted['study_dir'].resolve()}/mlflow.db"
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(STUDY)
    assert experiment is not None
    assert experiment.artifact_location == (fitted["study_dir"].resolve() / "mlartifacts").as_uri()
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == len(fitted["trials"]) == 2
    by_trial = {run.data.tags["ray_trial_id"]: run for run in runs}
    for trial in fitted["trials"].values():
        spec, run = trial["spec"], by_trial[trial["id"]]
        assert run.info.status == "FINISHED" and run.info.run_name == f"{spec.label()}-{trial['id']}"
        params = run.data.params
        assert (params["dataset"], params["method"], params["seed"], params["mixup"]) == (
            spec.dataset, "mislas", str(spec.seed), "True")
        assert "spec" not in params and run.data.tags["study"] == STUDY
        history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "val_acc"))
        assert history == [(ep, val_acc(spec, ep)) for ep in (1, 2, 3)]
        assert run.data.metrics["final"] == 1.0
    single, group = by_trial[fitted["trials"][1]["id"]].data.params, by_trial[fitted["trials"][2]["id"]].data.params
    assert (single["form"], single["p"], single["eps_1"], single["optuna_trial"]) == ("exp", "1.5", "0.3", "4")
    assert (group["g0_form"], group["g1_form"], group["g1_dw_ratio"], group["group_size"]) == (
        "concave", "linear", "0.3", "2")
    assert "g0_p" not in group and "p" not in group


def wandb_records(path: Path) -> list[Any]:
    """The protobuf records of a ``.wandb`` file: a 7-byte header (``:W&B``, magic, version),
    then LevelDB-log blocks of 32 KiB of chunks (crc32 u32, length u16, type u8: 1 full,
    2 first, 3 middle, 4 last)."""
    from wandb.proto import wandb_internal_pb2

    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B"
    pos, payload, records = 7, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a chunk header is padding
            pos += left
            continue
        length, kind = struct.unpack("<HB", data[pos + 4:pos + 7])
        payload += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(payload)
            records.append(record)
            payload = b""
    return records


def item_value(item: Any) -> Any:
    return json.loads(item.value_json) if item.value_json else getattr(item, item.WhichOneof("value"))


@pytest.mark.skipif(not HAS_WANDB, reason=NO_WANDB)
def test_wandb_offline_runs(fitted: dict[str, Any]) -> None:
    for trial in fitted["trials"].values():
        spec, tid = trial["spec"], trial["id"]
        found = list((fitted["study_dir"] / "wandb").glob(f"offline-run-*-{tid}/run-{tid}.wandb"))
        assert len(found) == 1, list((fitted["study_dir"] / "wandb").iterdir())
        records = wandb_records(found[0])
        run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
        assert (run.run_id, run.project, run.run_group) == (tid, STUDY, STUDY)
        config = {item.key: json.loads(item.value_json) for item in run.config.update}
        for update in (r.config for r in records if r.WhichOneof("record_type") == "config"):  # per result
            config.update({item.key: json.loads(item.value_json) for item in update.update})
        assert config["dataset"] == spec.dataset and config["seed"] == spec.seed
        assert config["g1_form" if spec.grouped else "form"] == spec.members[-1].setting.form
        assert "spec" not in config
        rows = [{i.key or "/".join(i.nested_key): item_value(i) for i in r.history.item} for r in records
                if r.WhichOneof("record_type") == "history"]
        assert [row["training_iteration"] for row in rows] == [1, 2, 3]
        assert [row["val_acc"] for row in rows] == [val_acc(spec, ep) for ep in (1, 2, 3)]
        assert [row["g1_val_acc"] for row in rows if "g1_val_acc" in row] == (
            [val_acc(spec, ep) - 0.01 for ep in (1, 2, 3)] if spec.grouped else [])
