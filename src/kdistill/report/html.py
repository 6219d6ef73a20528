"""``report.html``: the report's blocks as one self-contained page.

Plots are embedded as base64 ``data:`` URIs and the style sheet is inline, so the file can be
mailed, archived or opened from disk with no server; there is no script and no external URL,
and a Content-Security-Policy forbids the page from fetching anything at all.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

# Only inline styles and data: images may load; everything else (fonts, scripts, any URL) is
# refused by the browser, which makes "works offline" a property of the page, not a hope.
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"

STYLE = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1f2328;
       max-width: 1100px; margin: 2em auto; padding: 0 1.5em; background: #fff; }
h1 { font-size: 1.6em; border-bottom: 2px solid #d0d7de; padding-bottom: .3em; }
h2 { font-size: 1.3em; margin-top: 1.8em; border-bottom: 1px solid #d0d7de; padding-bottom: .2em; }
h3 { font-size: 1.1em; margin-top: 1.4em; }
table { border-collapse: collapse; margin: 1em 0; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #d0d7de; padding: .35em .7em; }
th { background: #f6f8fa; text-align: left; }
td.num { text-align: right; }
tr:nth-child(even) td { background: #fafbfc; }
code { background: #f0f2f4; padding: .1em .3em; border-radius: 3px; font-size: .92em; }
img { max-width: 100%; height: auto; display: block; margin: 1em 0; border: 1px solid #eaeef2; }
li { margin: .3em 0; }
.missing { color: #9a6700; font-style: italic; }
"""

MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".svg": "image/svg+xml"}


def inline(text: str) -> str:
    """Escape ``text`` for HTML; ``code`` spans in backticks become <code>."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(str(text), quote=False))


NUMBER = re.compile(r"^[-+−]?[\d,.]+(e[-+]?\d+)?\s?(%|×|points?|B|kB|MB|GB)?$")


def cell(text) -> str:
    """A table cell; numbers (with their unit) are right-aligned so their digits line up."""
    return (
        f'<td class="num">{inline(text)}</td>'
        if NUMBER.match(str(text))
        else f"<td>{inline(text)}</td>"
    )


def embed_image(path: Path, alt: str) -> str:
    if not path.is_file():
        return f'<p class="missing">(plot {html.escape(path.name)} is missing)</p>'
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    mime = MIME.get(path.suffix.lower(), "application/octet-stream")
    return f'<img alt="{html.escape(alt)}" src="data:{mime};base64,{data}">'


def render_html(blocks: list[tuple], base_dir: str | Path, *, title: str) -> str:
    """The page for ``blocks`` (see ``report.report_blocks``); image paths are relative to
    ``base_dir`` and are read and embedded now."""
    base_dir = Path(base_dir)
    body = []
    for kind, *rest in blocks:
        if kind == "heading":
            level, text = rest
            body.append(f"<h{level}>{inline(text)}</h{level}>")
        elif kind == "paragraph":
            body.append(f"<p>{inline(rest[0])}</p>")
        elif kind == "list":
            body.append("<ul>" + "".join(f"<li>{inline(item)}</li>" for item in rest[0]) + "</ul>")
        elif kind == "table":
            header, rows = rest
            head = "".join(f"<th>{inline(title)}</th>" for title in header)
            lines = "".join(
                "<tr>" + "".join(cell(value) for value in row) + "</tr>" for row in rows
            )
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{lines}</tbody></table>")
        elif kind == "image":
            relative, alt = rest
            body.append(embed_image(base_dir / relative, alt))
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )
