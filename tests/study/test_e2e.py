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
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.study.helpers import (
    FMNIST,
    REPO,
    SMOKE,
    VENV_BIN,
    check_optuna,
    check_tables,
    complete_parts,
    env,
    finish,
    kill_session,
    session_pids,
    start,
    wait_for,
)

pytestmark = pytest.mark.skipif(not (FMNIST / "train-images-idx3-ubyte.gz").exists(),
                                reason="needs Debian's dataset-fashion-mnist")


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
