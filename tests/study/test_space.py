"""Search-space files: validation (one line naming file and key), define-by-run sampling."""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pytest
import yaml

from mislas.config import paper_config
from mislas.errors import UsageError
from study.records import Stage2Setting
from study.space import SPACE_DIR, default_space_file, load_space, parse_space

DATASETS = ("fashion_mnist_lt", "cifar10_lt", "cifar100_lt", "imagenet_lt", "places_lt", "inat2018")
GOOD = {
    "dataset": "cifar10_lt",
    "eps_1": {"low": 0.0, "high": 0.5},
    "eps_k": {"low": 0.0, "high": 0.3},
    "form": ["concave", "linear", "convex", "exp"],
    "p": {"low": 0.25, "high": 4.0, "log": True},
    "dw_ratio": {"low": 0.01, "high": 1.0, "log": True},
    "shift_bn": [True, False],
    "las_target": ["paper", "reference"],
}


def write(tmp_path: Path, data: object, name: str = "space.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


@pytest.mark.parametrize("dataset", DATASETS)
def test_shipped_space_files_are_valid_and_hold_table6(dataset: str) -> None:
    imbs = (10.0, 50.0, 100.0) if dataset in ("fashion_mnist_lt", "cifar10_lt", "cifar100_lt") else (None,)
    for imb in imbs:
        t6 = Stage2Setting.from_config(paper_config(dataset, imb))
        space = load_space(default_space_file(dataset), dataset=dataset, table6=t6)
        assert space.dataset == dataset
    assert {p.stem for p in SPACE_DIR.glob("*.yaml")} == set(DATASETS)


@pytest.mark.parametrize(
    ("change", "key", "fragment"),
    [
        ({"colour": "red"}, "colour", "unknown key"),
        ({"eps_1": {"low": 0.5, "high": 0.2}}, "eps_1", "low <= high"),
        ({"eps_1": {"low": 0.0, "high": 1.0}}, "eps_1.high", "[0, 1)"),
        ({"eps_k": {"low": -0.1, "high": 0.2}}, "eps_k.low", "[0, 1)"),
        ({"p": {"low": 0.0, "high": 2.0}}, "p.low", "> 0"),
        ({"p": -1}, "p", "> 0"),
        ({"form": ["concave", "cubic"]}, "form", "cubic"),
        ({"eps_1": {"low": "zero", "high": 0.5}}, "eps_1.low", "must be a number"),
        ({"shift_bn": ["yes"]}, "shift_bn", "true or false"),
        ({"las_target": 3}, "las_target", "one of paper, reference"),
        ({"dw_ratio": {"low": 0.1, "high": 1.0, "log": "yes"}}, "dw_ratio.log", "true or false"),
        ({"eps_1": {"low": 0.0, "high": 0.5, "step": 0.1}}, "eps_1.step", "unknown key"),
        ({"eps_k": {"low": 0.2, "high": 0.3}, "eps_1": {"low": 0.1, "high": 0.5}}, "eps_k.low", "eps_1.low"),
    ],
)
def test_bad_space_names_file_and_key(tmp_path: Path, change: dict, key: str, fragment: str) -> None:
    path = write(tmp_path, {**GOOD, **change})
    with pytest.raises(UsageError) as err:
        load_space(path)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: {key}:"), message
    assert fragment in message


def test_missing_key_and_not_yaml_and_wrong_dataset(tmp_path: Path) -> None:
    data = dict(GOOD)
    del data["dw_ratio"]
    with pytest.raises(UsageError, match=r"space.yaml: dw_ratio: key is required"):
        load_space(write(tmp_path, data))
    with pytest.raises(UsageError, match=r"space.yaml: not valid YAML at line"):
        load_space(write(tmp_path, "eps_1: [0.1,\n  form: {"))
    with pytest.raises(UsageError, match=r"space.yaml: dataset: the file is for 'cifar10_lt'"):
        load_space(write(tmp_path, GOOD), dataset="places_lt")


def test_space_must_contain_the_table6_setting(tmp_path: Path) -> None:
    t6 = Stage2Setting.from_config(paper_config("cifar10_lt", 100.0))  # eps_1 0.3, shift_bn off
    with pytest.raises(UsageError, match=r"eps_1: the space \(\[0, 0.2\]\) must contain the Table 6 value 0.3"):
        load_space(write(tmp_path, {**GOOD, "eps_1": {"low": 0.0, "high": 0.2}}), table6=t6)
    with pytest.raises(UsageError, match=r"shift_bn: .*Table 6 value False"):
        load_space(write(tmp_path, {**GOOD, "shift_bn": True}), table6=t6)


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_define_by_run_respects_constraints(sampler: str) -> None:
    space = parse_space(GOOD, where="inline")
    s = (optuna.samplers.RandomSampler(seed=0) if sampler == "random"
         else optuna.samplers.TPESampler(seed=0, n_startup_trials=10, multivariate=True, group=True,
                                         constant_liar=True))
    study = optuna.create_study(sampler=s, direction="maximize")
    forms = set()
    for _ in range(120 if sampler == "random" else 40):
        trial = study.ask()
        fixed = space(trial)
        params = {**trial.params, **fixed}
        assert 0.0 <= params["eps_k"] <= params["eps_1"] <= 0.5
        assert params["eps_k"] <= 0.3
        assert params["form"] in ("concave", "linear", "convex", "exp")
        if params["form"] == "exp":
            assert "p" in trial.params and 0.25 <= params["p"] <= 4.0
        else:
            assert "p" not in trial.params and params["p"] is None
        assert 0.01 <= params["dw_ratio"] <= 1.0
        forms.add(params["form"])
        study.tell(trial, params["eps_1"] - params["eps_k"])
    assert forms == {"concave", "linear", "convex", "exp"}
    assert study.trials[0].distributions["dw_ratio"].log


def test_fixed_values_are_returned_not_suggested() -> None:
    space = parse_space({**GOOD, "las_target": "reference", "shift_bn": [True], "eps_k": 0.0}, where="inline")
    study = optuna.create_study()
    trial = study.ask()
    fixed = space(trial)
    assert fixed["las_target"] == "reference" and fixed["shift_bn"] is True and fixed["eps_k"] == 0.0
    assert not {"las_target", "shift_bn", "eps_k"} & set(trial.params)
    assert not math.isnan(trial.params["eps_1"])
