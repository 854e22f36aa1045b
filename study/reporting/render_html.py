"""Self-contained HTML: one file, figures embedded as base64 PNG data URIs, no scripts, no fetches."""

from __future__ import annotations

import base64

import jinja2

from study.reporting.display import Document, FigureBlock, Heading, Para, TableBlock

TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{{ doc.title }}</title>
<style>
body { font-family: "DejaVu Sans", Helvetica, Arial, sans-serif; margin: 0 auto; max-width: 1320px;
       padding: 1.2em 2em 4em; color: #222; line-height: 1.4; }
h1 { font-size: 1.7em; margin-bottom: .2em; }
h2 { border-bottom: 2px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
h3 { margin-top: 1.6em; color: #333; }
.summary { background: #f4f6f8; border: 1px solid #dde3e8; padding: .6em 1em; }
.summary li { margin: .1em 0; }
nav ul { columns: 3; font-size: .9em; }
.note { background: #fff8e1; border-left: 4px solid #f0b429; padding: .4em .8em; }
table { border-collapse: collapse; margin: .6em 0 .3em; font-size: .86em; }
caption { caption-side: top; text-align: left; padding-bottom: .4em; color: #333; max-width: 1280px; }
th, td { padding: .25em .6em; border-bottom: 1px solid #e3e3e3; text-align: right; white-space: nowrap; }
th { background: #f0f0f0; }
td:first-child, th:first-child { text-align: left; }
td.txt { text-align: left; white-space: normal; max-width: 46em; overflow-wrap: anywhere; }
th[colspan] { text-align: center; }
th.group-published, td.published { background: #f3f0fa; }
th.group-ours { background: #e8f1fb; }
td.published { color: #5a4a7a; font-style: italic; }
td b { color: #000; }
.tnote { font-size: .82em; color: #555; max-width: 1280px; margin-bottom: 1em; }
figure { margin: 1em 0 1.6em; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: .85em; color: #444; max-width: 1100px; }
</style>
</head>
<body>
<h1>{{ doc.title }}</h1>
<ul class="summary">{% for line in doc.summary %}<li>{{ line }}</li>{% endfor %}</ul>
<nav><ul>{% for b in toc %}<li><a href="#{{ b.anchor }}">{{ b.text }}</a></li>{% endfor %}</ul></nav>
{% for b in blocks %}
{%- if b.kind == "heading" %}
<h{{ b.level }} id="{{ b.anchor }}">{{ b.text }}</h{{ b.level }}>
{%- elif b.kind == "para" %}
<p{% if b.note %} class="note"{% endif %}>{{ b.text }}</p>
{%- elif b.kind == "figure" %}
<figure><img src="data:image/png;base64,{{ b.data }}" alt="{{ b.caption }}"><figcaption>{{ b.caption }}</figcaption></figure>
{%- elif b.kind == "table" %}
<table id="{{ b.t.key }}">
<caption>{{ b.t.caption }}</caption>
<thead>
{%- if b.t.grouped %}
<tr>{% for group, span in b.t.header_groups() %}<th colspan="{{ span }}" class="group-{{ group.split(' ')[0] }}">{{ group }}</th>{% endfor %}</tr>
{%- endif %}
<tr>{% for group, name in b.t.columns %}<th class="group-{{ group.split(' ')[0] }}">{{ name }}</th>{% endfor %}</tr>
</thead>
<tbody>
{%- for row in b.rows %}
<tr>{% for cell, bold, cls in row %}<td{% if cls %} class="{{ cls }}"{% endif %}>{% if bold %}<b>{{ cell }}</b>{% else %}{{ cell }}{% endif %}</td>{% endfor %}</tr>
{%- endfor %}
</tbody>
</table>
{%- if b.t.note %}<p class="tnote">{{ b.t.note }}</p>{% endif %}
{%- endif %}
{%- endfor %}
</body>
</html>
"""


def _numeric(cell: str) -> bool:
    """Numbers (and "mean ± std", em dashes) are right-aligned; text is left-aligned."""
    head = cell.split(" ± ")[0].replace("—", "0").replace("-", "", 1)
    return head.replace(".", "", 1).isdigit()


def _block_view(block: object) -> dict[str, object]:
    if isinstance(block, Heading):
        return {"kind": "heading", "level": block.level, "text": block.text, "anchor": block.anchor}
    if isinstance(block, Para):
        return {"kind": "para", "text": block.text, "note": block.note}
    if isinstance(block, FigureBlock):
        return {"kind": "figure", "data": base64.b64encode(block.art.png).decode("ascii"), "caption": block.art.caption}
    assert isinstance(block, TableBlock)
    t = block.table
    published = ["published" if group == "published" else "" for group, _ in t.columns]
    rows = [[(c, b, " ".join(filter(None, [p, "" if _numeric(c) else "txt"])))
             for c, b, p in zip(row, bold, published)] for row, bold in zip(t.rows, t.bold)]
    return {"kind": "table", "t": t, "rows": rows}


def render_html(doc: Document) -> str:
    """The report as one HTML page (autoescaped; images inline)."""
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    toc = [b for b in doc.blocks if isinstance(b, Heading) and b.level == 2]
    return env.from_string(TEMPLATE).render(doc=doc, toc=toc, blocks=[_block_view(b) for b in doc.blocks])
