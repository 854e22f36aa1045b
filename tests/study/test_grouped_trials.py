"""A grouped study (``--group-size 2``): real in-process Ray, Fashion-MNIST-LT, smoke budget.

Four MiSLAS settings run as two Tune trials of two members each (one backbone pass per Stage-2
batch per group). Each member is its own trials row, with its own epochs/classes/reliability
rows, and its own Optuna trial told its own values.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import pytest
from optuna.trial import TrialState

from study import cli, run
from study.results import TRIALS_SCHEMA
from tests.study.helpers import FMNIST, REQUIRED, SMOKE, complete_parts, finish, load_optuna, start

pytestmark = pytest.mark.skipif(not (FMNIST / "train-images-idx3-ubyte.gz").exists(),
                                reason="needs Debian's dataset-fashion-mnist")

KNOBS = ["eps_1", "eps_k", "form", "p", "dw_ratio", "shift_bn", "las_target"]


def test_grouped_study(tmp_path: Path) -> None:
    storage = tmp_path / "studies"
    results = storage / "grouped"
    t0 = time.monotonic()
    proc = start(["study.run", *SMOKE, "--trials", "4", "--group-size", "2", "--num-cpus", "2",
                  "--set", "stage2.epochs=2", "--storage", str(storage), "--name", "grouped", "--log", "mlflow"],
                 tmp_path / "run.log")
    code = finish(proc, 300)
    out = (tmp_path / "run.log").read_text()
    assert code == 0, out[-3000:]
    print(f"grouped smoke study (4 settings in 2 groups): {time.monotonic() - t0:.1f} s")

    trials = pd.read_parquet(results / "trials.parquet")
    assert list(trials.columns) == TRIALS_SCHEMA.names and set(REQUIRED) <= set(trials.columns)
    assert len(trials) == 4 and trials["trial_id"].is_unique and (trials["method"] == "mislas").all()
    assert sorted(complete_parts(results)) == sorted(trials["trial_id"])
    assert (trials["status"] == "complete").all() and (trials["epochs_run"] == 2).all()
    assert trials["group_id"].nunique() == 2 and (trials["group_size"] == 2).all()
    for tid, gid in zip(trials["trial_id"], trials["group_id"]):
        assert tid in (f"{gid}-g0", f"{gid}-g1")
    assert trials.groupby("group_id")["seed"].nunique().eq(1).all()  # a group shares its seed
    settings = {tuple(str(v) for v in r) for r in trials[KNOBS].itertuples(index=False)}
    assert len(settings) == 4, trials[KNOBS]
    paper = trials[trials["is_paper_setting"]]
    assert len(paper) == 1 and paper["trial_id"].iloc[0].endswith("-g0")
    assert tuple(paper[["eps_1", "eps_k", "form", "dw_ratio", "shift_bn", "las_target"]].iloc[0]) == (
        0.3, 0.0, "concave", 0.5, False, "reference")
    for col in ["val_acc", "test_acc", "val_ece", "test_ece"]:
        assert trials[col].between(0.0, 100.0).all(), col
    # Stage 1: one key, trained once for both groups, by the Stage-1 phase (no trial trained it)
    assert trials["stage1_key"].nunique() == 1 and int(trials["stage1_trained"].sum()) == 0
    entry = storage / "stage1" / trials["stage1_key"].iloc[0]
    assert len((entry / "trainings.jsonl").read_text().splitlines()) == 1
    # each member's own rows
    epochs = pd.read_parquet(results / "epochs.parquet")
    classes = pd.read_parquet(results / "classes.parquet")
    rel = pd.read_parquet(results / "reliability.parquet")
    for tid in trials["trial_id"]:
        assert epochs.loc[epochs["trial_id"] == tid, "epoch"].tolist() == [1, 2]
        assert (classes["trial_id"] == tid).sum() == 10 and (rel["trial_id"] == tid).sum() == 30
    # Optuna: four complete trials, each told its own member's values
    study = load_optuna(results, "grouped")
    assert len(study.trials) == 4 and all(t.state == TrialState.COMPLETE for t in study.trials)
    row = trials.set_index("trial_id")
    for t in study.trials:
        tid = t.user_attrs["ray_trial_id"]
        assert t.user_attrs["group_id"] == row.loc[tid, "group_id"] and t.user_attrs["status"] == "complete"
        assert t.values == pytest.approx([row.loc[tid, "val_acc"], row.loc[tid, "val_ece"]])
        assert t.number == row.loc[tid, "optuna_trial_number"]
    summary = json.loads((results / "summary.json").read_text())
    assert summary["group_size"] == 2 and summary["scheduler"] == "fifo" and summary["trials"]["total"] == 4
    assert "Stage 2 grouped" in out
    # --log mlflow: one MLflow run per Tune trial (group) in the study folder's store, with each
    # epoch's reported group metric and the members' settings as parameters
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    (experiment,) = [e for e in client.search_experiments() if e.name == "grouped"]
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.data.tags["ray_trial_id"] for r in runs) == sorted(trials["group_id"].unique())
    for r in runs:
        members = trials[trials["group_id"] == r.data.tags["ray_trial_id"]].sort_values("trial_id")
        history = client.get_metric_history(r.info.run_id, "val_acc")
        # one report after Stage-2 epoch 1 (with the group's checkpoint), then the final one
        assert [h.step for h in history] == [1, 2]
        assert history[-1].value == pytest.approx(members["val_acc"].max())  # the group's best member
        assert float(r.data.params["g0_eps_1"]) == pytest.approx(members["eps_1"].iloc[0])


def test_group_size_needs_fifo(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """--group-size < 1 and ASHA with groups exit 2 naming the option; without --scheduler groups get FIFO."""
    base = [*SMOKE, "--storage", str(tmp_path)]
    with pytest.raises(SystemExit) as exit_info:  # argparse's type check
        run.main([*base, "--group-size", "0"])
    assert exit_info.value.code == 2 and "--group-size" in capsys.readouterr().err
    assert run.main([*base, "--group-size", "3", "--scheduler", "asha"]) == 2
    assert "--scheduler asha: cannot be used with --group-size 3" in capsys.readouterr().err
    settings = cli.parse([*base, "--group-size", "3"])
    assert settings.scheduler == "fifo" and settings.identity()["group_size"] == 3
    single = cli.parse(base)
    assert single.scheduler == "asha" and single.identity()["group_size"] == 1


def test_confirm_best_reruns_the_best_setting_on_every_seed(tmp_path: Path) -> None:
    """--confirm-best: after the search, the setting of highest mean val acc (ties: lower val
    ECE) runs once more per seed as a fixed row (variant best_on_val), and the paired rows
    (Table 6, the reruns) keep one predictions row per test image, consistent with test_acc."""
    storage = tmp_path / "studies"
    results = storage / "confirm"
    proc = start(["study.run", *SMOKE, "--trials", "4", "--group-size", "2", "--seeds", "0,1", "--confirm-best",
                  "--num-cpus", "2", "--set", "stage2.epochs=1", "--storage", str(storage), "--name", "confirm"],
                 tmp_path / "run.log")
    code = finish(proc, 400)
    out = (tmp_path / "run.log").read_text()
    assert code == 0, out[-3000:]
    trials = pd.read_parquet(results / "trials.parquet")
    assert (trials["status"] == "complete").all()
    search = trials[trials["variant"].isna()]
    confirm = trials[trials["variant"] == "best_on_val"]
    assert len(search) == 4 and len(confirm) == 2 and sorted(confirm["seed"]) == [0, 1]
    # the choice, recomputed from the search rows: mean val acc per setting, then val ECE
    per_setting = search.groupby(KNOBS, dropna=False).agg(acc=("val_acc", "mean"), ece=("val_ece", "mean"))
    best = per_setting.sort_values(["acc", "ece"], ascending=[False, True]).index[0]
    for _, row in confirm.iterrows():
        assert tuple(str(row[k]) for k in KNOBS) == tuple(str(v) for v in best)
    predictions = pd.read_parquet(results / "predictions.parquet")
    kept = set(trials.loc[trials["is_paper_setting"], "trial_id"]) | set(confirm["trial_id"])
    assert set(predictions["trial_id"]) == kept
    for tid, rows in predictions.groupby("trial_id"):
        assert sorted(rows["sample"]) == list(range(1000))  # 100 test images a class, each once
        row = trials[trials["trial_id"] == tid].iloc[0]
        assert 100.0 * rows["correct"].mean() == pytest.approx(row["test_acc"], abs=1e-9)
        assert rows["nll"].astype(float).mean() == pytest.approx(row["test_nll"], rel=1e-5)
