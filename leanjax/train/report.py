"""A run's report as `report.md` (figures as PNG files beside it) and a self-contained `report.html` (the same
figures embedded as base64 PNGs): titled paragraphs, tables and figures that an experiment measured.

Rendering only: the caller gives every string, table cell and PNG; nothing here computes a figure.
"""

from __future__ import annotations

import base64
import html
import os
from collections.abc import Mapping, Sequence

_STYLE = ("body{font-family:sans-serif;max-width:70em;margin:2em auto;padding:0 1em;line-height:1.4}"
          "table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:.3em .6em;"
          "text-align:left;vertical-align:top}th{background:#f3f3f3}figure{display:inline-block;margin:1em}"
          "img{max-width:100%}")
# Marks how many figures decoded (naturalWidth > 0): what a headless-browser check reads back.
_SCRIPT = ("window.addEventListener('load',function(){var i=document.images,n=0;"
           "for(var k=0;k<i.length;k++){if(i[k].complete&&i[k].naturalWidth>0){n++;}}"
           "document.body.setAttribute('data-figures-loaded',n+'/'+i.length);});")


def md_table(rows: Sequence[Sequence[str]]) -> str:
    """A markdown table: the first row is the header."""
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return "\n".join(lines)


def html_table(rows: Sequence[Sequence[str]]) -> str:
    """An HTML table: the first row is the header; text escaped, `code` spans kept as in the markdown."""
    def cell(text, tag):
        parts = html.escape(text).split("`")
        return f"<{tag}>" + "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts)) + f"</{tag}>"

    head = "".join(cell(c, "th") for c in rows[0])
    body = "".join("<tr>" + "".join(cell(c, "td") for c in r) + "</tr>" for r in rows[1:])
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def write_report(workdir: str, *, title: str, paragraphs: Sequence[str],
                 tables: Sequence[tuple[str, Sequence[Sequence[str]]]],
                 figures: Mapping[str, tuple[str, bytes]]) -> dict[str, str]:
    """Writes `report.md`, `report_figures/<name>.png` and `report.html` into `workdir`.

    Args:
      workdir: the run's directory.
      title: the report's heading.
      paragraphs: text under the title, in order (markdown `code` spans are kept as they are).
      tables: `(section heading, rows)` in order; each table's first row is its header.
      figures: name -> `(caption, PNG bytes)`, in order, under a "Figures" heading.

    Returns:
      `{"md": path, "html": path, "figures": directory}`.
    """
    fig_dir = os.path.join(workdir, "report_figures")
    os.makedirs(fig_dir, exist_ok=True)
    for name, (_, png) in figures.items():
        with open(os.path.join(fig_dir, f"{name}.png"), "wb") as f:
            f.write(png)

    md = [f"# {title}", ""]
    for text in paragraphs:
        md += [text, ""]
    for name, rows in tables:
        md += [f"## {name}", "", md_table(rows), ""]
    md += ["## Figures", ""] + [f"![{caption}](report_figures/{name}.png)" for name, (caption, _) in figures.items()]
    md_path = os.path.join(workdir, "report.md")
    with open(md_path, "w") as f:
        f.write("\n".join(md) + "\n")

    body = [f"<h1>{html.escape(title)}</h1>"] + [f"<p>{html.escape(text)}</p>" for text in paragraphs]
    for name, rows in tables:
        body += [f"<h2>{html.escape(name)}</h2>", html_table(rows)]
    body.append("<h2>Figures</h2>")
    for name, (caption, png) in figures.items():
        data = base64.b64encode(png).decode()
        body.append(f'<figure><img id="fig-{name}" alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
                    f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body>{''.join(body)}<script>{_SCRIPT}</script></body></html>")
    html_path = os.path.join(workdir, "report.html")
    with open(html_path, "w") as f:
        f.write(page)
    return {"md": md_path, "html": html_path, "figures": fig_dir}
