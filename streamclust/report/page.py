"""The report's HTML: one self-contained page, inline CSS, no scripts, no external resources.

Every piece of text that comes from the run (member names, reasons, paths, settings)
goes through :func:`esc`; the only raw markup is this module's own.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field

__all__ = ["esc", "Picture", "Section", "table", "details", "collapsible", "render_page"]


def esc(value) -> str:
    """HTML-escape ``value`` (quotes included, so it is safe in attributes too)."""
    return html.escape(str(value), quote=True)


@dataclass
class Picture:
    """A PNG file beside ``index.html``."""

    src: str
    alt: str
    width: int
    height: int
    caption: str = ""
    pixelated: bool = False

    def html(self) -> str:
        cls = ' class="px"' if self.pixelated else ""
        img = (f'<img src="{esc(self.src)}" alt="{esc(self.alt)}" width="{int(self.width)}" '
               f'height="{int(self.height)}"{cls}>')
        cap = f"<figcaption>{esc(self.caption)}</figcaption>" if self.caption else ""
        return f"<figure>{img}{cap}</figure>"


@dataclass
class Section:
    """A titled part of the page; ``body`` is markup built with :func:`esc` / :func:`table`."""

    id: str
    title: str
    body: list[str] = field(default_factory=list)

    def add(self, markup: str) -> "Section":
        self.body.append(markup)
        return self

    def text(self, text: str) -> "Section":
        return self.add(f"<p>{esc(text)}</p>")

    def note(self, text: str) -> "Section":
        return self.add(f'<p class="note">{esc(text)}</p>')

    def picture(self, pic: Picture) -> "Section":
        return self.add(pic.html())

    def html(self) -> str:
        return (f'<section id="{esc(self.id)}">\n<h2>{esc(self.title)}</h2>\n'
                + "\n".join(self.body) + "\n</section>")


def table(header, rows, *, numeric: set[int] | None = None, caption: str | None = None) -> str:
    """An HTML table; every cell is escaped. ``numeric``: column positions to right-align."""
    numeric = numeric or set()

    def cell(tag, i, v):
        cls = ' class="num"' if i in numeric else ""
        return f"<{tag}{cls}>{esc(v)}</{tag}>"

    out = ["<table>"]
    if caption:
        out.append(f"<caption>{esc(caption)}</caption>")
    out.append("<thead><tr>" + "".join(cell("th", i, h) for i, h in enumerate(header)) + "</tr></thead>")
    out.append("<tbody>")
    for row in rows:
        out.append("<tr>" + "".join(cell("td", i, v) for i, v in enumerate(row)) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


def details(summary: str, items) -> str:
    """A collapsed ``<details>`` list of (escaped) items."""
    lis = "".join(f"<li>{esc(i)}</li>" for i in items)
    return collapsible(summary, f"<ol>{lis}</ol>")


def collapsible(summary: str, markup: str) -> str:
    """A collapsed ``<details>`` around ``markup`` (already escaped markup of this module)."""
    return f"<details><summary>{esc(summary)}</summary>{markup}</details>"


CSS = """
:root { color-scheme: light; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
       margin: 0 auto; max-width: 1280px; padding: 0 1.2rem 3rem; color: #222; background: #fff; }
header { border-bottom: 2px solid #4c72b0; margin-bottom: 1rem; }
h1 { font-size: 1.6rem; margin: 1.2rem 0 .3rem; word-break: break-all; }
h2 { font-size: 1.25rem; margin-top: 2.2rem; border-bottom: 1px solid #ddd; padding-bottom: .2rem; }
h3 { font-size: 1.02rem; margin: 1.3rem 0 .4rem; }
nav ul { list-style: none; padding: 0; margin: .4rem 0 .8rem; display: flex; flex-wrap: wrap; gap: .3rem 1rem; }
nav a, a { color: #2a5db0; }
figure { margin: .6rem 0 1rem; }
figure img { max-width: 100%; height: auto; display: block; border: 1px solid #eee; }
img.px { image-rendering: pixelated; }
figcaption { color: #555; font-size: .88rem; margin-top: .2rem; }
table { border-collapse: collapse; margin: .5rem 0 1rem; font-size: .92rem; }
caption { text-align: left; font-weight: 600; padding-bottom: .2rem; }
th, td { border: 1px solid #ddd; padding: .22rem .6rem; text-align: left; vertical-align: top; }
th { background: #f3f5f9; }
td { word-break: break-word; max-width: 38rem; }
.num { text-align: right; font-variant-numeric: tabular-nums; }
.note { color: #6b5300; background: #fff8e1; border-left: 3px solid #f0b400; padding: .35rem .7rem; }
.meta { color: #555; font-size: .9rem; }
details { margin: .2rem 0 1rem; font-size: .9rem; }
details ol { margin: .3rem 0; word-break: break-all; }
code { background: #f3f3f3; padding: 0 .2rem; }
"""


def render_page(title: str, subtitle: str, sections: list[Section], footer: str) -> str:
    nav = "".join(f'<li><a href="#{esc(s.id)}">{esc(s.title)}</a></li>' for s in sections)
    body = "\n".join(s.html() for s in sections)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)}</title>
<link rel="icon" href="data:,">
<style>{CSS}</style>
</head>
<body>
<header>
<h1>{esc(title)}</h1>
<p class="meta">{esc(subtitle)}</p>
<nav><ul>{nav}</ul></nav>
</header>
<main>
{body}
</main>
<footer><p class="meta">{esc(footer)}</p></footer>
</body>
</html>
"""
