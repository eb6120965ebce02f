"""CSV cells that a spreadsheet cannot run: formula-injection escaping for every CSV we write.

A cell that starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return is read as a
formula by Excel / LibreOffice / Google Sheets (``=cmd|' /C calc'!A0``). Such text cells are
written with a leading apostrophe (the OWASP "CSV injection" recommendation), which spreadsheets
display as plain text. Numbers (``-1.5``, ``-3e-4``) are left alone so numeric columns stay
numeric. Identifiers never need it (they are validated on read); reasons and paths may.
"""

from __future__ import annotations

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def safe_cell(value):
    """``value`` unchanged unless it is text a spreadsheet would run as a formula."""
    if isinstance(value, str) and value.startswith(FORMULA_START) and not _is_number(value):
        return "'" + value
    return value


def safe_row(row: dict) -> dict:
    return {k: safe_cell(v) for k, v in row.items()}
