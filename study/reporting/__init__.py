"""The study's ablation report: Parquet results → typed tables → HTML, Markdown, LaTeX.

Imports pandas, pyarrow, matplotlib, jinja2 and optuna only (never torch, ray or mislas), so a
report can be made wherever the results folder is copied.
"""

from __future__ import annotations

from study.reporting.build import FORMATS, ReportResult, UnknownFormatError, build_report
from study.reporting.load import NoStudyError

__all__ = ["FORMATS", "NoStudyError", "ReportResult", "UnknownFormatError", "build_report"]
