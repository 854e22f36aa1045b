"""LaTeX booktabs tables (pandas ``Styler.to_latex``) for the tables marked ``to_tex``."""

from __future__ import annotations

import numpy as np
import pandas as pd

from study.reporting.display import DisplayTable, Document

_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
            "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
_UNICODE = {"±": r"$\pm$", "τ": r"$\tau$", "ε": r"$\varepsilon$", "β": r"$\beta$", "Δ": r"$\Delta$",
            "—": "--", "–": "--", "‖": r"$\|$", "≤": r"$\leq$", "≥": r"$\geq$", "×": r"$\times$", "·": r"$\cdot$",
            "<": r"$<$", ">": r"$>$", "✓": r"$\checkmark$", "✗": r"$\times$", "Σ": r"$\Sigma$", "²": r"$^2$",
            "−": r"$-$"}


WIDE = 8  # tables with more columns are scaled to the line width (needs graphicx)


def tex_escape(text: str) -> str:
    """Escape LaTeX specials and map the report's few non-ASCII symbols to math."""
    out = []
    for ch in text:
        out.append(_SPECIAL.get(ch) or _UNICODE.get(ch) or ch)
    return "".join(out)


def table_tex(t: DisplayTable) -> str:
    r"""One booktabs table; grouped headers become \multicolumn, bold cells \textbf."""
    if t.grouped:
        columns = pd.MultiIndex.from_tuples([(tex_escape(g), tex_escape(n)) for g, n in t.columns])
    else:
        columns = pd.Index([tex_escape(n) for _, n in t.columns])
    frame = pd.DataFrame([[tex_escape(c) for c in row] for row in t.rows], columns=columns)
    marks = pd.DataFrame(np.where(np.array(t.bold, dtype=bool).reshape(frame.shape), "textbf:--rwrap;", ""),
                         columns=columns)
    styler = frame.style.hide(axis="index").apply(lambda _: marks, axis=None)
    caption = tex_escape(t.caption) + (" " + tex_escape(t.note) if t.note else "")
    latex = styler.to_latex(hrules=True, caption=caption, label=f"tab:{t.key}", position_float="centering",
                            multicol_align="c", column_format="l" + "r" * (len(t.columns) - 1))
    if len(t.columns) > WIDE:  # ours beside published does not fit a text column otherwise
        latex = latex.replace("\\begin{tabular}", "\\resizebox{\\linewidth}{!}{%\n\\begin{tabular}")
        latex = latex.replace("\\end{tabular}", "\\end{tabular}}")
    return str(latex)


def render_tex(doc: Document) -> str:
    """All exportable tables, each in its own table float."""
    header = ("% Tables of the MiSLAS study report; needs \\usepackage{booktabs}, \\usepackage{graphicx} and "
              "\\usepackage{amssymb}.\n"
              f"% {tex_escape(doc.title)}\n\n")
    return header + "\n".join(table_tex(t) for t in doc.tables if t.to_tex)
