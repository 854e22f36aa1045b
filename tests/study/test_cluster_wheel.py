"""The wheel, installed in a fresh venv outside the repository, runs the study on a two-node Ray
cluster: ``study.submit`` (a Ray job) and ``study.run --address`` (a driver that joins), token
auth on, and each row says which node ran it.

The venv is made with ``python -m venv --without-pip`` and the wheel installed with ``--no-deps``;
torch, Ray and the rest come from this venv's site-packages through a ``.pth`` line (the only
offline way: nothing is downloaded; a plain path line does not run this venv's editable-install
hook, so the repository is not importable there). Both nodes are ``ray start --block`` processes
of that venv on 127.0.0.1 (one CPU each, own temp dirs, ports and HOME with a generated token),
started in sessions of their own and stopped by them; every command runs with its cwd outside
the repository and no PYTHONPATH. The two studies share one storage, so the second finds the
first's Stage 1 in the cache. About 2–3 minutes on a 2-core machine; select with ``-m cluster``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from tests.study.helpers import REPO, SMOKE, build_wheel, check_tables, free_port, quiet_pip, stop_block

pytestmark = pytest.mark.cluster

TOKEN_ENV = ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE", "RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")
JOB_ID = "wheel-two-node-job"


@dataclass
class Venv:
    root: Path

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"

    def env(self, home: Path, **extra: str) -> dict[str, str]:
        """This venv first on PATH (a job's ``python`` is the node's), no PYTHONPATH, own HOME."""
        env = {k: v for k, v in os.environ.items() if k not in (*TOKEN_ENV, "PYTHONPATH", "VIRTUAL_ENV")}
        env.update(HOME=str(home), PATH=f"{self.root / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}", **extra)
        return env

    def ray(self, *argv: str) -> list[str]:
        return [str(self.python), "-m", "ray.scripts.scripts", *argv]  # the ray CLI of this venv's Python


@pytest.fixture(scope="module")
def venv() -> Iterator[Venv]:
    root = Path(tempfile.mkdtemp(prefix="mwv", dir="/tmp"))  # short: Ray's socket paths stay < 108 bytes
    try:
        wheel = build_wheel(root)
        venv = Venv(root / "venv")
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv.root)], check=True, timeout=120)
        purelib = Path(subprocess.run([str(venv.python), "-c", "import sysconfig; print(sysconfig.get_paths()"
                                       "['purelib'])"], capture_output=True, text=True, check=True).stdout.strip())
        (purelib / "borrowed_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
        quiet_pip("install", str(wheel), cwd=root, python=venv.python)
        yield venv
    finally:
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class Cluster:
    root: Path
    dashboard: str  # http://127.0.0.1:PORT, what study.submit talks to
    gcs: str  # 127.0.0.1:PORT, what study.run --address joins
    token_file: Path
    client_home: Path  # a client's HOME without a token


def http_get(url: str, token: str) -> tuple[int, str]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=3) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), ""


def alive_nodes(cluster: Cluster) -> dict[str, str]:
    """{node id: node IP} of the cluster's live nodes (Ray's state API, with the token)."""
    try:
        status, body = http_get(f"{cluster.dashboard}/api/v0/nodes?detail=false", cluster.token_file.read_text().strip())
    except OSError:
        return {}
    if status != 200:
        return {}
    return {n["node_id"]: n["node_ip"] for n in json.loads(body)["data"]["result"]["result"] if n["state"] == "ALIVE"}


def wait_nodes(cluster: Cluster, n: int, procs: list[subprocess.Popen[bytes]], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(alive_nodes(cluster)) >= n:
            return
        for proc in procs:
            assert proc.poll() is None, f"a Ray node exited ({proc.returncode}): {logs(cluster.root)}"
        time.sleep(0.5)
    raise AssertionError(f"{n} Ray nodes did not come up: {logs(cluster.root)}")


def logs(root: Path) -> str:
    return " | ".join(f"{p.name}: {p.read_text(errors='replace')[-1500:]}" for p in sorted(root.glob("*.log")))


@pytest.fixture(scope="module")
def cluster(venv: Venv) -> Iterator[Cluster]:
    """A head and a second node (``ray start --address``), one CPU each, token auth on."""
    root = Path(tempfile.mkdtemp(prefix="mwc", dir="/tmp"))
    home = root / "home"
    for d in (home, root / "client", root / "h", root / "w"):
        d.mkdir()
    node_env = venv.env(home, RAY_AUTH_MODE="token")
    # as deploy/cluster-gpu.yaml: the token exists before `ray start` (Ray 2.60 turns auth on then)
    gen = subprocess.run(venv.ray("get-auth-token", "--generate"), cwd=root, env=node_env, capture_output=True,
                         text=True, timeout=120)
    token_file = home / ".ray" / "auth_token"
    assert gen.returncode == 0 and token_file.is_file(), gen.stderr[-2000:]
    token_file.chmod(0o600)
    dash, gcs = free_port(), free_port()
    common = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--disable-usage-stats", "--block"]

    def own_ports() -> list[str]:
        return [f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}",
                f"--metrics-export-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
                f"--dashboard-agent-grpc-port={free_port()}", f"--runtime-env-agent-port={free_port()}"]

    def start(name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        return subprocess.Popen(venv.ray("start", *argv, *common, *own_ports(), f"--temp-dir={root / name}"),
                                cwd=root, env=node_env, stdout=(root / f"{name}.log").open("wb"),
                                stderr=subprocess.STDOUT, start_new_session=True)

    procs: list[subprocess.Popen[bytes]] = []
    c = Cluster(root=root, dashboard=f"http://127.0.0.1:{dash}", gcs=f"127.0.0.1:{gcs}", token_file=token_file,
                client_home=root / "client")
    try:
        procs.append(start("h", ["--head", f"--port={gcs}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
                                 "--include-dashboard=true", f"--ray-client-server-port={free_port()}"]))
        wait_nodes(c, 1, procs)
        procs.append(start("w", [f"--address={c.gcs}"]))
        wait_nodes(c, 2, procs)
        yield c
    finally:
        for proc in reversed(procs):  # the second node first, then the head
            stop_block(proc)
        shutil.rmtree(root, ignore_errors=True)


def rows_per_node(trials: pd.DataFrame) -> dict[str, int]:
    return {str(k): int(v) for k, v in trials.groupby("node_id").size().items()}


def check_two_nodes(trials: pd.DataFrame, name: str, nodes: dict[str, str]) -> None:
    """Two one-trial-at-a-time nodes and two trials asked at once: one row each (the placement
    allows no other), each row's node id one of the cluster's and its IP that node's."""
    # every row written and none diverged (check_tables: complete ones ran all epochs, ASHA may stop one)
    assert trials["status"].isin(["complete", "stopped_early"]).all(), (
        name, trials[["trial_id", "status", "error"]].to_dict("records"))
    per_node = rows_per_node(trials)
    print(f"[{name}] rows per node: {per_node}")
    assert sorted(per_node.values()) == [1, 1], (name, per_node)
    assert set(per_node) == set(nodes), (per_node, nodes)
    # (node_ip is the address Ray registered for the row's node; one machine: one hostname)
    assert [nodes[n] for n in trials["node_id"]] == trials["node_ip"].tolist() and trials["hostname"].nunique() == 1


def test_the_wheel_runs_the_study_on_a_two_node_cluster(venv: Venv, cluster: Cluster) -> None:
    outside = cluster.root / "client"
    storage = cluster.root / "studies"
    where = subprocess.run([str(venv.python), "-c", "import mislas, study, search_spaces; "
                            "print(mislas.__file__, study.__file__, search_spaces.__file__)"],
                           cwd=outside, env=venv.env(cluster.client_home), capture_output=True, text=True, timeout=60)
    assert where.returncode == 0, where.stderr[-2000:]
    for path in where.stdout.split():
        assert Path(path).is_relative_to(venv.root) and not Path(path).is_relative_to(REPO), path

    # a Ray job: the client's HOME has no token, --token-file gives it
    submit = subprocess.run(
        [str(venv.python), "-m", "study.submit", "--address", cluster.dashboard, "--token-file",
         str(cluster.token_file), "--submission-id", JOB_ID, "--", *SMOKE, "--trials", "2", "--storage",
         str(storage), "--name", "submitted"],
        cwd=outside, env=venv.env(cluster.client_home), capture_output=True, text=True, timeout=600)
    out = submit.stdout + submit.stderr
    assert submit.returncode == 0, out[-4000:]
    assert f"submitted job {JOB_ID}" in out and "SUCCEEDED" in out, out[-4000:]
    submitted = check_tables(storage / "submitted", 2)
    nodes = alive_nodes(cluster)
    check_two_nodes(submitted, "study.submit", nodes)

    # a driver of its own that joins the cluster, here outside any job
    run = subprocess.run(
        [str(venv.python), "-m", "study.run", "--address", cluster.gcs, *SMOKE, "--trials", "2", "--storage",
         str(storage), "--name", "joined"],
        cwd=outside, env=venv.env(cluster.client_home, RAY_AUTH_MODE="token",
                                  RAY_AUTH_TOKEN_PATH=str(cluster.token_file)),
        capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    joined = check_tables(storage / "joined", 2)
    check_two_nodes(joined, "study.run --address", nodes)  # the same two nodes
    # the second study found the first's Stage 1 in the shared cache
    trainings = [json.loads((storage / n / "summary.json").read_text())["timings"]["stage1_trainings"]
                 for n in ("submitted", "joined")]
    assert trainings == [1, 0] and set(joined["stage1_key"]) == set(submitted["stage1_key"])
