"""``python -m study.report <study> [--out DIR] [--formats html,md,tex]``: the study's report.

``<study>`` is the study's folder (``<storage>/<name>``) or a storage URI, as ``python -m
study.run --storage`` takes them (``s3://bucket/studies/NAME``; ``gs://``, ``mock://`` through
pyarrow's file systems). Reads only the study's Parquet tables (the union tables, or ``parts/``
while they are missing or older than the parts), study.json and optuna.log (see
docs/results-schema.md); writes nothing to the study. Exit status 2, with one line, when the
location cannot be opened, holds no study or a damaged one (a union table that does not read
back, or is not ours, with no part to read instead), or a format is unknown; 1, with one line,
when it cannot be read or the output folder cannot be written ("cannot write").
"""

from __future__ import annotations

import argparse
import posixpath
import sys
from collections.abc import Sequence
from pathlib import Path

from study.reporting import FORMATS, NoStudyError, ReportResult, UnknownFormatError
from study.reporting.build import build_report
from study.storage import StorageError, is_uri, write_problem

__all__ = ["ReportResult", "build_report", "main"]


def default_out(location: str) -> Path:
    """``<study>/report`` for a folder; ``./report-<name>`` for a URI (the report is written locally)."""
    if is_uri(location):
        return Path(f"report-{posixpath.basename(location.rstrip('/')) or 'study'}")
    return Path(location) / "report"


def _below(filename: object, folder: Path) -> bool:
    """Whether an OSError's file is the output folder or inside it (a write failure, not a read)."""
    if not isinstance(filename, (str, Path)):
        return False
    path, top = Path(filename).resolve(), folder.resolve()
    return path == top or top in path.parents


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m study.report", description=__doc__.splitlines()[0].replace("``", ""))
    parser.add_argument("study_dir", help="the study's folder or storage URI (<storage>/<name>, as study.run's "
                                          "--storage and --name), holding trials.parquet or parts/")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default: <study dir>/report; for a URI ./report-<name>)")
    parser.add_argument("--formats", default=",".join(FORMATS),
                        help=f"comma-separated subset of {','.join(FORMATS)} (default: all)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    args = _parser().parse_args(argv)
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    out = args.out if args.out is not None else default_out(args.study_dir)
    problem = write_problem(out)  # before the study is read: nothing is computed in vain
    if problem is not None:
        print(f"study.report: cannot write the report in {out}: {problem} (--out: a folder this user can write)",
              file=sys.stderr)
        return 1
    try:
        result = build_report(args.study_dir, out, formats)
    except (NoStudyError, UnknownFormatError, StorageError) as exc:
        print(f"study.report: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file that vanished, a store that stopped answering, a full disk
        if _below(exc.filename, out):
            print(f"study.report: cannot write {exc.filename}: {exc.strerror or type(exc).__name__}", file=sys.stderr)
        else:
            print(f"study.report: cannot read {args.study_dir}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    for path in result.files:
        if path.suffix != ".png":
            print(path)
    figures = sum(1 for p in result.files if p.suffix == ".png")
    if figures:
        print(f"{figures} figures under {result.out_dir / 'figures'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
