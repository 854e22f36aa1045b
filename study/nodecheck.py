"""Whether each Ray node's Python can import what a trial needs, asked before anything trains.

Why here and not inside the trainable: a trial's function and its arguments (configs, the
study's context) are unpickled on the worker before any of its code runs, and unpickling them
imports torch (mislas.config -> mislas.las), so a node without torch fails inside Ray with a
long traceback ending in ``No module named 'torch'``. This module imports only the standard
library and Ray: its probe runs on every node of a cluster the driver joins and answers with
what is missing there, which the driver turns into one line (exit 3).
"""

from __future__ import annotations

import importlib.util
import socket
import sys
from typing import Any

EXIT_NODE = 3
# import name -> pip requirement: what a trial imports on its node (the study extra's and the core's)
REQUIRED = {"torch": "torch", "torchvision": "torchvision", "numpy": "numpy", "yaml": "pyyaml", "PIL": "pillow",
            "pyarrow": "pyarrow", "optuna": "optuna", "filelock": "filelock", "mislas": "mislas-study",
            "study": "mislas-study"}


class NodeDependencyError(Exception):
    """A node's Python lacks packages a trial imports; the message is one line."""


def missing_here(modules: list[str]) -> list[str]:
    """The modules of ``modules`` this Python cannot import (found, not imported: cheap)."""
    out = []
    for name in modules:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            out.append(name)
    return out


def probe(modules: list[str]) -> dict[str, Any]:
    """What this process (a Ray worker on some node) lacks, and where it runs."""
    import ray

    ctx = ray.get_runtime_context()
    return {"missing": missing_here(modules), "python": sys.executable, "hostname": socket.gethostname(),
            "node_id": ctx.get_node_id(), "node_ip": str(ray.util.get_node_ip_address())}  # type: ignore[no-untyped-call]


def message(found: dict[str, Any]) -> str:
    """The one line for a node that lacks ``found['missing']``."""
    reqs = sorted({REQUIRED.get(m, m) for m in found["missing"]})
    return (f"node {found['node_ip']} (Ray node {found['node_id'][:12]}, Python {found['python']}) cannot import "
            f"{', '.join(found['missing'])}: install {' '.join(reqs)} into that Python (e.g. pip install "
            f"'<the mislas_study wheel>[study]' or pip install '.[study]' from the repository), or start that "
            f"node's Ray (`ray start`) from the environment that has them")


def check_nodes(modules: list[str] | None = None, *, timeout_s: float = 120.0) -> None:
    """Check that every alive node can import the study's dependencies.

    Run :func:`probe` on every alive node of the joined cluster; raise NodeDependencyError
    naming the first node that lacks a module (the driver prints it and exits 3).
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    wanted = list(REQUIRED if modules is None else modules)
    remote = ray.remote(probe)
    refs = [remote.options(num_cpus=0, max_retries=0, scheduling_strategy=NodeAffinitySchedulingStrategy(
        node["NodeID"], soft=False)).remote(wanted) for node in ray.nodes() if node.get("Alive")]  # type: ignore[no-untyped-call]
    for found in ray.get(refs, timeout=timeout_s):
        if found["missing"]:
            raise NodeDependencyError(message(found))


def check_driver(modules: list[str] | None = None) -> None:
    """The same check for this process (the driver, or a job's entrypoint on the head node)."""
    wanted = [*REQUIRED, "ray"] if modules is None else list(modules)
    missing = missing_here(wanted)
    if missing:
        reqs = sorted({REQUIRED.get(m, "ray[default,tune]" if m == "ray" else m) for m in missing})
        raise NodeDependencyError(
            f"this Python ({sys.executable}, on {socket.gethostname()}) cannot import {', '.join(missing)}: install "
            f"{' '.join(reqs)} into it (pip install '.[study]' from the repository, or the built wheel with "
            f"[study]), or run from the environment that has them")


def cuda_facts() -> dict[str, Any]:
    """Whether this worker's torch sees CUDA, and what Ray gave it (imports torch: on a node)."""
    import os

    import ray
    import torch

    return {"cuda": bool(torch.cuda.is_available()), "node_ip": str(ray.util.get_node_ip_address()),  # type: ignore[no-untyped-call]
            "visible": os.environ.get("CUDA_VISIBLE_DEVICES", "(unset)"), "torch": torch.__version__,
            "built_for": torch.version.cuda}


def _no_cuda(what: str, facts: dict[str, Any], fix: str) -> str:
    return (f"{what} on node {facts['node_ip']} (CUDA_VISIBLE_DEVICES={facts['visible']}), but torch "
            f"{facts['torch']} there cannot see CUDA (torch.cuda.is_available() is False; built for CUDA "
            f"{facts['built_for']}): run with {fix}, or on nodes whose torch sees their GPUs")


def require_cuda(what: str, fix: str) -> None:
    """Fail in one line when a task given a GPU cannot see CUDA.

    Inside a task given a GPU: fail with one line when torch cannot see it (rather than train
    on the CPU under a config that says "cuda").
    """
    facts = cuda_facts()
    if not facts["cuda"]:
        raise RuntimeError(_no_cuda(what + " was given a GPU", facts, fix))


def check_stage1_gpus(workers: int, gpus_per_worker: float, *, timeout_s: float = 300.0) -> None:
    """Check, before Stage 1 trains on GPUs, that a GPU task sees CUDA.

    Before the Stage-1 phase trains on GPUs: one task given ``gpus_per_worker`` GPU checks that
    torch sees CUDA there. A head that declares logical GPUs (``ray start --num-gpus``) on a
    machine without CUDA would otherwise start NCCL data-parallel workers that die in NCCL's
    ValueError (``workers`` > 1), or one-process Stage 1s that fail one by one. Raises
    NodeDependencyError (one line, exit 3; rerunning does not help). Skipped when the cluster
    has no such GPUs now (Ray would queue the work until an autoscaled node comes) or the probe
    is not scheduled within ``timeout_s``.
    """
    import ray

    if gpus_per_worker <= 0 or ray.cluster_resources().get("GPU", 0) < gpus_per_worker:  # type: ignore[no-untyped-call]
        return
    ref = ray.remote(cuda_facts).options(num_cpus=0, num_gpus=gpus_per_worker, max_retries=0).remote()
    try:
        facts = ray.get(ref, timeout=timeout_s)
    except ray.exceptions.GetTimeoutError:
        ray.cancel(ref, force=True)
        return
    if not facts["cuda"]:
        what = (f"--stage1-workers {workers} --stage1-gpus-per-worker {gpus_per_worker:g}: data-parallel "
                f"Stage 1 on GPUs needs NCCL on visible GPUs; a worker was given a GPU" if workers > 1
                else f"--stage1-gpus-per-worker {gpus_per_worker:g}: a Stage-1 task was given a GPU")
        raise NodeDependencyError(_no_cuda(what, facts, "--stage1-gpus-per-worker 0 (CPU workers)"))
