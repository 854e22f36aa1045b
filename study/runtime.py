"""Where the study's code runs: the repository it ships, its commit, and starting Ray.

Shared by the driver (study.driver) and study.submit, so neither imports the other.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
# gitignore-style patterns of what not to ship to a cluster; anchored with "/" so that e.g.
# mislas/data/ is not excluded.
EXCLUDES = ["/.venv/", "/.git/", "/results/", "/reports/", "/runs/", "/data/", "__pycache__/", "/.pytest_cache/",
            "/.mypy_cache/", "/.ruff_cache/", "*.pt", "*.parquet"]


def is_checkout() -> bool:
    """Whether this code runs from the repository (not from an installed wheel in site-packages)."""
    return (REPO_ROOT / "pyproject.toml").is_file() and (REPO_ROOT / "search_spaces").is_dir()


def code_runtime_env() -> dict[str, Any]:
    """How a cluster gets this code: the repository as ``working_dir`` from a checkout; from an
    installed wheel, its three packages as ``py_modules`` (never the whole site-packages)."""
    if is_checkout():
        return {"working_dir": str(REPO_ROOT), "excludes": EXCLUDES}
    import mislas
    import search_spaces
    import study

    modules = [str(Path(m.__file__ or "").resolve().parent) for m in (mislas, study, search_spaces)]
    return {"py_modules": modules, "excludes": EXCLUDES}


def git_commit() -> str | None:
    """The code's commit: from git here, or MISLAS_GIT_COMMIT (study.submit sets it, as a job's
    working_dir has no .git)."""
    if os.environ.get("MISLAS_GIT_COMMIT"):
        return os.environ["MISLAS_GIT_COMMIT"]
    try:
        out = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def init_ray(address: str | None, num_cpus: int | None) -> tuple[bool, float]:
    """Start Ray in-process or join a cluster; returns (started here, seconds)."""
    import ray

    t0 = time.perf_counter()
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
    # A bounded number of checkpoints per trial makes Tune snapshot its state at every checkpoint, which
    # is what a resume wants; its "may become a bottleneck" warning is noise at this scale.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    target = address or os.environ.get("RAY_ADDRESS")
    if ray.is_initialized():
        return False, 0.0
    if target:
        kwargs: dict[str, Any] = {"address": target}
        if address and "RAY_JOB_CONFIG_JSON_ENV_VAR" not in os.environ:
            # A driver outside a Ray job ships this code to the cluster's workers (inside a
            # job, the job's runtime_env already did).
            kwargs["runtime_env"] = {**code_runtime_env(), "env_vars": {"RAY_CHDIR_TO_TRIAL_DIR": "0"}}
        ray.init(**kwargs)
        return False, time.perf_counter() - t0
    # In-process: workers inherit this environment, so they import study/ and mislas/ from here.
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)
    ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=False, configure_logging=True,
             logging_level=logging.WARNING)
    return True, time.perf_counter() - t0
