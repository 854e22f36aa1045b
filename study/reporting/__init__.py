"""The study's ablation report: Parquet results → typed tables → HTML, Markdown, LaTeX.

Imports pandas, pyarrow, matplotlib, jinja2, optuna and the torch-free :mod:`mislas.spec` (the
names and rules it shares with the library), never torch or Ray, so a report can be made
wherever the results folder is copied (``tests/study/reporting/test_outputs.py`` checks it). The names below are imported on
first use: the study's driver uses :mod:`study.reporting.ablations` (its summary's Pareto
front) with the ``[study]`` extra alone, which has no matplotlib or jinja2.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from study.reporting.build import FORMATS, ReportResult, UnknownFormatError, build_report
    from study.reporting.load import NoStudyError

__all__ = ["FORMATS", "NoStudyError", "ReportResult", "UnknownFormatError", "build_report"]
_HOMES = {"NoStudyError": "study.reporting.load"}


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES.get(name, "study.reporting.build")), name)
