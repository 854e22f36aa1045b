"""deploy/: the launcher config passes Ray's own validation (and a broken copy does not), token
auth and the dashboard's binding are what the files say, the RayJob's trials fill its GPU pods,
and a real token-auth head refuses clients without the cluster's token while one with it submits.

The cluster test starts a private ``ray start --head`` on 127.0.0.1 (own ports, temp dir, HOME
with its own token, a session of its own) and stops it by that session's ids; nothing else.
"""

from __future__ import annotations

import copy
import os
import re
import shlex
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.study.helpers import kill_session

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
VENV_BIN = Path(sys.executable).parent
TOKEN_ENV = ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE", "RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")


def load(name: str) -> Any:
    return yaml.safe_load((DEPLOY / name).read_text())


def commands(config: dict[str, Any], *keys: str) -> list[str]:
    return [c for k in keys for c in config.get(k) or []]


# --- the cluster launcher config ---------------------------------------------------------------

def ray_validate(config: dict[str, Any]) -> None:
    """What `ray up` checks before it touches a cloud: defaults merged, docker checked, schema
    and cross-field rules (ray.autoscaler._private.util, Ray 2.60)."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(config)))


def test_cluster_config_passes_rays_validation() -> None:
    pytest.importorskip("jsonschema")
    config = load("cluster-gpu.yaml")
    ray_validate(config)

    def broken(change: Any) -> dict[str, Any]:
        bad = copy.deepcopy(config)
        change(bad)
        return bad

    import jsonschema

    cases = {
        "misspelt key": broken(lambda c: c.update(worker_start_commands=c.pop("worker_start_ray_commands"))),
        "wrong type": broken(lambda c: c["available_node_types"]["gpu_a10g"].update(min_workers="one")),
        "unknown head type": broken(lambda c: c.update(head_node_type="gpu")),
        "min over max": broken(lambda c: c["available_node_types"]["gpu_a10g"].update(min_workers=99)),
    }
    for name, bad in cases.items():
        with pytest.raises((jsonschema.ValidationError, ValueError)):
            ray_validate(bad)
            pytest.fail(f"{name}: passed Ray's validation")


def test_cluster_config_token_auth_and_dashboard() -> None:
    config = load("cluster-gpu.yaml")
    # every process in the containers runs with token auth, and every node has the token
    assert "--env RAY_AUTH_MODE=token" in config["docker"]["run_options"]
    assert config["file_mounts"] == {"/home/ray/.ray/auth_token": "~/.ray/auth_token"}
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        cmds = config[key]
        start = next(i for i, c in enumerate(cmds) if "ray start" in c)
        guard = next(i for i, c in enumerate(cmds) if c.startswith("test -s ~/.ray/auth_token ||"))
        assert guard < start and "exit 1" in cmds[guard], key  # no token: the node fails, never starts open
        assert "RAY_AUTH_MODE=token ray start" in cmds[start], key
    head = next(c for c in config["head_start_ray_commands"] if "ray start" in c)
    assert "--dashboard-host=127.0.0.1" in head and "--dashboard-port=8265" in head
    every = commands(config, "initialization_commands", "setup_commands", "head_setup_commands",
                     "worker_setup_commands", "head_start_ray_commands", "worker_start_ray_commands")
    assert not any("0.0.0.0" in c for c in every)
    assert not any(re.search(r"\|\|\s*true", c) for c in every)  # a failed mount fails the node
    assert all(c.startswith("mountpoint -q ") for c in config["initialization_commands"] if " mount " in c)
    # the client side: the token made before `ray up`, the dashboard through `ray dashboard`
    text = (DEPLOY / "cluster-gpu.yaml").read_text()
    assert "ray get-auth-token --generate" in text and "ray dashboard deploy/cluster-gpu.yaml" in text


def test_cluster_config_sizing() -> None:
    """The documented study.submit example fills a GPU node: whole trials use all its GPUs."""
    config = load("cluster-gpu.yaml")
    text = (DEPLOY / "cluster-gpu.yaml").read_text()
    gpus = float(re.search(r"--gpus-per-trial (\S+)", text).group(1))  # type: ignore[union-attr]
    cpus = float(re.search(r"--cpus-per-trial (\S+)", text).group(1))  # type: ignore[union-attr]
    node = config["available_node_types"]["gpu_a10g"]["resources"]
    per_node = min(node["CPU"] // cpus, node["GPU"] // gpus)
    assert per_node * gpus == node["GPU"] and per_node * cpus <= node["CPU"], (per_node, node)
    assert config["available_node_types"]["head"]["resources"] == {"CPU": 0}


# --- the KubeRay RayJob ----------------------------------------------------------------------------

def quantity(value: str | int) -> float:
    text = str(value)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def test_rayjob_sizing_autoscaling_and_ttl() -> None:
    from study import cli

    job = load("rayjob.yaml")
    spec = job["spec"]
    argv = shlex.split(spec["entrypoint"])
    assert argv[:3] == ["python", "-m", "study.run"]
    args = cli.build_parser().parse_args(argv[3:])  # the real CLI: the entrypoint is a valid study
    cli.validate(args, check_paths=False)
    cluster = spec["rayClusterSpec"]
    (group,) = cluster["workerGroupSpecs"]
    (worker,) = group["template"]["spec"]["containers"]
    limits = worker["resources"]["limits"]
    assert worker["resources"]["requests"] == limits  # Guaranteed QoS: what Ray sees is what it gets
    pod_cpus, pod_gpus = quantity(limits["cpu"]), quantity(limits["nvidia.com/gpu"])
    params = group.get("rayStartParams") or {}
    assert quantity(params.get("num-cpus", pod_cpus)) == pod_cpus and quantity(params.get("num-gpus", pod_gpus)) == pod_gpus
    per_pod = min(pod_cpus // args.cpus_per_trial, pod_gpus // args.gpus_per_trial)
    assert per_pod * args.gpus_per_trial == pod_gpus, "trials leave GPUs of a pod idle"
    assert per_pod * args.cpus_per_trial == pod_cpus, "trials leave CPUs of a pod idle"
    # a data-parallel Stage 1 (1 GPU and --cpus-per-trial CPUs per worker) fills whole pods
    stage1_gpus = args.stage1_gpus_per_worker if args.stage1_gpus_per_worker is not None else 1.0
    assert (args.stage1_workers * stage1_gpus) % pod_gpus == 0 and args.stage1_workers > 1
    assert args.stage1_workers * args.cpus_per_trial == pod_cpus * args.stage1_workers * stage1_gpus // pod_gpus
    # autoscaling that does something; the cluster goes soon after the job
    assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    assert cluster.get("enableInTreeAutoscaling") is (group["minReplicas"] != group["maxReplicas"])
    assert spec["shutdownAfterJobFinishes"] is True and 0 < spec["ttlSecondsAfterFinished"] <= 600
    # token auth; the head runs the driver only; one image
    assert cluster["authOptions"] == {"mode": "token"}
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    (head,) = cluster["headGroupSpec"]["template"]["spec"]["containers"]
    assert head["image"] == worker["image"]
    # every mount has its volume; the claims are deploy/storage.yaml's
    claims = {d["metadata"]["name"] for d in yaml.safe_load_all((DEPLOY / "storage.yaml").read_text())}
    for pod in (cluster["headGroupSpec"]["template"]["spec"], group["template"]["spec"]):
        volumes = {v["name"]: v for v in pod["volumes"]}
        for container in pod["containers"]:
            assert {m["name"] for m in container["volumeMounts"]} <= set(volumes)
        assert {v["persistentVolumeClaim"]["claimName"] for v in volumes.values() if "persistentVolumeClaim" in v} <= claims
    assert not re.search(r"\|\|\s*true", (DEPLOY / "rayjob.yaml").read_text())


def test_dockerfile_installs_the_package_with_its_extras() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    base = re.search(r"^FROM (\S+)", text, re.M).group(1)  # type: ignore[union-attr]
    assert base.startswith("rayproject/ray:2.60.0") and "gpu" in base  # CUDA base, the tested Ray
    assert 'pip install --no-cache-dir -c /home/ray/constraints.txt ".[study,report,tracking]"' in text
    assert not re.search(r"pip install[^\n]*\b(optuna|pandas|pyarrow|filelock|matplotlib)\b", text)  # not retyped
    copied = []
    for line in re.findall(r"^COPY (.+)$", text, re.M):
        parts = [p for p in line.split() if not p.startswith("--")]
        copied += parts[:-1]
    assert all((REPO / src).exists() for src in copied), copied
    assert {"pyproject.toml", "README.md", "mislas/", "study/", "search_spaces/"} <= set(copied)


# --- study.submit's one-line errors --------------------------------------------------------------

def test_submit_cluster_errors_are_one_line() -> None:
    """What the Jobs SDK raises, as study.submit words it (the cluster test below runs the real ones)."""
    import requests
    from ray.exceptions import AuthenticationError

    from study import submit

    addr = "http://h:8265"
    cases = [
        (AuthenticationError("Token authentication is enabled but Ray couldn't find an authentication token. "
                             "Create a token file at ~/.ray/auth_token, or ..."),
         "authentication failed: no usable Ray auth token on this machine (none found)"),
        (AuthenticationError("RAY_AUTH_TOKEN_PATH is set but file cannot be opened or is empty: /x"),
         "(RAY_AUTH_TOKEN_PATH is set but file cannot be opened or is empty: /x)"),
        (AuthenticationError("Authentication required: Unauthorized: Missing authentication token\n\nmore"),
         f"authentication failed: {addr} answered HTTP 401 (Unauthorized: Missing authentication token)"),
        (AuthenticationError("Authentication failed: Forbidden: Invalid authentication token\n\nmore"),
         f"authentication failed: {addr} answered HTTP 403 (Forbidden: Invalid authentication token)"),
        (ConnectionError(f"Failed to connect to Ray at address: {addr}."), f"cannot reach the Ray Jobs API at {addr}"),
        (requests.exceptions.ConnectionError("Max retries exceeded\n(Connection refused)"), "cannot reach"),
        (RuntimeError("Request failed with status code 500: <html>\n" + "x" * 1000), "failed: RuntimeError: Request"),
    ]
    for exc, needle in cases:
        text = str(submit.cluster_error(exc, addr))
        assert needle in text and "\n" not in text and len(text) < 600, (needle, text)


# --- a real token-auth head ------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_status(url: str, token: str | None = None) -> int:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=3) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


@dataclass
class Head:
    address: str
    token_file: Path
    root: Path
    gcs: str = ""  # HOST:PORT, what `study.run --address` joins

    def client_env(self, **extra: str) -> dict[str, str]:
        """A client on another machine: its own empty HOME (no ~/.ray/auth_token), no token in the env."""
        env = {k: v for k, v in os.environ.items() if k not in TOKEN_ENV}
        env.update(HOME=str(self.root / "client"), PYTHONPATH=str(REPO),
                   PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}", **extra)
        return env


@pytest.fixture()
def head() -> Iterator[Head]:
    pytest.importorskip("aiohttp")  # ray[default]: the dashboard and its Jobs API
    if not (VENV_BIN / "ray").exists():
        pytest.skip("no ray CLI beside this python")
    root = Path(tempfile.mkdtemp(prefix="rtk", dir="/tmp"))  # short: Ray's socket paths stay < 108 bytes
    home, temp_dir = root / "home", root / "t"
    for d in (home, temp_dir, root / "client"):
        d.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in TOKEN_ENV}
    env.update(HOME=str(home), PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}", PYTHONPATH=str(REPO))
    # as deploy/cluster-gpu.yaml: the token exists before `ray start`, which runs with RAY_AUTH_MODE=token
    gen = subprocess.run([str(VENV_BIN / "ray"), "get-auth-token", "--generate"], env=env, capture_output=True,
                         text=True, timeout=60)
    token_file = home / ".ray" / "auth_token"
    assert gen.returncode == 0 and token_file.read_text().strip() == gen.stdout.strip(), gen.stderr
    token_file.chmod(0o600)
    dash, gcs = free_port(), free_port()
    proc = subprocess.Popen(
        [str(VENV_BIN / "ray"), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={gcs}",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--include-dashboard=true", "--num-cpus=1",
         f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
         f"--temp-dir={temp_dir}", "--disable-usage-stats", "--block"],
        cwd=root, env={**env, "RAY_AUTH_MODE": "token"}, stdout=(root / "head.log").open("wb"),
        stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield Head(address=f"http://127.0.0.1:{dash}", token_file=token_file, root=root, gcs=f"127.0.0.1:{gcs}")
    finally:
        proc.send_signal(signal.SIGTERM)  # `ray start --block` stops its own processes on SIGTERM
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        kill_session(proc.pid)
        shutil.rmtree(root, ignore_errors=True)


def wait_up(head: Head, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            http_status(f"{head.address}/api/version")
            return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"the head's dashboard did not answer: {(head.root / 'head.log').read_text()[-2000:]}")


SDK_JOB = """
import sys, time
from ray.job_submission import JobStatus, JobSubmissionClient
client = JobSubmissionClient(sys.argv[1])
job = client.submit_job(entrypoint="python -c 'print(6 * 7)'")
deadline = time.monotonic() + 90
while not client.get_job_status(job).is_terminal() and time.monotonic() < deadline:
    time.sleep(0.3)
print(client.get_job_status(job).value)
print(client.get_job_logs(job))
"""


@pytest.fixture()
def clients() -> Iterator[list[subprocess.Popen[str]]]:
    """The client processes a test starts; any still running at its end are killed."""
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_token_auth_head_refuses_clients_without_the_token(head: Head, clients: list[subprocess.Popen[str]]) -> None:
    def submit(*own: str, env: dict[str, str]) -> subprocess.Popen[str]:
        argv = [sys.executable, "-m", "study.submit", *own, "--", "--dataset", "fashion_mnist_lt",
                "--budget", "smoke", "--storage", str(head.root / "st"), "--data-root", str(head.root / "nodata")]
        clients.append(subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True))
        return clients[-1]

    def finish(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
        out, err = proc.communicate(timeout=120)
        return proc.returncode, out, err

    wrong = head.root / "wrong_token"
    wrong.write_text("0" * 64)
    # needs no server: starts while the head boots
    early = {"nothing listening": submit("--address", f"http://127.0.0.1:{free_port()}", "--token-file",
                                         str(head.token_file), env=head.client_env())}
    wait_up(head)
    token = head.token_file.read_text().strip()
    assert http_status(f"{head.address}/api/version") == 401  # token auth is on
    assert http_status(f"{head.address}/api/version", "0" * 64) == 403
    assert http_status(f"{head.address}/api/version", token) == 200
    late = {
        "auth disabled": submit("--address", head.address, env=head.client_env(RAY_AUTH_MODE="disabled")),
        "wrong token": submit("--address", head.address, "--token-file", str(wrong), env=head.client_env()),
    }
    sdk = subprocess.Popen([sys.executable, "-c", SDK_JOB, head.address], cwd=head.root, text=True,
                           env=head.client_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(head.token_file)),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    clients.append(sdk)
    good = submit("--address", head.address, "--token-file", str(head.token_file), "--no-wait", env=head.client_env())

    expected = {
        "nothing listening": "cannot reach the Ray Jobs API at http://127.0.0.1:",
        "auth disabled": "authentication failed: http://127.0.0.1:",  # no token sent: HTTP 401
        "wrong token": "answered HTTP 403",
    }
    results = {name: finish(proc) for name, proc in {**early, **late}.items()}
    for name, (code, out, err) in results.items():
        assert code == 3, (name, code, out, err)
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in out + err, (name, err)
        assert err.startswith("python -m study.submit: error: ") and expected[name] in err, (name, err)
    assert "HTTP 401" in results["auth disabled"][2]

    # with the token: the Jobs SDK runs a job to SUCCEEDED
    out, err = sdk.communicate(timeout=120)
    assert sdk.returncode == 0 and out.splitlines()[0] == "SUCCEEDED" and "42" in out, (out, err[-2000:])

    # ... and study.submit submits, printing a plain `ray job submit` line that works as printed
    code, out, err = finish(good)
    assert code == 0 and "submitted job raysubmit_" in out, (out, err[-2000:])
    line = next(ln for ln in out.splitlines() if ln.startswith("equivalent: "))
    printed = line.removeprefix("equivalent: ")
    assert printed.startswith(f"RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH={head.token_file} ray job submit ")
    cli = subprocess.run(["bash", "-c", printed], cwd=head.root, env=head.client_env(), capture_output=True,
                         text=True, timeout=120)
    text = cli.stdout + cli.stderr
    # the job ran on the cluster with the shipped code and failed as study.run does on a missing
    # --data-root (fast, and proof that auth, runtime env and entrypoint all got through)
    assert "submitted successfully" in text and "--data-root: not a folder" in text, text[-3000:]


def test_study_run_address_refused_for_its_token_leaves_nothing(head: Head, fmnist_root: Path) -> None:
    """``study.run --address`` with no token or a wrong one: one line, exit 3, and the storage
    untouched (no study.json): the driver joins the cluster before it writes anything."""
    wait_up(head)
    wrong = head.root / "wrong_token"
    wrong.write_text("0" * 64)
    cases = {"no token": head.client_env(), "wrong token": head.client_env(RAY_AUTH_TOKEN_PATH=str(wrong))}
    procs = {}
    for name, env in cases.items():
        storage = head.root / f"st-{name.replace(' ', '-')}"
        argv = [sys.executable, "-m", "study.run", "--address", head.gcs, "--dataset", "fashion_mnist_lt",
                "--budget", "smoke", "--trials", "1", "--storage", str(storage), "--data-root", str(fmnist_root)]
        procs[name] = (storage, subprocess.Popen(argv, cwd=head.root, env=env, stdout=subprocess.PIPE,
                                                 stderr=subprocess.PIPE, text=True))
    for name, (storage, proc) in procs.items():
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 3, (name, proc.returncode, out, err[-3000:])
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in out + err, (name, err[-3000:])
        assert lines[0].startswith(f"python -m study.run: error: cannot join the Ray cluster at {head.gcs}: "
                                   "authentication failed"), (name, lines)
        assert not storage.exists(), (name, sorted(storage.rglob("*")))
