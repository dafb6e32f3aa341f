"""Source specs: the strings that name a source on the CLI and as a flow parameter.

- ``folder:<path>`` or a bare path: a self-sorted folder, either the study's layout
  ``Train|Val/{covid,normal}/...`` or a flat ``{covid,normal}/...``. Labels come from the class
  folder names (case-insensitive). An optional ``manifest.csv`` at the root with columns
  ``file,patient_id`` gives patient ids; without one each image is its own patient.
- ``manifest:<csv>``: a CSV with ``label`` and ``file`` (or ``uri``), optional ``patient_id`` and
  ``source``. A value is a local path (relative to the CSV's folder, or absolute), an
  ``http(s)://`` URL or an ``s3://bucket/key`` URI (read through the object store). ``source``, when
  present, names the record's source; every other non-empty column (``view``, ``license``, ...)
  goes into the record's metadata.
- ``s3://bucket/prefix``: the same layouts as ``folder:`` under an S3 prefix (optional
  ``manifest.csv`` there too), read through the object store given to :func:`parse_source`.
- ``ieee8023:[<base-url>][?views=PA,AP&findings=COVID-19&modalities=X-ray]``: the ieee8023
  covid-chestxray-dataset (default base URL :data:`IEEE8023_BASE_URL`); rows selected by
  :class:`Ieee8023Filters`; label ``covid`` for COVID-19 findings.
- ``kaggle:[<folder-or-zip>][?pneumonia=include]``: Kaggle's chest-xray-pneumonia dataset from a
  folder or a zip; without a path the dataset zip is downloaded with the Kaggle API (credentials:
  ``KAGGLE_USERNAME``/``KAGGLE_KEY`` or ``~/.kaggle/kaggle.json``).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlsplit

from cxr_model.sources.folder import FolderSource
from cxr_model.sources.ieee8023 import IEEE8023_BASE_URL, Ieee8023Filters, Ieee8023Source
from cxr_model.sources.kaggle import KaggleSource
from cxr_model.sources.manifest import ManifestSource
from cxr_model.sources.records import SourceError
from cxr_model.sources.s3 import S3Source, split_s3_uri

if TYPE_CHECKING:
    from cxr_model.storage import ObjectStore

Source = FolderSource | ManifestSource | S3Source | Ieee8023Source | KaggleSource

_SPEC_HELP = (
    "use folder:<path>, manifest:<csv>, s3://bucket/prefix, ieee8023:[<base-url>] or "
    "kaggle:[<folder-or-zip>]"
)


def _options(spec: str, rest: str, allowed: set[str]) -> tuple[str, dict[str, str]]:
    location, sep, query = rest.partition("?")
    if not sep:
        return rest, {}
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True)
    except ValueError as exc:
        raise SourceError(f"bad options {query!r} in {spec!r}: use ?name=value&...") from exc
    options = dict(pairs)
    unknown = set(options) - allowed
    if unknown:
        raise SourceError(
            f"unknown option(s) {sorted(unknown)} in {spec!r}; known: {sorted(allowed) or 'none'}"
        )
    return location, options


def _names(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(v.strip() for v in values if v.strip())


def _list_option(value: str | None, default: tuple[str, ...]) -> tuple[str, ...]:
    return default if value is None else _names(value.split(","))


def _path(text: str) -> Path:
    return Path(text).expanduser().resolve()


def parse_source(
    spec: str, *, store: ObjectStore | None = None, cache_dir: Path | None = None
) -> Source:
    """Turn a source spec (see this module's docstring) into a source.

    ``store`` reads ``s3://`` sources and manifest rows; ``cache_dir`` holds downloads (Kaggle).
    """
    spec = spec.strip()
    if spec.startswith("s3://"):
        if store is None:
            raise SourceError(f"source {spec!r} needs an object store, and none was given")
        split_s3_uri(spec)
        return S3Source(spec, store)
    kind, sep, rest = spec.partition(":")
    if sep and kind == "folder":
        return FolderSource(_path(rest))
    if sep and kind == "manifest":
        return ManifestSource(_path(rest), store=store)
    if sep and kind == "ieee8023":
        base, options = _options(spec, rest, {"views", "findings", "modalities"})
        defaults = Ieee8023Filters()
        filters = Ieee8023Filters(
            findings=_list_option(options.get("findings"), defaults.findings),
            modalities=_list_option(options.get("modalities"), defaults.modalities),
            views=_list_option(options.get("views"), defaults.views),
        )
        base = base.strip() or IEEE8023_BASE_URL
        if urlsplit(base).scheme not in ("http", "https"):
            raise SourceError(f"ieee8023 base {base!r} in {spec!r} is not an http(s):// URL")
        return Ieee8023Source(base.rstrip("/"), filters)
    if sep and kind == "kaggle":
        location, options = _options(spec, rest, {"pneumonia"})
        pneumonia = options.get("pneumonia", "exclude").lower()
        if pneumonia not in ("include", "exclude"):
            raise SourceError(f"pneumonia= must be include or exclude in {spec!r}")
        return KaggleSource(
            location=_path(location) if location.strip() else None,
            include_pneumonia=pneumonia == "include",
            cache_dir=cache_dir,
        )
    if sep and len(kind) > 1 and kind not in ("file",):
        raise SourceError(f"unknown source kind {kind!r} in {spec!r}: {_SPEC_HELP}")
    return FolderSource(_path(spec))


def check_source(spec: str) -> None:
    """Check a source spec without reading the source: its syntax, and that a local folder,
    manifest or archive it names exists. No network, no store, nothing heavy imported: the CLI
    calls it before it starts Prefect or TensorFlow, so a typo fails in a second.

    Raises :class:`SourceError` with the same message reading the source would give.
    """
    spec = spec.strip()
    if spec.startswith("s3://"):
        split_s3_uri(spec)
        return
    source = parse_source(spec)
    if isinstance(source, FolderSource) and not source.root.is_dir():
        raise SourceError(f"source folder {source.root} does not exist or is not a folder")
    if isinstance(source, ManifestSource) and not source.csv_path.is_file():
        raise SourceError(f"manifest {source.csv_path} does not exist")
    if isinstance(source, KaggleSource) and source.location and not source.location.exists():
        raise SourceError(f"Kaggle source {source.location} does not exist")
