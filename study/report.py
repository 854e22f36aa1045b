"""``python -m study.report <study dir> [--out DIR] [--formats html,md,tex]``: the study's report.

Reads only the study's Parquet tables, study.json and optuna.log (see README.md (Results schema)).
Exit status 2 when the directory holds no study or a format is unknown.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from study.reporting import FORMATS, NoStudyError, ReportResult, UnknownFormatError, build_report

__all__ = ["ReportResult", "build_report", "main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m study.report", description=__doc__.splitlines()[0])
    parser.add_argument("study_dir", type=Path, help="the study's folder (<storage>/<name>, holding trials.parquet)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: <study dir>/report)")
    parser.add_argument("--formats", default=",".join(FORMATS),
                        help=f"comma-separated subset of {','.join(FORMATS)} (default: all)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    args = _parser().parse_args(argv)
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    out = args.out if args.out is not None else args.study_dir / "report"
    try:
        result = build_report(args.study_dir, out, formats)
    except (NoStudyError, UnknownFormatError) as exc:
        print(f"study.report: {exc}", file=sys.stderr)
        return 2
    for path in result.files:
        if path.suffix != ".png":
            print(path)
    figures = sum(1 for p in result.files if p.suffix == ".png")
    if figures:
        print(f"{figures} figures under {result.out_dir / 'figures'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
