"""Real studies: in-process Ray (6 trials, a worker killed) and a ``ray start --head`` cluster fed
by ``study.submit``. Fashion-MNIST-LT from Debian, smoke budget. (SIGKILL of the driver, damage
and resume: tests/study/test_robustness.py.)

The tests share one storage root, so the Stage-1 cache trained by the first is reused by the
other (as later studies on the same storage do). Every process a test starts runs in a
session of its own and is stopped by that session's ids; nothing else is touched.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import optuna
import pandas as pd
import pytest
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

pytestmark = pytest.mark.skipif(not (FMNIST / "train-images-idx3-ubyte.gz").exists(),
                                reason="needs Debian's dataset-fashion-mnist")


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
    for _ in range(20):
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
        # (the searcher, study.search, marks a diverged trial "failed" when it tells Optuna FAIL; a
        # journal rebuilt from the rows takes the row's "diverged")
        attrs = {"failed", "diverged"} if status[tid] == "diverged" else {status[tid]}
        assert t.state == expected_state[status[tid]] and t.user_attrs["status"] in attrs
    pareto = {t.user_attrs["ray_trial_id"] for t in study.best_trials}
    assert pareto and pareto <= set(trials.loc[trials["status"] == "complete", "trial_id"])
    assert not study.get_trials(states=(TrialState.RUNNING,))


@pytest.fixture(scope="module")
def storage(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("studies")


def test_in_process_study_of_six_trials(storage: Path, tmp_path: Path) -> None:
    """6 trials, Stage 1 trained once; one trial's worker is killed and the trial resumes."""
    results = storage / "six"
    log = tmp_path / "six.log"
    t0 = time.monotonic()
    proc = start(["study.run", *SMOKE, "--trials", "6", "--storage", str(storage), "--name", "six"], log)
    try:
        # Once a trial has a Stage-2 checkpoint and no rows yet, kill a running trial worker.
        def checkpointed() -> bool:
            done = set(complete_parts(results))
            return any(c.parent.name.split("-")[-1] not in done for c in (results / "tune").glob("*/checkpoint_*"))

        def training_workers() -> list[int]:
            found = []
            for pid in session_pids(proc.pid):
                try:
                    cmd = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
                except OSError:
                    continue
                if "ImplicitFunc.train" in cmd:  # an actor running a trial (not an idle cached one)
                    found.append(pid)
            return found

        wait_for(checkpointed, 240, proc, "a Stage-2 checkpoint")
        wait_for(lambda: bool(training_workers()), 60, proc, "a running trial worker")
        os.kill(training_workers()[0], signal.SIGKILL)
        code = finish(proc, 400)
    except BaseException:
        finish(proc, 1)
        raise
    out = log.read_text()
    assert code == 0, out[-3000:]
    print(f"6-trial smoke study: {time.monotonic() - t0:.1f} s")
    trials = check_tables(results, 6)
    check_optuna(results, "six", trials)
    # Stage 1: one key, trained exactly once, by the Stage-1 phase before the trials started
    summary = json.loads((results / "summary.json").read_text())
    assert trials["stage1_key"].nunique() == 1 and not trials["stage1_trained"].any()
    assert summary["timings"]["stage1_trainings"] == 1 and (trials["stage1_workers"] == 1).all()
    assert summary["timings"]["stage1_wait_trial_s"] < 5.0  # no trial waited for a Stage 1 being trained
    entry = storage / "stage1" / trials["stage1_key"].iloc[0]
    assert len((entry / "trainings.jsonl").read_text().splitlines()) == 1
    assert "Stage-1 phase: training 1 of 1 Stage 1s" in out
    # the killed trial was retried from its checkpoint (FailureConfig), not marked failed
    errored = [p.parent.name for p in (results / "tune").glob("*/error.txt")]
    assert errored, "no trial recorded the killed worker"
    assert "stopped early by ASHA" in out and "Pareto front" in out and str(results) in out
    assert summary["trials"]["total"] == 6 and summary["datasets"]["fashion_mnist_lt"]["pareto_front_size"] >= 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def ray_head() -> Iterator[str]:
    """A private ``ray start --head`` on 127.0.0.1 (own ports, temp dir and session); stopped after."""
    temp_dir = tempfile.mkdtemp(prefix="rayh", dir="/tmp")  # short: Ray's socket paths must stay < 108 bytes
    port, dash = free_port(), free_port()
    head = subprocess.Popen(
        [str(VENV_BIN / "ray"), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--num-cpus=2", f"--temp-dir={temp_dir}",
         "--include-dashboard=true", "--disable-usage-stats", "--block"],
        cwd=REPO, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    address = f"http://127.0.0.1:{dash}"

    def up() -> bool:
        try:
            urllib.request.urlopen(f"{address}/api/version", timeout=2)
            return True
        except urllib.error.HTTPError:
            return True  # answering (e.g. 401 without a token) is up
        except OSError:
            return False

    try:
        wait_for(up, 90, head, "the head's dashboard")
        yield address
    finally:
        head.send_signal(signal.SIGTERM)  # `ray start --block` stops its own processes on SIGTERM
        try:
            head.wait(30)
        except subprocess.TimeoutExpired:
            head.kill()
        kill_session(head.pid)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_cluster_submit(storage: Path, ray_head: str) -> None:
    results = storage / "cluster"
    proc = subprocess.run(
        [sys.executable, "-m", "study.submit", "--address", ray_head, "--", *SMOKE, "--trials", "2",
         "--storage", str(storage), "--name", "cluster"],
        cwd=REPO, env=env(), capture_output=True, text=True, timeout=400)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "submitted job raysubmit_" in out and "SUCCEEDED" in out
    trials = check_tables(results, 2)
    check_optuna(results, "cluster", trials)
    assert trials["is_paper_setting"].iloc[0] or trials["is_paper_setting"].iloc[1]
