"""What a report page needs to render offline in a browser, checked without one (stdlib parser).

``render_problems(path)`` lists, in words: an ``<img>`` whose ``src`` is neither a non-empty
existing file nor a decodable ``data:`` URI of an image; a table row whose cell count (colspans
included) differs from its header's; an ``id`` used twice; anything fetched from http(s) (a
``src``, a ``<link href>``, a CSS ``url()`` or ``@import``); a tag left open or closed unopened.
An empty list means the page passes.
"""

from __future__ import annotations

import base64
import binascii
import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
        "track", "wbr"}  # fmt: skip
IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF8", b"<svg", b"<?xml", b"RIFF")
EXTERNAL_CSS = re.compile(r"""(url\(\s*['"]?\s*https?:|@import\s+['"]?https?:)""", re.I)


def _image_problem(src: str, base: Path) -> str | None:
    if src.startswith("data:"):
        head, _, payload = src.partition(",")
        if not head.startswith("data:image/") or not payload:
            return f"img data URI is not an image or is empty: {src[:40]!r}"
        try:
            raw = (
                base64.b64decode(payload, validate=True) if ";base64" in head else payload.encode()
            )
        except (binascii.Error, ValueError):
            return f"img data URI does not decode: {src[:40]!r}"
        if not raw.lstrip().startswith(IMAGE_MAGIC):
            return f"img data URI holds no image: {src[:40]!r}"
        return None
    url = urlparse(src)
    if url.scheme in ("http", "https"):
        return None  # reported as an external resource
    if url.scheme not in ("", "file"):
        return f"img src with an unusable scheme: {src!r}"
    path = Path(unquote(url.path))
    path = path if path.is_absolute() else base / path
    if not path.is_file() or path.stat().st_size == 0:
        return f"img src does not resolve to a non-empty file: {src!r}"
    return None


class _Page(HTMLParser):
    def __init__(self, base: Path):
        super().__init__(convert_charrefs=True)
        self.base = base
        self.problems: list[str] = []
        self.open: list[str] = []
        self.ids: set[str] = set()
        self.tables: list[dict] = []  # per open table: header width, current row width, row no
        self.in_style = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag not in VOID:
            self.open.append(tag)
        if "id" in a:
            if a["id"] in self.ids:
                self.problems.append(f"id {a['id']!r} used twice")
            self.ids.add(a["id"])
        for key in ("src", "srcset", "data", "poster"):
            if re.match(r"\s*https?:", a.get(key) or ""):
                self.problems.append(f"<{tag} {key}> loads from the network: {a[key][:60]!r}")
        if tag == "link" and re.match(r"\s*https?:", a.get("href") or ""):
            self.problems.append(f"<link href> loads from the network: {a['href'][:60]!r}")
        if EXTERNAL_CSS.search(a.get("style") or ""):
            self.problems.append(f"<{tag} style> loads from the network")
        if tag == "img":
            problem = _image_problem(a.get("src") or "", self.base)
            if problem:
                self.problems.append(problem)
        if tag == "style":
            self.in_style = True
        if tag == "table":
            self.tables.append({"header": None, "row": None, "rows": 0})
        elif tag == "tr" and self.tables:
            self.tables[-1]["row"] = 0
        elif tag in ("td", "th") and self.tables and self.tables[-1]["row"] is not None:
            self.tables[-1]["row"] += int(a.get("colspan") or 1)

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        if not self.open or self.open[-1] != tag:
            self.problems.append(f"</{tag}> closes {self.open[-1] if self.open else 'nothing'}")
            if tag in self.open:  # recover: drop what was left open inside it
                del self.open[len(self.open) - 1 - self.open[::-1].index(tag) :]
            return
        self.open.pop()
        if tag == "style":
            self.in_style = False
        if tag == "tr" and self.tables:
            t = self.tables[-1]
            t["rows"] += 1
            if t["header"] is None:
                t["header"] = t["row"]
            elif t["row"] != t["header"]:
                self.problems.append(
                    f"table {len(self.tables)} row {t['rows']}: {t['row']} cells, "
                    f"header has {t['header']}"
                )
            t["row"] = None
        elif tag == "table" and self.tables:
            self.tables.pop()

    def handle_data(self, data):
        if self.in_style and EXTERNAL_CSS.search(data):
            self.problems.append("the style sheet loads from the network")

    def close(self):
        super().close()
        if self.open:
            self.problems.append(f"left open at the end: {self.open}")


def render_problems(path: str | Path) -> list[str]:
    """What keeps the HTML page at ``path`` from rendering complete and offline (empty: none)."""
    path = Path(path)
    page = _Page(path.parent)
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    return page.problems
