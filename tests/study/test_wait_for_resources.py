"""``--wait-for-resources`` on a real cluster (issue 17.3): a ``ray start --head`` of 1 CPU on
127.0.0.1 (own port, temp dir, session), a trial asking 2 CPUs. Without the option: refused at
once; with a short wait and no node coming: refused after it, one line; with a node of 2 CPUs
joining while it waits: it goes on. The driver runs in a process of its own (its Ray is not
this one's)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.study.helpers import REPO, VENV_BIN, env, kill_session

DRIVER = r"""
import subprocess, sys, time
import ray
from mislas.errors import UsageError
from study import cli
from study.driver import check_resources
from study.tune_adapter import cluster_resources

address, storage, ray_bin = sys.argv[1:4]
for attempt in range(90):
    try:
        ray.init(address=address, logging_level="WARNING")
        break
    except Exception:
        time.sleep(1)
args = ["--dataset", "fashion_mnist_lt", "--budget", "smoke", "--storage", storage, "--address", address,
        "--cpus-per-trial", "2"]
try:
    check_resources(cli.parse(args), cluster_resources(), joined=True)
    print("NOW passed", flush=True)
except UsageError as exc:
    print("NOW", exc, flush=True)
t0 = time.monotonic()
try:
    check_resources(cli.parse([*args, "--wait-for-resources", "3"]), cluster_resources(), joined=True, poll_s=0.5)
    print("SHORT passed", flush=True)
except UsageError as exc:
    print("SHORT", f"{time.monotonic() - t0:.1f}", exc, flush=True)
worker = subprocess.Popen([ray_bin, "start", f"--address={address}", "--node-ip-address=127.0.0.1", "--num-cpus=2",
                           "--disable-usage-stats", "--block"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          start_new_session=True)
print("WORKER", worker.pid, flush=True)
check_resources(cli.parse([*args, "--wait-for-resources", "240"]), cluster_resources(), joined=True, poll_s=0.5)
print("JOINED", cluster_resources().get("CPU"), flush=True)
ray.shutdown()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop(proc: subprocess.Popen[bytes] | None, pid: int | None = None) -> None:
    if proc is not None:
        proc.send_signal(signal.SIGTERM)  # `ray start --block` stops its own processes on SIGTERM
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    if pid is not None:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        kill_session(pid)


def test_wait_for_resources_on_a_real_cluster(tmp_path: Path) -> None:
    temp_dir = tempfile.mkdtemp(prefix="rayw", dir="/tmp")  # short: Ray's socket paths must stay < 108 bytes
    port = free_port()
    head = subprocess.Popen(
        [str(VENV_BIN / "ray"), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=1",
         f"--temp-dir={temp_dir}", "--include-dashboard=false", "--disable-usage-stats", "--block"],
        cwd=REPO, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    worker = None
    try:
        done = subprocess.run([sys.executable, "-c", DRIVER, f"127.0.0.1:{port}", str(tmp_path), str(VENV_BIN / "ray")],
                              cwd=REPO, env=env(), capture_output=True, text=True, timeout=420)
        lines = {line.split(" ", 1)[0]: line.split(" ", 1)[1] for line in done.stdout.splitlines() if " " in line}
        worker = int(lines["WORKER"]) if "WORKER" in lines else None
        out = done.stdout + done.stderr[-3000:]
        assert done.returncode == 0, out
        assert lines["NOW"] == ("--cpus-per-trial 2: the Ray cluster has 1 CPUs, so no trial could start now; give "
                                "at most what it has, or, if its nodes autoscale, add --wait-for-resources SECONDS to "
                                "wait for them"), out
        waited, line = lines["SHORT"].split(" ", 1)
        assert float(waited) >= 3.0 and line == ("--cpus-per-trial 2: the Ray cluster has 1 CPUs, so no trial could "
                                                 "start after waiting 3 s (--wait-for-resources); give at most what it "
                                                 "has, or wait longer"), out
        assert "requested {'CPU': 2.0} from its autoscaler, waiting up to 3 s" in done.stderr, out
        assert float(lines["JOINED"]) == 3.0, out
        assert "the cluster has the resources after" in done.stderr, out
    finally:
        stop(None, worker)
        stop(head, head.pid)
        shutil.rmtree(temp_dir, ignore_errors=True)
