"""A small document model (headings, paragraphs, lists, tables, figures) written as Markdown
and as one self-contained HTML file (figures embedded as base64 PNG).

Text may use `code` spans; everything else is escaped.
"""
import base64
import dataclasses
import html
import os
import re

from ..store import atomic_file


@dataclasses.dataclass
class Heading:
    level: int
    text: str


@dataclasses.dataclass
class Para:
    text: str


@dataclasses.dataclass
class Bullets:
    items: list


@dataclasses.dataclass
class Table:
    header: list
    rows: list
    caption: str = ""


@dataclasses.dataclass
class Image:
    title: str
    caption: str
    png: str          # absolute paths
    svg: str


# -- Markdown ---------------------------------------------------------------------------------

def _md_text(text):
    """Text with `*` escaped outside `code` spans (so file patterns do not turn italic)."""
    parts = re.split(r"(`[^`]+`)", str(text))
    return "".join(p if p.startswith("`") else p.replace("*", "\\*") for p in parts)


def _md_cell(text):
    return _md_text(text).replace("|", "\\|").replace("\n", " ")


def _md_table(t):
    lines = ["| " + " | ".join(_md_cell(h) for h in t.header) + " |",
             "|" + "|".join("---" for _ in t.header) + "|"]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in t.rows]
    if t.caption:
        lines += ["", f"*{_md_text(t.caption)}*"]
    return "\n".join(lines)


def to_markdown(blocks, out_dir):
    """Markdown text; figures are linked relative to `out_dir` (where report.md goes)."""
    parts = []
    for b in blocks:
        if isinstance(b, Heading):
            parts.append("#" * b.level + " " + _md_text(b.text))
        elif isinstance(b, Para):
            parts.append(_md_text(b.text))
        elif isinstance(b, Bullets):
            parts.append("\n".join(f"- {_md_text(item)}" for item in b.items))
        elif isinstance(b, Table):
            parts.append(_md_table(b))
        elif isinstance(b, Image):
            png = os.path.relpath(b.png, out_dir).replace(os.sep, "/")
            svg = os.path.relpath(b.svg, out_dir).replace(os.sep, "/")
            parts.append(f"![{b.title}]({png})\n\n*{_md_text(b.caption)}* ([SVG]({svg}))")
    return "\n\n".join(parts) + "\n"


# -- HTML -------------------------------------------------------------------------------------

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1200px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1 { border-bottom: 2px solid #ddd; padding-bottom: .2em; }
h2 { border-bottom: 1px solid #eee; padding-bottom: .15em; margin-top: 1.8em; }
table { border-collapse: collapse; margin: .8em 0; font-size: 0.86em; }
th, td { border: 1px solid #d0d0d0; padding: .25em .55em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
tr:nth-child(even) td { background: #fafafa; }
figure { margin: 1.2em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption, .caption { font-size: 0.88em; color: #555; }
code { background: #f4f4f4; padding: 0 .25em; border-radius: 3px; }
.table-wrap { overflow-x: auto; }
"""


def _inline(text):
    """Escape text; `code` spans become <code>."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(str(text), quote=False))


def _html_table(t):
    head = "".join(f"<th>{_inline(h)}</th>" for h in t.header)
    body = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>\n" for row in t.rows)
    cap = f'<p class="caption">{_inline(t.caption)}</p>' if t.caption else ""
    return f'<div class="table-wrap"><table><thead><tr>{head}</tr></thead><tbody>\n{body}</tbody></table></div>{cap}'


def to_html(blocks, title):
    """One self-contained HTML page (no external files)."""
    parts, anchors = [], set()
    for b in blocks:
        if isinstance(b, Heading):
            anchor = base = re.sub(r"[^a-z0-9]+", "-", b.text.lower()).strip("-")
            while anchor in anchors:
                anchor = f"{base}-{len(anchors)}"
            anchors.add(anchor)
            parts.append(f'<h{b.level} id="{anchor}">{_inline(b.text)}</h{b.level}>')
        elif isinstance(b, Para):
            parts.append(f"<p>{_inline(b.text)}</p>")
        elif isinstance(b, Bullets):
            parts.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in b.items) + "</ul>")
        elif isinstance(b, Table):
            parts.append(_html_table(b))
        elif isinstance(b, Image):
            with open(b.png, "rb") as f:
                data = base64.b64encode(f.read()).decode("ascii")
            parts.append(f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(b.title)}">'
                         f"<figcaption>{_inline(b.caption)}</figcaption></figure>")
    body = "\n".join(parts)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{html.escape(title)}</title>\n'
            f"<style>{CSS}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n")


def write(path, text):
    """Write `text` to `path` atomically (a reader never sees half a report)."""
    with atomic_file(path) as f:
        f.write(text)
