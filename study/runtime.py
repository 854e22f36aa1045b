"""Where the study's code runs: the repository it ships, its commit, and starting Ray.

Shared by the driver (study.driver) and study.submit, so neither imports the other.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
DISTRIBUTION = "mislas-study"
PACKAGES = ("mislas", "study", "search_spaces")  # what the wheel installs (pyproject's packages.find)
# gitignore-style patterns of what not to ship from a checkout (``working_dir``); anchored with "/"
# at the repository root, so that e.g. /data/ (a data folder) goes and mislas/data/ stays.
EXCLUDES = ["/.venv/", "/.git/", "/results/", "/reports/", "/runs/", "/data/", "__pycache__/", "/.pytest_cache/",
            "/.mypy_cache/", "/.ruff_cache/", "*.pt", "*.parquet"]
# Ray matches ``excludes`` relative to *each* ``py_modules`` root: a repository-anchored pattern such
# as "/data/" there drops mislas/data/. An install ships its packages less only what Python and
# anything else left beside the wheel's files (:func:`installed_excludes`).
BYTECODE = ["__pycache__/", "*.pyc"]


def is_checkout() -> bool:
    """Whether this code runs from the repository (not from an installed wheel in site-packages)."""
    return (REPO_ROOT / "pyproject.toml").is_file() and (REPO_ROOT / "search_spaces").is_dir()


def package_roots() -> list[Path]:
    """The folders of the three installed packages (each a ``py_modules`` entry)."""
    import importlib

    return [Path(importlib.import_module(name).__file__ or "").resolve().parent for name in PACKAGES]


def _escape(rel: str) -> str:
    """A path as a literal gitwildmatch pattern (anchored at the module root)."""
    return "/" + "".join("\\" + c if c in "[]*?!#\\ " else c for c in rel)


def installed_excludes(roots: list[Path]) -> list[str]:
    """Runtime-env excludes that ship exactly a distribution's installed files.

    Patterns that leave exactly the files the distribution's RECORD lists under ``roots``
    (bytecode aside): files a user or a tool put into site-packages beside them stay here.
    Without the distribution's metadata (the packages copied onto a path by hand), only bytecode
    is left out.
    """
    from importlib import metadata

    try:
        dist = metadata.distribution(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return list(BYTECODE)
    recorded = {Path(str(dist.locate_file(f))).resolve() for f in dist.files or []}
    strays = set()
    for root in roots:
        if not any(p.is_relative_to(root) for p in recorded):  # another copy than the recorded one
            return list(BYTECODE)
        for path in root.rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc" and path not in recorded:
                strays.add(_escape(path.relative_to(root).as_posix()))
    return [*BYTECODE, *sorted(strays)]


def code_runtime_env() -> dict[str, Any]:
    """The runtime env that ships this code to a cluster.

    How a cluster gets this code: the repository as ``working_dir`` from a checkout; from an
    installed wheel, its three packages as ``py_modules`` (never the whole site-packages), each
    shipping exactly the files the wheel installed.
    """
    if is_checkout():
        return {"working_dir": str(REPO_ROOT), "excludes": EXCLUDES}
    roots = package_roots()
    return {"py_modules": [str(r) for r in roots], "excludes": installed_excludes(roots)}


def git_commit() -> str | None:
    """The commit of the code that runs.

    The code's commit: from git here, or MISLAS_GIT_COMMIT (study.submit sets it, as a job's
    working_dir has no .git).
    """
    if os.environ.get("MISLAS_GIT_COMMIT"):
        return os.environ["MISLAS_GIT_COMMIT"]
    try:
        out = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


class ClusterError(Exception):
    """The cluster could not be joined (unreachable, or refused this client's token); one line."""


TOKEN_SOURCES = "RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token, with RAY_AUTH_MODE=token"


def join_error(exc: BaseException, address: str, logged: str = "") -> ClusterError:
    """Say in one line why joining the cluster failed and what to do.

    One line for a failed ``ray.init(address=...)``: Ray's first line and what to do.
    ``logged``: what Ray's core printed meanwhile (a wrong token shows only there, as
    "InvalidAuthToken"; the exception says "Failed to connect").
    """
    from ray.exceptions import AuthenticationError

    first = next((ln.strip() for ln in str(getattr(exc, "message", exc)).splitlines() if ln.strip()), "")
    first = first.split(". ")[0].rstrip(".")
    first = first if len(first) <= 200 else first[:197] + "..."
    text = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    refused = "InvalidAuthToken" in logged or "Unauthenticated" in logged
    if isinstance(exc, AuthenticationError) or refused:
        why = "the cluster refused this client's token" if refused else text
        return ClusterError(f"cannot join the Ray cluster at {address}: authentication failed ({why}); give the "
                            f"cluster's token ({TOKEN_SOURCES}); `ray get-auth-token` on the head prints it")
    return ClusterError(f"cannot join the Ray cluster at {address} ({text}); is the cluster up and its GCS port "
                        f"reachable from here?")


@contextlib.contextmanager
def _captured_stderr() -> Iterator[list[str]]:
    """Capture what Ray's C++ core writes to stderr meanwhile.

    File descriptor 2 into a temporary file meanwhile, its text in the yielded list after:
    Ray's core logs each refused attempt to join (about 20 of them) there, from C++, which no
    Python logging setting silences.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    text: list[str] = []
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield text
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            text.append(tmp.read().decode(errors="replace"))


def join_cluster(address: str | None) -> float | None:
    """Join the cluster the driver is pointed at, or return None to start Ray here.

    Join the cluster the driver is pointed at (``--address`` or ``RAY_ADDRESS``), before the
    study writes anything to its storage; None when Ray is to start in this process. A refusal
    (no or wrong token, nothing listening) raises ClusterError. Token authentication stays on
    (``RAY_AUTH_MODE=token`` unless set otherwise), as study.submit keeps it. What Ray prints
    while joining is held back and shown only when the join succeeds.
    """
    target = address or os.environ.get("RAY_ADDRESS")
    if not target:
        return None
    if "RAY_JOB_CONFIG_JSON_ENV_VAR" not in os.environ:  # (a job's driver has its cluster's settings)
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    failure: BaseException | None = None
    joined = 0.0
    with _captured_stderr() as captured:
        try:
            joined = init_ray(address, None)[1]
        except Exception as exc:  # Ray raises ConnectionError, AuthenticationError, RuntimeError, ...
            failure = exc
    logged = "".join(captured)
    if failure is not None:
        raise join_error(failure, target, logged) from None
    sys.stderr.write(logged)
    return joined


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
        # (Ray's INFO "Connecting to existing Ray cluster" line would precede a refusal's one line)
        kwargs: dict[str, Any] = {"address": target, "logging_level": logging.WARNING}
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
