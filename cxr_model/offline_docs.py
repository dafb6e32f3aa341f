"""Data Docs that render with no internet: the CSS and JavaScript GX loads from CDNs, served locally.

Great Expectations writes pages whose ``<script>`` and ``<link>`` tags name Bootstrap, jQuery,
bootstrap-table and the rest on CDNs. :func:`serve_assets_locally` copies the project's copies of
those files (``cxr_model/static/datadocs``, see its README for versions and licenses) into
``<docs>/static/vendor/`` and points every page at them by relative path, so the docs open the
same from disk, from the report server or from a downloaded copy.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

VENDORED = Path(__file__).parent / "static" / "datadocs"
VENDOR_DIR = Path("static") / "vendor"  # inside the Data Docs folder

# the URL GX 1.x writes → our copy, relative to VENDORED
ASSETS = {
    "https://maxcdn.bootstrapcdn.com/bootstrap/4.3.1/css/bootstrap.min.css": (
        "bootstrap/css/bootstrap.min.css"
    ),
    "https://stackpath.bootstrapcdn.com/bootstrap/4.3.1/js/bootstrap.min.js": (
        "bootstrap/js/bootstrap.min.js"
    ),
    "https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.css": (
        "bootstrap-table/bootstrap-table.min.css"
    ),
    "https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.js": (
        "bootstrap-table/bootstrap-table.min.js"
    ),
    "https://unpkg.com/bootstrap-table@1.19.1/dist/extensions/filter-control/"
    "bootstrap-table-filter-control.min.js": (
        "bootstrap-table/extensions/filter-control/bootstrap-table-filter-control.min.js"
    ),
    "https://unpkg.com/bootstrap-table@1.19.0/dist/extensions/filter-control/"
    "bootstrap-table-filter-control.css": (
        "bootstrap-table/extensions/filter-control/bootstrap-table-filter-control.min.css"
    ),
    "https://unpkg.com/bootstrap-table@1.19.0/dist/extensions/filter-control/"
    "bootstrap-table-filter-control.min.css": (
        "bootstrap-table/extensions/filter-control/bootstrap-table-filter-control.min.css"
    ),
    "https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/css/"
    "bootstrap-datepicker.min.css": "bootstrap-datepicker/css/bootstrap-datepicker.min.css",
    "https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/js/"
    "bootstrap-datepicker.min.js": "bootstrap-datepicker/js/bootstrap-datepicker.min.js",
    "https://cdn.jsdelivr.net/npm/@forevolve/bootstrap-dark@1.1.0/dist/css/"
    "bootstrap-prefers-dark.css": "bootstrap-dark/css/bootstrap-prefers-dark.min.css",
    "https://cdnjs.cloudflare.com/ajax/libs/font-awesome/6.6.0/css/all.min.css": (
        "fontawesome/css/all.min.css"
    ),
    "https://code.jquery.com/jquery-3.7.1.min.js": "jquery/jquery.min.js",
    "https://cdnjs.cloudflare.com/ajax/libs/popper.js/1.12.9/umd/popper.min.js": (
        "popper/umd/popper.min.js"
    ),
    "https://cdn.jsdelivr.net/npm/vega@5": "vega/vega.min.js",
    "https://cdn.jsdelivr.net/npm/vega-lite@5": "vega-lite/vega-lite.min.js",
    "https://cdn.jsdelivr.net/npm/vega-embed@6": "vega-embed/vega-embed.min.js",
}

# GX's logo, fetched from its bucket with the page's date and the context's id in the query;
# GX ships the same logo with the docs (static/images)
_GX_LOGO = re.compile(r"https://great-expectations-web-assets\.s3\.[\w.-]+/[^\"'\s)]*")
LOCAL_LOGO = "images/logo-long.png"  # under the docs' static/ folder
# a <script>, <link> or <img> tag, and the address it loads
_TAG = re.compile(r"<(?:script|link|img)\b[^>]*>", re.IGNORECASE)
_CSS_URL = re.compile(r"""url\(\s*["']?((?:https?:)?//[^"')]*)""", re.IGNORECASE)
_ADDRESS = re.compile(r"""\b(src|href)\s*=\s*(["'])(.*?)\2""", re.IGNORECASE | re.DOTALL)
# a CDN's integrity hash and CORS mode mean nothing for a local copy, and crossorigin would make
# a page opened from disk refuse its own file
_CDN_ONLY = re.compile(r"""\s(?:integrity|crossorigin)\s*=\s*(["']).*?\1""", re.IGNORECASE)


def serve_assets_locally(docs_dir: Path) -> None:
    """Copy the vendored assets into ``docs_dir`` and rewrite every page's CDN tags to them.

    GX's logo, which it loads from its own bucket with the context's id in the query, becomes
    the copy GX ships with the docs. Pages under hidden folders (GX's ``.gx`` store) are left alone; running it again changes
    nothing.
    """
    docs_dir = Path(docs_dir)
    shutil.copytree(VENDORED, docs_dir / VENDOR_DIR, dirs_exist_ok=True)
    for page in docs_dir.rglob("*.html"):
        if any(part.startswith(".") for part in page.relative_to(docs_dir).parts):
            continue
        text = page.read_text(encoding="utf-8")
        local = _localised(text, Path(os.path.relpath(docs_dir / VENDOR_DIR, page.parent)))
        if local != text:
            page.write_text(local, encoding="utf-8")


def _localised(page: str, vendor: Path) -> str:
    page = _GX_LOGO.sub((vendor.parent / LOCAL_LOGO).as_posix(), page)

    def tag(match: re.Match[str]) -> str:
        text = match.group(0)
        address = _ADDRESS.search(text)
        if address is None:
            return text
        target = address.group(3)
        if target in ASSETS:
            local = (vendor / ASSETS[target]).as_posix()
        elif re.match(r"(\.\./)*static/", target):
            # GX's own files, named one folder too shallow from validation pages (the favicon)
            local = (vendor.parent / target.split("static/", 1)[1]).as_posix()
        else:
            return text
        quote = address.group(2)
        text = (
            text[: address.start()]
            + f"{address.group(1)}={quote}{local}{quote}"
            + text[address.end() :]
        )
        return _CDN_ONLY.sub("", text)

    return _TAG.sub(tag, page)


def external_assets(page: str) -> list[str]:
    """The http(s) addresses ``page`` loads from ``<script>``, ``<link>`` and ``<img>`` tags and
    CSS ``url()``s (none, offline; links people click are not loads)."""
    found = []
    for match in _TAG.finditer(page):
        address = _ADDRESS.search(match.group(0))
        if address and re.match(r"(?i)\s*(https?:)?//", address.group(3)):
            found.append(address.group(3))
    return found + _CSS_URL.findall(page)
