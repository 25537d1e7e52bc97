"""MkDocs hook: tables escape a ``|`` inside code as ``\\|`` for GitHub's table parser (the generated key table does);
Python-Markdown keeps that backslash inside code, so it is dropped from the rendered code here."""

from __future__ import annotations

import re

_CODE = re.compile(r"<code>([^<]*)</code>")


def on_page_content(html: str, **_: object) -> str:
    return _CODE.sub(lambda m: "<code>" + m.group(1).replace("\\|", "|") + "</code>", html)
