"""The format-neutral document the renderers walk: headings, paragraphs, tables, figures.

Tables are already formatted to strings here (one place decides decimals, ± and em dashes),
with a parallel mask of bold cells, so HTML, Markdown and LaTeX show the same text.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd


@dataclass(frozen=True)
class DisplayTable:
    """Formatted cells; ``columns`` are (group, name) pairs, group "" for ungrouped columns."""

    key: str
    caption: str
    columns: tuple[tuple[str, str], ...]
    rows: tuple[tuple[str, ...], ...]
    bold: tuple[tuple[bool, ...], ...]
    note: str = ""
    to_tex: bool = False

    def header_groups(self) -> list[tuple[str, int]]:
        """Consecutive column groups with their spans (for a two-row header)."""
        spans: list[tuple[str, int]] = []
        for group, _ in self.columns:
            if spans and spans[-1][0] == group:
                spans[-1] = (group, spans[-1][1] + 1)
            else:
                spans.append((group, 1))
        return spans

    @property
    def grouped(self) -> bool:
        """Whether any column has a group (a two-row header)."""
        return any(group for group, _ in self.columns)

    def cell(self, label: str, column: tuple[str, str]) -> str:
        """The text in the row whose first cell is ``label`` (used by tests and callers)."""
        j = self.columns.index(column)
        for row in self.rows:
            if row[0] == label:
                return row[j]
        raise KeyError(label)


def table_from_frame(key: str, caption: str, frame: pd.DataFrame, *, note: str = "", to_tex: bool = False,
                     index: bool = True) -> DisplayTable:
    """A plain (not bolded) table from a DataFrame of already-formatted or simple values."""
    shown = frame.reset_index() if index else frame
    columns = tuple(("", str(c)) for c in shown.columns)
    rows = tuple(tuple("—" if v is None or (isinstance(v, float) and v != v) else str(v) for v in r)
                 for r in shown.itertuples(index=False))
    bold = tuple(tuple(False for _ in r) for r in rows)
    return DisplayTable(key, caption, columns, rows, bold, note, to_tex)


@dataclass(frozen=True)
class FigureArt:
    """A drawn figure: file name (for Markdown), PNG bytes (embedded in HTML) and caption."""

    name: str
    png: bytes
    caption: str


@dataclass(frozen=True)
class Heading:
    """A section heading of the report."""

    level: int
    text: str
    anchor: str


@dataclass(frozen=True)
class Para:
    """A paragraph of the report; ``note`` marks an aside."""

    text: str
    note: bool = False  # rendered as an aside (missing data, things not computed)


@dataclass(frozen=True)
class TableBlock:
    """A table in the report."""

    table: DisplayTable


@dataclass(frozen=True)
class FigureBlock:
    """A figure in the report."""

    art: FigureArt


Block = Heading | Para | TableBlock | FigureBlock


@dataclass(frozen=True)
class Document:
    """The whole report, in order."""

    title: str
    summary: tuple[str, ...]
    blocks: tuple[Block, ...] = field(default_factory=tuple)

    @property
    def figures(self) -> tuple[FigureArt, ...]:
        """The report's figures, in order."""
        return tuple(b.art for b in self.blocks if isinstance(b, FigureBlock))

    @property
    def tables(self) -> tuple[DisplayTable, ...]:
        """The report's tables, in order."""
        return tuple(b.table for b in self.blocks if isinstance(b, TableBlock))
