"""A tiny document model rendered twice: Markdown (``report.md``) and self-contained HTML.

Reports are built as a list of blocks (headings, paragraphs, tables, figures) so that the two
formats always say the same thing. In HTML every figure is embedded as a ``data:`` URI and the
style sheet is inline: the file opens anywhere with no network and no neighbouring files.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from pathlib import Path

from fedprostate.report.plots import png_to_data_uri

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
.table-wrap{overflow-x:auto;margin:0.8em 0}
table{border-collapse:collapse;font-size:0.9em}
caption{text-align:left;font-size:0.9em;color:#444;padding-bottom:0.3em}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f0f0f0}th.num{text-align:right}td.num{text-align:right;white-space:nowrap}
.ci{display:block;font-size:0.85em;color:#555}
figure{display:inline-block;margin:0.5em 1em 0.5em 0;vertical-align:top}
figcaption{font-size:0.85em;color:#555;max-width:600px}
img{max-width:100%}
.reproduced{color:#0a7a2f;font-weight:bold}.not-reproduced{color:#b00020;font-weight:bold}
.inconclusive{color:#a66b00;font-weight:bold}
.note{background:#fff8e1;border-left:4px solid #f0b400;padding:0.4em 0.8em}
code{background:#f4f4f4;padding:0 3px}
"""

VERDICT_CLASS = {
    "reproduced": "reproduced",
    "not reproduced": "not-reproduced",
    "inconclusive": "inconclusive",
}


@dataclass
class Doc:
    title: str
    blocks: list[tuple] = field(default_factory=list)

    def heading(self, text: str, level: int = 2) -> None:
        self.blocks.append(("h", level, text))

    def para(self, text: str, note: bool = False) -> None:
        self.blocks.append(("p", text, note))

    def bullets(self, items: list[str]) -> None:
        self.blocks.append(("ul", list(items)))

    def table(self, header: list[str], rows: list[list], caption: str = "") -> None:
        self.blocks.append(("table", list(header), [list(r) for r in rows], caption))

    def figure(self, path: str | Path, caption: str) -> None:
        self.blocks.append(("img", Path(path), caption))

    # ---- rendering ----------------------------------------------------------------------
    def to_markdown(self, base: Path) -> str:
        """Markdown; figures are linked relative to ``base`` (the folder report.md is in)."""
        out = [f"# {self.title}", ""]
        for block in self.blocks:
            kind = block[0]
            if kind == "h":
                out += ["#" * block[1] + " " + block[2], ""]
            elif kind == "p":
                out += [("> " if block[2] else "") + block[1], ""]
            elif kind == "ul":
                out += [f"- {item}" for item in block[1]] + [""]
            elif kind == "table":
                _, header, rows, caption = block
                if caption:
                    out += [f"*{caption}*", ""]
                out.append("| " + " | ".join(header) + " |")
                out.append("|" + "|".join("---" for _ in header) + "|")
                out += ["| " + " | ".join(_cell(c) for c in r) + " |" for r in rows]
                out.append("")
            elif kind == "img":
                rel = _relative(block[1], base)
                out += [f"![{block[2]}]({rel})", "", f"*{block[2]}*", ""]
        return "\n".join(out)

    def to_html(self) -> str:
        body = [f"<h1>{html.escape(self.title)}</h1>"]
        for block in self.blocks:
            kind = block[0]
            if kind == "h":
                body.append(f"<h{block[1]}>{html.escape(block[2])}</h{block[1]}>")
            elif kind == "p":
                cls = ' class="note"' if block[2] else ""
                body.append(f"<p{cls}>{_inline(block[1])}</p>")
            elif kind == "ul":
                body.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in block[1]) + "</ul>")
            elif kind == "table":
                _, header, rows, caption = block
                cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
                numeric = [  # a column of mostly numbers: its header is right-aligned too
                    sum(_is_number(r[j]) for r in rows if j < len(r)) * 2 > len(rows)
                    for j in range(len(header))
                ]
                head = "".join(
                    ('<th class="num">' if n else "<th>") + f"{html.escape(str(h))}</th>"
                    for h, n in zip(header, numeric, strict=True)
                )
                trs = "".join("<tr>" + "".join(_html_cell(c) for c in r) + "</tr>" for r in rows)
                body.append(
                    f'<div class="table-wrap"><table>{cap}<thead><tr>{head}</tr></thead>'
                    f"<tbody>{trs}</tbody></table></div>"
                )
            elif kind == "img":
                uri = png_to_data_uri(block[1])
                cap = html.escape(block[2])
                body.append(
                    f'<figure><img src="{uri}" alt="{cap}"><figcaption>{cap}</figcaption></figure>'
                )
        return (
            "<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
            f"<title>{html.escape(self.title)}</title><style>{_CSS}</style></head>"
            f"<body>{''.join(body)}</body></html>\n"
        )

    def write(self, folder: str | Path) -> tuple[Path, Path]:
        """Write ``report.md`` and ``report.html`` into ``folder``; returns both paths."""
        folder = Path(folder)
        md, page = folder / "report.md", folder / "report.html"
        md.write_text(self.to_markdown(folder), encoding="utf-8")
        page.write_text(self.to_html(), encoding="utf-8")
        return md, page


def _relative(path: Path, base: Path) -> str:
    try:
        return str(path.resolve().relative_to(base.resolve()))
    except ValueError:
        return str(path)


def _cell(value) -> str:
    return str(value).replace("|", "\\|")


def _inline(text: str) -> str:
    """Escape, then render `code` spans (the only inline markup the reports use). A line may
    break after ";" (long arm names such as ``siteA=fp32;siteB=int8`` would widen a table)."""
    parts = html.escape(text).replace(";", ";<wbr>").split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


# A number, a dash for none, or "estimate [low, high]": right-aligned, never broken mid-number.
_NUMBER = r"[-−+<>~]?\d[\d.,]*(?:e[-+]?\d+)?\s?%?"
_NUMERIC = re.compile(rf"^(?:–|-|{_NUMBER}|lr {_NUMBER})$")
_WITH_CI = re.compile(rf"^({_NUMBER}) (\[{_NUMBER}, {_NUMBER}\])$")


def _is_number(value) -> bool:
    text = str(value)
    return bool(_WITH_CI.match(text) or _NUMERIC.match(text))


def _html_cell(value) -> str:
    text = str(value)
    cls = VERDICT_CLASS.get(text)
    if cls:
        return f'<td class="{cls}">{html.escape(text)}</td>'
    if m := _WITH_CI.match(text):  # the estimate, and its interval on a line of its own
        est, ci = (html.escape(g) for g in m.groups())
        return f'<td class="num">{est}<span class="ci">{ci}</span></td>'
    if _NUMERIC.match(text):
        return f'<td class="num">{html.escape(text)}</td>'
    return f"<td>{_inline(text)}</td>"
