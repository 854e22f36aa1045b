"""``python -m mislas describe|evaluate ...``: one JSON object on stdout; bad input -> one line on stderr, exit 2.

``describe --check-files`` decodes every listed image; if any is missing or does not decode it
still prints the JSON, then one line on stderr (the first bad images, how many) and exits 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from mislas.errors import EXIT_USAGE, UsageError


class _OneLineParser(argparse.ArgumentParser):
    """argparse, but its errors are one line like every other usage error here."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m mislas`` command line (subcommands)."""
    parser = _OneLineParser(prog="python -m mislas", description="MiSLAS tools.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_OneLineParser)
    d = sub.add_parser("describe", help="counts, Many/Medium/Few splits and missing images of a data set")
    d.add_argument("--dataset", required=True, help="a registered data set, e.g. cifar10_lt, places_lt")
    d.add_argument("--data-root", default=None, help="folder with the data (pickles, IDX files or split lists)")
    d.add_argument("--imb-factor", type=float, default=None, help="β = n_max / n_min (array sets only)")
    d.add_argument("--n-max", type=int, default=None, help="images of the largest class (array sets only)")
    d.add_argument("--check-files", action="store_true",
                   help="open and decode every listed image (as training does) on a thread pool; report the "
                        "missing and undecodable ones, progress on stderr; exit 2 if any")
    d.add_argument("--workers", type=_positive_int, default=None, metavar="N",
                   help=f"threads for --check-files (default: the CPU count, here {os.cpu_count() or 1})")
    d.add_argument("--train-list", default=None, help="train list, absolute or relative to --data-root")
    d.add_argument("--val-list", default=None, help="val list, absolute or relative to --data-root")
    d.add_argument("--test-list", default=None, help="test list, absolute or relative to --data-root")
    e = sub.add_parser(
        "evaluate",
        help="val/test metrics of a checkpoint: ours (stage1.pt, stage2.pt) or the reference implementation's",
    )
    e.add_argument("--checkpoint", required=True, type=Path, help="the checkpoint file")
    e.add_argument("--dataset", required=True, help="a registered data set, e.g. cifar100_lt, places_lt")
    e.add_argument("--arch", default=None, help="backbone of a reference file (default: the data set's)")
    e.add_argument("--data-root", default=None, help="folder with the data set's files")
    e.add_argument("--imb-factor", type=float, default=None, help="β of a reference CIFAR-LT file (default 100)")
    e.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. eval.batch_size=256 (repeatable)")
    e.add_argument("--stage1-checkpoint", type=Path, default=None,
                   help="Stage-1 file of one of our stage2.pt (default: ../stage1/stage1.pt beside it)")
    e.add_argument("--device", default=None, help="auto (default), cpu, cuda, ...")
    e.add_argument("--out", required=True, type=Path, help="output folder for metrics.json")
    return parser


def _describe(args: argparse.Namespace) -> dict[str, object]:
    from mislas.data import describe
    from mislas.data.describe import PROGRESS_EVERY_S

    return describe(
        args.dataset,
        args.data_root,
        imb_factor=args.imb_factor,
        n_max=args.n_max,
        check_files=args.check_files,
        workers=args.workers,
        progress_every_s=PROGRESS_EVERY_S,
        train_list=args.train_list,
        val_list=args.val_list,
        test_list=args.test_list,
    )


def _evaluate(args: argparse.Namespace) -> dict[str, object]:
    from mislas.evaluate import evaluate_checkpoint  # torch and the model code load only for this command

    return evaluate_checkpoint(
        args.checkpoint,
        dataset=args.dataset,
        out=args.out,
        arch=args.arch,
        data_root=args.data_root,
        imb_factor=args.imb_factor,
        overrides=args.overrides,
        stage1_checkpoint=args.stage1_checkpoint,
        device=args.device,
    )


def _describe_failure(result: dict[str, object]) -> str | None:
    from mislas.data.describe import failure_line

    return failure_line(result)


COMMANDS = {"describe": _describe, "evaluate": _evaluate}
FAILURES = {"describe": _describe_failure}
"""Per command: the one line (or ``None``) of a result that is printed but still means exit 2."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run a ``python -m mislas`` subcommand; return its exit status."""
    args = build_parser().parse_args(argv)
    try:
        result = COMMANDS[args.command](args)
    except UsageError as exc:
        message = " ".join(str(exc).split())  # one line, whatever the message held
        print(f"error: {message}", file=sys.stderr)
        return EXIT_USAGE
    print(json.dumps(result), flush=True)
    failure = FAILURES[args.command](result) if args.command in FAILURES else None
    if failure is not None:
        print(f"error: {failure}", file=sys.stderr)
        return EXIT_USAGE
    return 0


if __name__ == "__main__":
    sys.exit(main())
