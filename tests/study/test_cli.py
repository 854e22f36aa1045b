"""Bad command lines and space files: exit status 2, one line naming the option, file or key."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from study import cli, run, submit

REPO = Path(__file__).resolve().parents[2]
BASE = ["--dataset", "fashion_mnist_lt", "--budget", "smoke"]


def run_main(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str]:
    try:
        code = run.main(argv)
    except SystemExit as exc:  # argparse-level errors
        code = int(exc.code or 0)
    err = capsys.readouterr().err.strip()
    return code, err


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        (["--trials", "0"], "--trials"),
        (["--trials", "many"], "--trials"),
        (["--objective", "loss"], "--objective"),
        (["--objective", "acc,acc"], "--objective"),
        (["--scheduler", "hyperband"], "--scheduler"),
        (["--gpus-per-trial", "-1"], "--gpus-per-trial"),
        (["--cpus-per-trial", "0"], "--cpus-per-trial"),
        (["--max-concurrent", "0"], "--max-concurrent"),
        (["--budget", "huge"], "--budget"),
        (["--seeds", "0,x"], "--seeds"),
        (["--seeds", "1,1"], "--seeds"),
        (["--methods", "mislas,focal"], "--methods"),
        (["--imb-factor", "0.5"], "--imb-factor"),
        (["--dataset", "mnist"], "--dataset"),
        (["--data-root", "/no/such/folder"], "--data-root"),
        (["--name", "my study"], "--name"),
        (["--set", "stage2.nope=1"], "stage2.nope"),
        (["--set", "stage2.epochs=ten"], "stage2.epochs"),
        (["--set", "stage2.eps_1=0.2"], "--set stage2.eps_1: the study sets this field"),
        (["--set", "seed=3"], "--set seed"),
        (["--baseline-mixup", "sometimes"], "--baseline-mixup"),
        (["--reduction-factor", "1"], "--reduction-factor"),
        (["--grace-period", "0"], "--grace-period"),
        (["--frobnicate"], "--frobnicate"),
        (["--group-size", "0"], "--group-size"),
        (["--group-size", "two"], "--group-size"),
        (["--group-size", "2", "--scheduler", "asha"], "--scheduler asha: cannot be used with --group-size 2"),
        (["--stage1-workers", "0"], "--stage1-workers"),
        (["--stage1-workers", "3"], "--stage1-workers 3: fashion_mnist_lt's stage1.batch_size=32 is not a multiple"),
        (["--stage1-gpus-per-worker", "-1"], "--stage1-gpus-per-worker"),
        (["--log", "tensorboard,neptune"], "--log: unknown tracker 'neptune'; allowed: tensorboard, mlflow, wandb"),
        (["--log", "mlflow", "--storage", "mock:///studies"], "--log mlflow: the study's storage is remote; set "
                                                                    "MLFLOW_TRACKING_URI"),
    ],
)
def test_bad_cli_values_exit_2_naming_the_option(capsys: pytest.CaptureFixture[str], extra: list[str],
                                                 named: str) -> None:
    argv = list(BASE)
    if extra[0] in ("--dataset", "--budget"):
        argv = ["--dataset", extra[1], "--budget", "smoke"] if extra[0] == "--dataset" else [
            "--dataset", "fashion_mnist_lt", "--budget", extra[1]]
    else:
        argv += extra
    code, err = run_main(capsys, argv)
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert named in err


def test_imb_factor_only_for_array_data_sets(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run_main(capsys, ["--dataset", "places_lt", "--imb-factor", "10"])
    assert code == 2 and "--imb-factor: applies only to" in err


def test_resume_of_a_missing_study(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, err = run_main(capsys, [*BASE, "--storage", str(tmp_path), "--name", "nothing", "--resume"])
    assert code == 2 and "--resume: no study named 'nothing'" in err


def test_same_name_other_settings_is_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "s").mkdir()
    s = cli.validate(cli.build_parser().parse_args([*BASE, "--storage", str(tmp_path), "--name", "s"]))
    (tmp_path / "s" / "study.json").write_text(
        __import__("json").dumps({"identity": {**s.identity(), "trials": 99}}))
    code, err = run_main(capsys, [*BASE, "--storage", str(tmp_path), "--name", "s"])
    assert code == 2 and "differs in trials" in err


@pytest.mark.parametrize(
    ("change", "key"),
    [({"colour": 1}, "colour"), ({"eps_1": {"low": 0.6, "high": 0.2}}, "eps_1"), ({"eps_1": 1.5}, "eps_1"),
     ({"p": {"low": -1.0, "high": 2.0}}, "p.low"), ({"form": ["wavy"]}, "form"),
     ({"dw_ratio": "big"}, "dw_ratio")],
)
def test_bad_space_via_cli(capsys: pytest.CaptureFixture[str], tmp_path: Path, change: dict, key: str) -> None:
    raw = yaml.safe_load((REPO / "search_spaces" / "fashion_mnist_lt.yaml").read_text())
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({**raw, **change}))
    code, err = run_main(capsys, [*BASE, "--space", str(path)])
    assert code == 2 and len(err.splitlines()) == 1
    assert f"{path}: {key}" in err, err


def test_process_exit_status_is_2(tmp_path: Path) -> None:
    """The real process: a bad space file and a bad value, each one line on stderr and status 2."""
    bad = tmp_path / "bad.yaml"
    raw = yaml.safe_load((REPO / "search_spaces" / "fashion_mnist_lt.yaml").read_text())
    bad.write_text(yaml.safe_dump({**raw, "form": ["concave", "sine"]}))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for argv, needle in (([*BASE, "--space", str(bad)], f"{bad}: form"), ([*BASE, "--trials", "-3"], "--trials")):
        proc = subprocess.run([sys.executable, "-m", "study.run", *argv], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and needle in proc.stderr


def test_submit_argument_handling(capsys: pytest.CaptureFixture[str]) -> None:
    cases = [
        (["--address", "http://h:8265", "--dataset", "cifar10_lt"], "must follow '--'"),
        (["--address", "http://h:8265", "--"], "no study.run arguments"),
        (["--address", "http://h:8265", "--", *BASE, "--storage", "relative/dir"], "--storage: a job runs"),
        (["--address", "http://h:8265", "--", *BASE, "--storage", "/abs", "--address", "auto"], "before '--'"),
        (["--address", "http://h:8265", "--", *BASE, "--storage", "/abs", "--trials", "0"], "--trials"),
        (["--", *BASE, "--storage", "/abs"], "--address"),
        (["--address", "http://h:8265", "--requirements", "/no/req.txt", "--", *BASE, "--storage", "/abs"],
         "--requirements"),
    ]
    env_addr = os.environ.pop("RAY_ADDRESS", None)
    try:
        for argv, needle in cases:
            assert submit.main(argv) == 2, argv
            err = capsys.readouterr().err.strip()
            assert len(err.splitlines()) == 1 and needle in err, (argv, err)
    finally:
        if env_addr is not None:
            os.environ["RAY_ADDRESS"] = env_addr


def test_submit_runtime_env_ships_the_repo() -> None:
    args = submit.build_parser().parse_args(["--address", "http://h:8265", "--pip", "optuna", "--env", "A=1"])
    env = submit.runtime_env(args)
    assert env["working_dir"] == str(REPO) and env["pip"] == ["optuna"]
    assert {k: v for k, v in env["env_vars"].items() if k != "MISLAS_GIT_COMMIT"} == {
        "RAY_CHDIR_TO_TRIAL_DIR": "0", "A": "1"}
    assert "/data/" in env["excludes"] and "data/" not in env["excludes"]  # mislas/data must ship
