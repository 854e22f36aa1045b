r"""``python -m study.submit --address http://HEAD:8265 -- <study.run args>``: a study as a Ray job.

Submits ``python -m study.run <args>`` through the Ray Jobs SDK with a runtime_env that
ships this repository (``working_dir``) and, if asked, installs dependencies (``--pip`` /
``--requirements``); prints the job id and the equivalent Ray CLI command, follows the
job's logs and exits 0 when the job succeeded. The printed command runs as it stands, e.g.::

    RAY_AUTH_MODE=token ray job submit --address http://HEAD:8265 \
        --runtime-env-json '{"working_dir": "/path/to/repo", "excludes": [...], "env_vars": {...}}' \
        -- python -m study.run --dataset places_lt --storage s3://bucket/studies

Token authentication stays on: the client sends the cluster's token (``RAY_AUTH_TOKEN``,
``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``; ``--token-file`` sets the path) with
``RAY_AUTH_MODE=token``. Exit status: 0 the job succeeded (or was submitted, with
``--no-wait``), 1 it did not succeed, 2 bad input (one line, before anything is sent),
3 the cluster could not be reached or refused the token (one line, no traceback).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mislas.errors import EXIT_USAGE, UsageError
from study.cli import UsageParser
from study.runtime import EXCLUDES, code_runtime_env, git_commit
from study.storage import is_uri

EXIT_CLUSTER = 3
PROG = "python -m study.submit"
TOKEN_SOURCES = "RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or --token-file, or ~/.ray/auth_token"


class ClusterError(Exception):
    """The Jobs API could not be reached, or refused this client; the message is one line."""


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m study.submit`` command line."""
    p = UsageParser(prog="python -m study.submit", description="Submit a study to a Ray cluster as a Ray job.",
                usage="python -m study.submit --address http://HEAD:8265 [options] -- <study.run args>")
    p.add_argument("--address", default=os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS"),
                   help="the cluster's dashboard/Jobs address, e.g. http://HEAD:8265")
    p.add_argument("--working-dir", default=None,
                   help="code to ship (default: this repository; from an installed package, its packages as py_modules)")
    p.add_argument("--pip", action="append", default=[], metavar="REQ",
                   help="a pip requirement to install for the job (repeatable)")
    p.add_argument("--requirements", default=None, help="a requirements.txt to install for the job")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="environment variable for the job")
    p.add_argument("--submission-id", default=None, help="job id to use (default: Ray picks one)")
    p.add_argument("--token-file", default=None, help="file holding the cluster's auth token")
    p.add_argument("--entrypoint-num-cpus", default=None, type=float, help="CPUs reserved for the driver")
    p.add_argument("--no-wait", action="store_true", help="print the job id and return without following logs")
    return p


def split_argv(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Split the command line at ``--`` into submit's own and study.run's arguments."""
    argv = list(argv)
    if "--" not in argv:
        raise UsageError("the study.run arguments must follow '--', e.g. "
                         "python -m study.submit --address http://HEAD:8265 -- --dataset cifar10_lt")
    i = argv.index("--")
    return argv[:i], argv[i + 1:]


def check_study_args(study_args: list[str]) -> None:
    """Validate the study's command line here, before it reaches the cluster."""
    from study import cli

    if not study_args:
        raise UsageError("no study.run arguments after '--' (at least --dataset)")
    args = cli.build_parser().parse_args(study_args)  # exits 2 on argparse errors
    if args.address:
        raise UsageError("--address belongs before '--' (the job itself joins the cluster it runs on)")
    storage = args.storage
    if not (is_uri(storage) or os.path.isabs(storage)):
        raise UsageError(f"--storage: a job runs in a temporary copy of the code, so give an absolute path on "
                         f"shared storage (NFS) or an s3:// URI, got {storage!r}")
    cli.validate(args, check_paths=False)


def runtime_env(args: argparse.Namespace) -> dict[str, Any]:
    """The job's runtime env: the code, the environment variables and any pip installs."""
    env_vars = {"RAY_CHDIR_TO_TRIAL_DIR": "0"}
    commit = git_commit()  # the shipped working_dir has no .git: hand the commit over
    if commit:
        env_vars["MISLAS_GIT_COMMIT"] = commit
    for item in args.env:
        if "=" not in item:
            raise UsageError(f"--env: expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        env_vars[k] = v
    if args.working_dir is None:
        code = code_runtime_env()
    elif Path(args.working_dir).is_dir():
        code = {"working_dir": str(Path(args.working_dir).resolve()), "excludes": EXCLUDES}
    else:
        raise UsageError(f"--working-dir: not a folder: {args.working_dir}")
    env: dict[str, Any] = {**code, "env_vars": env_vars}
    pip = list(args.pip)
    if args.requirements:
        req = Path(args.requirements)
        if not req.is_file():
            raise UsageError(f"--requirements: no such file: {req}")
        pip += [ln.strip() for ln in req.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    if pip:
        env["pip"] = pip
    return env


def check_token_file(path: str | None) -> str | None:
    """Check ``--token-file`` and return it as an absolute path.

    ``--token-file`` as an absolute path; a missing or empty file is a usage error here,
    rather than Ray's multi-line one later.
    """
    if path is None:
        return None
    token = Path(path).expanduser()
    try:
        if not token.read_text().strip():
            raise UsageError(f"--token-file: the file is empty: {token}")
    except OSError as exc:
        raise UsageError(f"--token-file: cannot read {token} ({exc.strerror or exc})") from None
    return str(token.resolve())


def equivalent_command(address: str, env: dict[str, Any], entrypoint: str, *, token_file: str | None = None,
                       entrypoint_num_cpus: float | None = None) -> str:
    """The plain ``ray job submit`` command that submits the same job (runs as printed)."""
    prefix = "RAY_AUTH_MODE=token "
    if token_file:
        prefix += f"RAY_AUTH_TOKEN_PATH={shlex.quote(token_file)} "
    cmd = f"{prefix}ray job submit --address {shlex.quote(address)} --runtime-env-json {shlex.quote(json.dumps(env))}"
    if entrypoint_num_cpus is not None:
        cmd += f" --entrypoint-num-cpus {entrypoint_num_cpus:g}"
    return f"{cmd} -- {entrypoint}"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def cluster_error(exc: BaseException, address: str) -> ClusterError:
    """One line for what went wrong between this client and the cluster's Jobs API."""
    from ray.exceptions import AuthenticationError

    if isinstance(exc, AuthenticationError):
        # Ray's message: a first line (which check failed), then several lines of advice.
        first = next((ln.strip() for ln in str(getattr(exc, "message", exc)).splitlines() if ln.strip()), "")
        mode = os.environ.get("RAY_AUTH_MODE", "")
        if first.startswith("Authentication required"):  # HTTP 401: no token sent
            hint = (f"RAY_AUTH_MODE is {mode!r}: set RAY_AUTH_MODE=token" if mode.lower() != "token"
                    else f"give the cluster's token ({TOKEN_SOURCES})")
            return ClusterError(f"authentication failed: {address} answered HTTP 401 "
                                f"({first.split(':', 1)[-1].strip()}); {hint}")
        if first.startswith("Authentication failed"):  # HTTP 403: a token, not the cluster's
            return ClusterError(f"authentication failed: {address} answered HTTP 403 "
                                f"({first.split(':', 1)[-1].strip()}); the token sent is not this cluster's "
                                f"({TOKEN_SOURCES})")
        # raised before any request: no token on this machine, or an unreadable token file
        reason = _one_line(first).split(". ")[0].rstrip(".")
        if "couldn't find" in reason or not reason:
            reason = "none found"
        return ClusterError(f"authentication failed: no usable Ray auth token on this machine ({reason}); "
                            f"give the cluster's token ({TOKEN_SOURCES})")
    if isinstance(exc, ConnectionError) or "connect" in type(exc).__name__.lower():
        return ClusterError(f"cannot reach the Ray Jobs API at {address} ({type(exc).__name__}); is the cluster up "
                            f"and its dashboard port reachable (e.g. forwarded by `ray dashboard CLUSTER.yaml`)?")
    text = _one_line(str(exc))
    text = text if len(text) <= 300 else text[:297] + "..."
    return ClusterError(f"the Ray Jobs API at {address} failed: {type(exc).__name__}: {text}")


def _cluster_errors() -> tuple[type[BaseException], ...]:
    """What the Jobs SDK raises for network, HTTP and authentication failures."""
    from ray.exceptions import AuthenticationError

    errors: list[type[BaseException]] = [AuthenticationError, OSError, RuntimeError]  # OSError: requests' errors too
    try:
        import aiohttp  # the log stream (ray[default] brings it)

        errors.append(aiohttp.ClientError)
    except ImportError:
        pass
    return tuple(errors)


async def _follow(client: Any, job_id: str) -> None:
    async for lines in client.tail_job_logs(job_id):
        print(lines, end="", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Submit the study as a Ray job and follow it; return the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if "--" not in argv and ("-h" in argv or "--help" in argv):
            build_parser().parse_args(argv)  # prints help and exits 0
        own, study_args = split_argv(argv)
        args = build_parser().parse_args(own)
        if not args.address:
            raise UsageError("--address: the cluster's Jobs address is required, e.g. http://HEAD:8265")
        token_file = check_token_file(args.token_file)
        check_study_args(study_args)
        env = runtime_env(args)
    except UsageError as exc:
        print(f"{PROG}: error: {_one_line(str(exc))}", file=sys.stderr)
        return EXIT_USAGE

    os.environ.setdefault("RAY_AUTH_MODE", "token")  # keep token auth on
    if token_file:
        os.environ["RAY_AUTH_TOKEN_PATH"] = token_file
    entrypoint = "python -m study.run " + shlex.join(study_args)
    try:
        return _submit(args, env, entrypoint, token_file)
    except ClusterError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_CLUSTER


def _submit(args: argparse.Namespace, env: dict[str, Any], entrypoint: str, token_file: str | None) -> int:
    from ray.job_submission import JobStatus, JobSubmissionClient

    errors = _cluster_errors()
    try:
        client = JobSubmissionClient(args.address)
        job_id = client.submit_job(entrypoint=entrypoint, runtime_env=env, submission_id=args.submission_id,
                                   entrypoint_num_cpus=args.entrypoint_num_cpus,
                                   metadata={"study": "mislas", "submitted_by": "study.submit"})
    except errors as exc:
        raise cluster_error(exc, args.address) from None
    print(f"submitted job {job_id} to {args.address}: {entrypoint}", flush=True)
    print("equivalent: " + equivalent_command(args.address, env, entrypoint, token_file=token_file,
                                              entrypoint_num_cpus=args.entrypoint_num_cpus), flush=True)
    if args.no_wait:
        return 0
    try:
        asyncio.run(_follow(client, job_id))
        status = client.get_job_status(job_id)
        while not status.is_terminal():  # the log stream can end a moment before the status does
            time.sleep(0.5)
            status = client.get_job_status(job_id)
    except KeyboardInterrupt:
        print(f"\nstopped following; the job keeps running (ray job stop {job_id} to stop it)", file=sys.stderr)
        return 130
    except errors as exc:
        err = cluster_error(exc, args.address)
        raise ClusterError(f"{err} (job {job_id} was submitted; `ray job status {job_id}` tells how it went)") from None
    print(f"job {job_id}: {status.value}", flush=True)
    return 0 if status == JobStatus.SUCCEEDED else 1


if __name__ == "__main__":
    sys.exit(main())
