"""A small report document rendered twice: Markdown and self-contained HTML.

A report is a list of blocks (headings, paragraphs, tables, figures, ...). The
Markdown version links its figures; the HTML version inlines them as base64, so
``report.html`` is one file that can be mailed or attached to an issue. Inline
markup in text is limited to ``**bold**`` and ```code```.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Heading:
    text: str
    level: int = 2


@dataclass
class Paragraph:
    text: str


@dataclass
class Verdict:
    """The answer, first and large: a title and a few lines under it."""

    title: str
    lines: Sequence[str] = ()


@dataclass
class Card:
    label: str
    value: str
    note: str = ""
    tone: str = ""  #: "good", "bad" or "" (neutral)


@dataclass
class Cards:
    cards: Sequence[Card]


@dataclass
class Table:
    header: Sequence[str]
    rows: Sequence[Sequence[str]]
    highlight: int | None = None  #: index of a row to emphasise (the winner)
    code_columns: Sequence[int] = ()


@dataclass
class Figure:
    path: str  #: relative to the report's folder
    caption: str = ""


@dataclass
class Code:
    text: str
    language: str = ""


@dataclass
class Bullets:
    items: Sequence[str]


Block = Heading | Paragraph | Verdict | Cards | Table | Figure | Code | Bullets


@dataclass
class Document:
    title: str
    blocks: list[Block] = field(default_factory=list)

    def add(self, *blocks: Block) -> None:
        self.blocks.extend(blocks)

    def to_markdown(self) -> str:
        parts = [f"# {self.title}"]
        for block in self.blocks:
            parts.append(_markdown(block))
        return "\n\n".join(parts) + "\n"

    def to_html(self, folder: str | Path) -> str:
        """The document as one HTML page; figures are read from ``folder`` and inlined."""
        body = "\n".join(_html(block, Path(folder)) for block in self.blocks)
        return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
                f"<title>{html.escape(self.title)}</title><style>{CSS}</style></head>\n"
                f"<body><main><h1>{html.escape(self.title)}</h1>\n{body}\n</main></body></html>\n")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _markdown(block: Block) -> str:
    if isinstance(block, Heading):
        return f"{'#' * block.level} {block.text}"
    if isinstance(block, Paragraph):
        return block.text
    if isinstance(block, Verdict):
        return "\n".join([f"> **{block.title}**", *(f">\n> {line}" for line in block.lines)])
    if isinstance(block, Cards):
        return "\n".join(f"- **{c.label}**: {c.value}" + (f" ({c.note})" if c.note else "")
                         for c in block.cards)
    if isinstance(block, Table):
        rows = [[f"`{_cell(v)}`" if i in block.code_columns and v else _cell(v)
                 for i, v in enumerate(row)] for row in block.rows]
        if block.highlight is not None:
            rows[block.highlight] = [f"**{v}**" if v else v for v in rows[block.highlight]]
        lines = ["| " + " | ".join(block.header) + " |",
                 "|" + "|".join("---" for _ in block.header) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)
    if isinstance(block, Figure):
        return f"![{block.caption}]({block.path})"
    if isinstance(block, Code):
        return f"```{block.language}\n{block.text.rstrip()}\n```"
    if isinstance(block, Bullets):
        return "\n".join(f"- {item}" for item in block.items)
    raise TypeError(f"unknown block {block!r}")


def inline(text: str) -> str:
    """Escaped HTML of ``text`` with ``**bold**`` and ```code``` turned into tags."""
    escaped = html.escape(text)
    escaped = re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped)
    return re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", escaped)


def _html(block: Block, folder: Path) -> str:
    if isinstance(block, Heading):
        level = min(max(block.level, 2), 6)
        return f"<h{level}>{inline(block.text)}</h{level}>"
    if isinstance(block, Paragraph):
        return f"<p>{inline(block.text)}</p>"
    if isinstance(block, Verdict):
        lines = "".join(f"<p>{inline(line)}</p>" for line in block.lines)
        return f"<section class=\"verdict\"><h2>{inline(block.title)}</h2>{lines}</section>"
    if isinstance(block, Cards):
        cards = "".join(
            f"<div class=\"card {c.tone}\"><div class=\"label\">{inline(c.label)}</div>"
            f"<div class=\"value\">{inline(c.value)}</div><div class=\"note\">{inline(c.note)}</div></div>"
            for c in block.cards)
        return f"<div class=\"cards\">{cards}</div>"
    if isinstance(block, Table):
        head = "".join(f"<th>{inline(h)}</th>" for h in block.header)
        rows = []
        for r, row in enumerate(block.rows):
            cells = "".join(
                f"<td><code>{html.escape(v)}</code></td>" if i in block.code_columns and v
                else f"<td>{inline(v)}</td>" for i, v in enumerate(row))
            winner = ' class="winner"' if r == block.highlight else ""
            rows.append(f"<tr{winner}>{cells}</tr>")
        return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    if isinstance(block, Figure):
        data = base64.b64encode((folder / block.path).read_bytes()).decode("ascii")
        caption = f"<figcaption>{inline(block.caption)}</figcaption>" if block.caption else ""
        return (f"<figure><img alt=\"{html.escape(block.caption)}\" "
                f"src=\"data:image/png;base64,{data}\">{caption}</figure>")
    if isinstance(block, Code):
        return f"<pre><code>{html.escape(block.text.rstrip())}</code></pre>"
    if isinstance(block, Bullets):
        return "<ul>" + "".join(f"<li>{inline(item)}</li>" for item in block.items) + "</ul>"
    raise TypeError(f"unknown block {block!r}")


CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#222;background:#f6f7f9;margin:0}
main{max-width:980px;margin:0 auto;padding:24px 28px 60px;background:#fff;min-height:100vh}
h1{font-size:1.7em;margin:0.2em 0 0.6em}h2{margin-top:1.6em;border-bottom:1px solid #e3e5e8;padding-bottom:4px}
.verdict{background:linear-gradient(135deg,#e8f1fb,#f3f8ee);border-left:6px solid #1f77b4;border-radius:8px;padding:12px 20px;margin:8px 0 18px}
.verdict h2{border:0;margin:6px 0 4px;font-size:1.45em}.verdict p{margin:4px 0;font-size:1.05em}
code{font-size:0.9em;background:#f3f4f6;border-radius:3px;padding:0 3px;overflow-wrap:anywhere}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin:12px 0}
.card{flex:1 1 150px;border:1px solid #e3e5e8;border-radius:8px;padding:10px 14px;background:#fafbfc}
.card .label{font-size:0.85em;color:#666;text-transform:uppercase;letter-spacing:0.04em}
.card .value{font-size:1.6em;font-weight:600;margin:2px 0}.card .note{font-size:0.85em;color:#555}
.card.good{border-color:#2ca02c;background:#f0f9ef}.card.good .note{color:#1e7b1e}
.card.bad{border-color:#d62728;background:#fdf1f1}.card.bad .note{color:#a31d1d}
table{border-collapse:collapse;width:100%;font-size:0.92em;margin:10px 0}
th,td{border-bottom:1px solid #e3e5e8;padding:6px 8px;text-align:left;vertical-align:top}
th{background:#f3f4f6}tr.winner td{background:#f0f9ef;font-weight:600}
td code{font-size:0.88em;word-break:break-all}
figure{margin:14px 0;text-align:center}figure img{max-width:100%;border:1px solid #eee;border-radius:6px}
figcaption{font-size:0.88em;color:#555;margin-top:4px}
pre{background:#f3f4f6;padding:10px 14px;border-radius:6px;overflow-x:auto;font-size:0.9em}
"""
