"""``python -m study.submit --address http://HEAD:8265 -- <study.run args>``: a study as a Ray job.

Submits ``python -m study.run <args>`` through the Ray Jobs SDK with a runtime_env that
ships this repository (``working_dir``) and, if asked, installs dependencies (``--pip`` /
``--requirements``); prints the job id, follows the job's logs and exits 0 when the job
succeeded. The equivalent with the CLI::

    ray job submit --address http://HEAD:8265 --working-dir . \\
        --runtime-env-json '{"env_vars": {"RAY_CHDIR_TO_TRIAL_DIR": "0"}}' \\
        -- python -m study.run --dataset places_lt --storage s3://bucket/studies

Token authentication stays on: the client sends the cluster's token (``RAY_AUTH_TOKEN``,
``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``; ``--token-file`` sets the path) with
``RAY_AUTH_MODE=token``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mislas.errors import EXIT_USAGE, UsageError
from study.cli import UsageParser
from study.runtime import EXCLUDES, REPO_ROOT, git_commit
from study.storage import is_uri


def build_parser() -> argparse.ArgumentParser:
    p = UsageParser(prog="python -m study.submit", description="Submit a study to a Ray cluster as a Ray job.",
                usage="python -m study.submit --address http://HEAD:8265 [options] -- <study.run args>")
    p.add_argument("--address", default=os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS"),
                   help="the cluster's dashboard/Jobs address, e.g. http://HEAD:8265")
    p.add_argument("--working-dir", default=str(REPO_ROOT), help="code to ship (default: this repository)")
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
    env_vars = {"RAY_CHDIR_TO_TRIAL_DIR": "0"}
    commit = git_commit()  # the shipped working_dir has no .git: hand the commit over
    if commit:
        env_vars["MISLAS_GIT_COMMIT"] = commit
    for item in args.env:
        if "=" not in item:
            raise UsageError(f"--env: expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        env_vars[k] = v
    if not Path(args.working_dir).is_dir():
        raise UsageError(f"--working-dir: not a folder: {args.working_dir}")
    env: dict[str, Any] = {"working_dir": str(Path(args.working_dir).resolve()), "excludes": EXCLUDES,
                           "env_vars": env_vars}
    pip = list(args.pip)
    if args.requirements:
        req = Path(args.requirements)
        if not req.is_file():
            raise UsageError(f"--requirements: no such file: {req}")
        pip += [ln.strip() for ln in req.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    if pip:
        env["pip"] = pip
    return env


async def _follow(client: Any, job_id: str) -> None:
    async for lines in client.tail_job_logs(job_id):
        print(lines, end="", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if "--" not in argv and ("-h" in argv or "--help" in argv):
            build_parser().parse_args(argv)  # prints help and exits 0
        own, study_args = split_argv(argv)
        args = build_parser().parse_args(own)
        if not args.address:
            raise UsageError("--address: the cluster's Jobs address is required, e.g. http://HEAD:8265")
        check_study_args(study_args)
        env = runtime_env(args)
    except UsageError as exc:
        print(f"python -m study.submit: error: {exc}", file=sys.stderr)
        return EXIT_USAGE

    os.environ.setdefault("RAY_AUTH_MODE", "token")  # keep token auth on
    if args.token_file:
        os.environ["RAY_AUTH_TOKEN_PATH"] = str(Path(args.token_file).resolve())
    from ray.job_submission import JobStatus, JobSubmissionClient

    entrypoint = "python -m study.run " + shlex.join(study_args)
    client = JobSubmissionClient(args.address)
    job_id = client.submit_job(entrypoint=entrypoint, runtime_env=env, submission_id=args.submission_id,
                               entrypoint_num_cpus=args.entrypoint_num_cpus,
                               metadata={"study": "mislas", "submitted_by": "study.submit"})
    print(f"submitted job {job_id} to {args.address}: {entrypoint}", flush=True)
    print(f"(equivalent: ray job submit --address {args.address} --working-dir {env['working_dir']} -- {entrypoint})",
          flush=True)
    if args.no_wait:
        return 0
    try:
        asyncio.run(_follow(client, job_id))
    except KeyboardInterrupt:
        print(f"\nstopped following; the job keeps running (ray job stop {job_id} to stop it)", file=sys.stderr)
        return 130
    status = client.get_job_status(job_id)
    while not status.is_terminal():  # the log stream can end a moment before the status does
        time.sleep(0.5)
        status = client.get_job_status(job_id)
    print(f"job {job_id}: {status.value}", flush=True)
    return 0 if status == JobStatus.SUCCEEDED else 1


if __name__ == "__main__":
    sys.exit(main())
