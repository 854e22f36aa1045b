"""What the real-study tests share: starting a driver in a session of its own, waiting, killing
that session, the checks of a finished study's tables and journal, the package's wheel, and
private Ray nodes (a helpers module: test modules import from here, never from each other)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import optuna
import pandas as pd
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from study.results import TRIALS_SCHEMA

REPO = Path(__file__).resolve().parents[2]
FMNIST = Path("/usr/share/datasets/fashion-mnist")
VENV_BIN = Path(sys.executable).parent
# a test split of 100 images a class (1,000, not 10,000): evaluation is most of a smoke trial's time
SMOKE = ["--dataset", "fashion_mnist_lt", "--budget", "smoke", "--set", "data.test_per_class=100"]
REQUIRED = ["trial_id", "dataset", "imb_factor", "method", "mixup", "seed", "eps_1", "eps_k", "form", "p", "dw_ratio",
            "shift_bn", "las_target", "epochs_run", "status", "val_acc", "val_ece", "test_acc", "test_acc_many",
            "test_acc_medium", "test_acc_few", "test_ece", "test_mce", "test_nll", "wall_s", "mislas_version",
            "torch_version", "ray_version", "optuna_version", "python_version", "git_commit", "device_name"]


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "RAY_AUTH_MODE": "token"}


def session_pids(sid: int) -> list[int]:
    """Processes whose session id is ``sid`` (field 6 of /proc/PID/stat)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        if int(fields[3]) == sid and int(entry.name) != os.getpid():
            pids.append(int(entry.name))
    return pids


def kill_session(sid: int) -> None:
    """SIGKILL what remains of a session this test started (e.g. Ray agents after a SIGKILL)."""
    for _ in range(40):
        pids = session_pids(sid)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.25)


def start(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", *argv], cwd=REPO, env=env(), stdout=log.open("wb"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def finish(proc: subprocess.Popen[bytes], timeout: float) -> int:
    try:
        return proc.wait(timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        kill_session(proc.pid)


def wait_for(predicate: Callable[[], bool], timeout: float, proc: subprocess.Popen[bytes] | None = None,
             what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process ended (status {proc.returncode}) before {what}")
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def complete_parts(results: Path) -> list[str]:
    parts = results / "parts"
    return sorted(p.name for p in parts.iterdir() if (p / "trials.parquet").exists()) if parts.exists() else []


def load_optuna(results: Path, name: str) -> optuna.Study:
    storage = JournalStorage(JournalFileBackend(str(results / "optuna.log")))
    return optuna.load_study(study_name=f"{name}:fashion_mnist_lt", storage=storage)


def check_tables(results: Path, n: int) -> pd.DataFrame:
    trials = pd.read_parquet(results / "trials.parquet")
    assert len(trials) == n and trials["trial_id"].is_unique
    assert set(REQUIRED) <= set(trials.columns) and list(trials.columns) == TRIALS_SCHEMA.names
    assert set(trials["status"]) <= {"complete", "stopped_early", "diverged"}
    # the only failures a smoke study may have are settings whose training diverged (status
    # diverged); they end themselves (no retry) and keep their epochs
    failed = trials[trials["status"] == "diverged"]
    assert failed["error"].str.startswith("diverged").all(), failed["error"].tolist()
    for tid in failed["trial_id"]:
        # (an error.txt may exist where the test killed the trial's worker: only a raised
        # divergence would mean a retry)
        for error in (results / "tune").glob(f"*-{tid}/error.txt"):
            text = error.read_text(errors="replace")
            assert "NonFiniteError" not in text and "diverged" not in text, f"diverged trial {tid} was retried"
    assert (trials["dataset"] == "fashion_mnist_lt").all() and (trials["imb_factor"] == 100.0).all()
    done = trials[trials["status"] == "complete"]
    early = trials[trials["status"] == "stopped_early"]
    assert len(done) >= 1
    assert ((done["epochs_run"] == done["epochs_planned"]) & (done["epochs_planned"] == 3)).all()
    assert (early["epochs_run"] < early["epochs_planned"]).all() and early["test_acc"].isna().all()
    for col in ["val_acc", "test_acc", "test_acc_many", "test_acc_medium", "test_acc_few", "test_ece", "test_mce"]:
        assert done[col].between(0.0, 100.0).all(), col
    ran = trials[trials["status"] != "failed"]
    assert ran["val_acc"].between(0, 100).all() and ran["val_ece"].between(0, 100).all()
    assert (done["test_nll"] > 0).all() and (ran["wall_s"] > 0).all()
    mislas = trials[trials["method"] == "mislas"]
    assert (mislas["eps_k"] <= mislas["eps_1"]).all()
    assert (mislas["p"].notna() == (mislas["form"] == "exp")).all()
    first = mislas.sort_values("optuna_trial_number").iloc[0]  # the Table 6 setting comes first
    assert first["is_paper_setting"] and (first["eps_1"], first["eps_k"], first["form"], first["dw_ratio"],
                                          first["shift_bn"], first["las_target"]) == (0.3, 0.0, "concave", 0.5,
                                                                                      False, "reference")
    epochs = pd.read_parquet(results / "epochs.parquet")
    for tid, run in trials.set_index("trial_id")["epochs_run"].items():
        assert epochs.loc[epochs["trial_id"] == tid, "epoch"].tolist() == list(range(1, run + 1)), tid
    classes = pd.read_parquet(results / "classes.parquet")
    assert len(classes) == 10 * len(done) and set(classes["trial_id"]) == set(done["trial_id"])
    one = classes[classes["trial_id"] == done["trial_id"].iloc[0]].sort_values("rank")
    assert one["count"].is_monotonic_decreasing and set(one["split"]) == {"many", "medium", "few"}
    assert (one["weight_norm"] > 0).all() and one["epsilon"].between(0, 1).all()
    rel = pd.read_parquet(results / "reliability.parquet")
    assert len(rel) == 2 * 15 * len(done) and set(rel["eval_split"]) == {"val", "test"}
    return trials


def check_optuna(results: Path, name: str, trials: pd.DataFrame) -> None:
    study = load_optuna(results, name)
    status = dict(zip(trials["trial_id"], trials["status"]))
    # every Optuna trial of a Tune trial, and orphans (asked by a killed driver, never run) as FAIL
    by_ray = {t.user_attrs.get("ray_trial_id"): t for t in study.trials if t.user_attrs.get("status") != "orphaned"}
    assert set(by_ray) == set(trials.loc[trials["method"] == "mislas", "trial_id"])
    expected_state = {"complete": TrialState.COMPLETE, "stopped_early": TrialState.PRUNED, "failed": TrialState.FAIL,
                      "diverged": TrialState.FAIL}
    for tid, t in by_ray.items():
        # the searcher (study.search) and a journal rebuilt from the rows both say the row's status
        assert (t.state, t.user_attrs["status"]) == (expected_state[status[tid]], status[tid])
    pareto = {t.user_attrs["ray_trial_id"] for t in study.best_trials}
    assert pareto and pareto <= set(trials.loc[trials["status"] == "complete", "trial_id"])
    assert not study.get_trials(states=(TrialState.RUNNING,))


# --- the package as a built wheel, and private Ray nodes ---------------------------------------

WHEEL_SOURCES = ["pyproject.toml", "README.md", "mislas", "study", "search_spaces"]


def quiet_pip(*args: str, cwd: Path, python: Path | None = None) -> None:
    """This venv's pip, offline and without dependencies (``python``: install into that interpreter)."""
    target = ["--python", str(python)] if python is not None else []
    proc = subprocess.run([sys.executable, "-m", "pip", *target, *args, "--no-deps", "--no-index", "--quiet",
                           "--disable-pip-version-check"], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def build_wheel(root: Path) -> Path:
    """The package's wheel, built offline (no build isolation) from a copy of the sources under
    ``root`` (the repository's tree is left alone); returns the wheel's path in ``root/dist``."""
    src = root / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in WHEEL_SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=ignore)
        else:
            shutil.copy2(path, src / name)
    quiet_pip("wheel", "--no-build-isolation", "-w", str(root / "dist"), str(src), cwd=root)
    wheels = list((root / "dist").glob("mislas_study-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_block(proc: subprocess.Popen[bytes]) -> None:
    """Stop a ``ray start --block`` this test started, and only it: SIGTERM (it stops its own
    node's processes), then SIGKILL whatever is left of its session (``ray stop`` would stop
    every Ray node of the machine)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    kill_session(proc.pid)
