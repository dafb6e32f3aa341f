"""Reports as standalone HTML pages: the same Markdown people read in the Prefect UI, as one file a
browser opens with no network (plots inline as ``data:`` images, styles in the page).

Raw HTML in the Markdown is shown as text, never run: report text quotes file names and sources
that come from outside.
"""

from __future__ import annotations

import base64
import html
import mimetypes
import re

from markdown_it import MarkdownIt

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem;
       color: #1d1d1f; line-height: 1.45; }
table { border-collapse: collapse; margin: .8rem 0; }
th, td { border: 1px solid #ccd; padding: .25rem .6rem; text-align: left; vertical-align: top; }
th { background: #f1f2f6; }
img { max-width: 100%; height: auto; margin: .5rem 0; display: block; }
code { background: #f4f4f7; padding: 0 .2rem; }
blockquote { border-left: 4px solid #c0392b; margin-left: 0; padding-left: 1rem; }
"""

_RENDERER = MarkdownIt("commonmark", {"html": False}).enable("table")
# an image whose address is neither a data: URI nor absolute: relative to nothing once rendered
_LINKED_IMAGE = re.compile(r"!\[[^\]]*\]\((?!data:image/)([^)\s]+)")


def markdown_to_html(markdown: str, title: str) -> str:
    """A complete HTML page for ``markdown`` with ``title`` (escaped) as its title."""
    body = _RENDERER.render(markdown)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n"
        f"<body>\n{body}</body>\n</html>\n"
    )


def linked_images(markdown: str) -> list[str]:
    """The image addresses in ``markdown`` that are not inline ``data:`` images (a report that
    shows them needs something else to be at that address)."""
    return _LINKED_IMAGE.findall(markdown)


def data_uri(name: str, data: bytes) -> str:
    """``data:<type>;base64,...`` for a file's bytes, typed by its name (a PNG plot, ...)."""
    kind = mimetypes.guess_type(name)[0] or "application/octet-stream"
    return f"data:{kind};base64,{base64.b64encode(data).decode('ascii')}"
