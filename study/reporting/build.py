"""Build a report: load the study, compute the tables, draw, and write the requested formats."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from study.reporting.compute import ReportTables, compute_tables
from study.reporting.display import Document
from study.reporting.document import build_document
from study.reporting.load import load_study
from study.reporting.render_html import render_html
from study.reporting.render_md import FIGURES_DIR, render_markdown
from study.reporting.render_tex import render_tex

FORMATS = ("html", "md", "tex")


class UnknownFormatError(ValueError):
    """A requested output format is not one of :data:`FORMATS`."""


@dataclass(frozen=True)
class ReportResult:
    """What a build wrote, and the tables behind it (for tests and callers)."""

    out_dir: Path
    files: tuple[Path, ...]
    tables: ReportTables
    document: Document


def check_formats(formats: Sequence[str]) -> tuple[str, ...]:
    """The formats, validated; an unknown one raises naming it and the known ones."""
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise UnknownFormatError(f"unknown format {', '.join(map(repr, unknown))} (known: {', '.join(FORMATS)})")
    if not formats:
        raise UnknownFormatError(f"no format given (known: {', '.join(FORMATS)})")
    return tuple(dict.fromkeys(formats))


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def build_report(study_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str],
                 formats: Sequence[str] = FORMATS) -> ReportResult:
    """Build the report of a study and write it in the requested formats.

    Make the report of the study in ``study_dir`` (a folder or a storage URI, kept a string so
    that ``s3://b/k`` is not made a path) under the local folder ``out_dir``.

    Raises :class:`study.reporting.load.NoStudyError` when ``study_dir`` has no trials.parquet and
    :class:`UnknownFormatError` for a format not in :data:`FORMATS` (before anything is written).
    """
    wanted = check_formats(formats)
    tables = compute_tables(load_study(study_dir))
    document = build_document(tables)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    if "html" in wanted:
        files.append(_write(out_dir / "report.html", render_html(document)))
    if "md" in wanted:
        figures = out_dir / FIGURES_DIR
        figures.mkdir(exist_ok=True)
        for art in document.figures:
            path = figures / f"{art.name}.png"
            path.write_bytes(art.png)
            files.append(path)
        files.append(_write(out_dir / "report.md", render_markdown(document)))
    if "tex" in wanted:
        files.append(_write(out_dir / "tables.tex", render_tex(document)))
    return ReportResult(out_dir, tuple(files), tables, document)
