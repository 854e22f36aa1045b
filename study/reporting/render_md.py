"""Markdown (GitHub pipe tables) with figures as PNG files beside it under ``figures/``."""

from __future__ import annotations

from study.reporting.display import DisplayTable, Document, FigureBlock, Heading, Para, TableBlock

FIGURES_DIR = "figures"


def _cell(text: str, bold: bool) -> str:
    text = text.replace("|", "\\|")
    return f"**{text}**" if bold and text != "—" else text


def table_md(t: DisplayTable) -> str:
    """One table: caption in italics, headers flattened to "group name", bold as **…**."""
    headers = [f"{group} {name}".strip() if group else name for group, name in t.columns]
    lines = [f"*{t.caption}*", "", "| " + " | ".join(h.replace("|", "\\|") for h in headers) + " |",
             "|" + "|".join(":---" if j == 0 else "---:" for j in range(len(headers))) + "|"]
    for row, bold in zip(t.rows, t.bold):
        lines.append("| " + " | ".join(_cell(c, b) for c, b in zip(row, bold)) + " |")
    if t.note:
        lines += ["", t.note]
    return "\n".join(lines)


def render_markdown(doc: Document) -> str:
    """The report as Markdown; figure links are relative (``figures/<name>.png``)."""
    parts = [f"# {doc.title}", "\n".join(f"- {line}" for line in doc.summary)]
    for block in doc.blocks:
        if isinstance(block, Heading):
            parts.append(f"{'#' * block.level} {block.text}")
        elif isinstance(block, Para):
            parts.append(f"> **Note:** {block.text}" if block.note else block.text)
        elif isinstance(block, FigureBlock):
            parts.append(f"![{block.art.caption}]({FIGURES_DIR}/{block.art.name}.png)\n\n*{block.art.caption}*")
        elif isinstance(block, TableBlock):
            parts.append(table_md(block.table))
    return "\n\n".join(parts) + "\n"
