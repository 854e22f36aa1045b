"""``python -m study.run``: the Ray Tune + Optuna study of MiSLAS's Stage-2 knobs.

    python -m study.run --dataset places_lt --trials 64 --gpus-per-trial 0.5 --storage s3://bucket/studies
    python -m study.run --dataset fashion_mnist_lt --budget smoke --trials 6

Without ``--address`` Ray starts in this process (all local CPUs); with one it joins that
cluster (inside a Ray job, ``RAY_ADDRESS`` does the same). Bad input exits with status 2 and
one line naming the option, file or key, before Ray starts. Ctrl-C and SIGTERM end it with
status 1 and the line to rerun. The parts: study.cli (command
line), study.settings (validated settings, configs built once), study.driver (Tune),
study.journal (Optuna journal), study.summary (what is printed at the end).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from mislas.errors import EXIT_USAGE, UsageError
from study.nodecheck import EXIT_NODE, NodeDependencyError, check_driver
from study.runtime import ClusterError


def main(argv: Sequence[str] | None = None) -> int:
    """Run a study from the command line; return the exit status."""
    try:
        # before anything imports torch (study.cli does): a Python without it, e.g. a job's on a
        # node whose Ray was started from another environment, gets one line, not a traceback
        check_driver()
    except NodeDependencyError as exc:
        print(f"python -m study.run: error: {exc}", file=sys.stderr)
        return EXIT_NODE
    from study.cli import build_parser, validate

    args = build_parser().parse_args(argv)
    try:
        settings = validate(args)
        from study.driver import run_study
        from study.preflight import check_data, check_storage

        check_storage(settings)
        fingerprints: dict[str, str] = {}
        if settings.address is None or "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ:
            # (a driver on a laptop joining a cluster may not see the cluster's data: its trials check it)
            fingerprints = check_data(settings)

        return run_study(settings, fingerprints=fingerprints)
    except (ClusterError, NodeDependencyError) as exc:
        print(f"python -m study.run: error: {exc}", file=sys.stderr)
        return EXIT_NODE
    except UsageError as exc:
        print(f"python -m study.run: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM outside Tune's fit (study.driver.sigterm_as_ctrl_c)
        print("[study] interrupted; rerun the same command (or add --resume) to continue: finished trials and "
              "Stage 1s are kept", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
