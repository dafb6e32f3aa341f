"""Image sources: where x-rays come from, each yielding the same kind of record.

Every source yields :class:`SourceRecord` s whose ``read()`` fetches the bytes, capped at
:data:`~cxr_model.sources.reading.MAX_FILE_BYTES`; a file that cannot be read raises an
``OSError`` for that file alone, a source that cannot be read at all :class:`SourceError`.
Names from remote metadata, zip entries or S3 keys are never used as local paths.

One concept per module: ``records`` (the record and errors), ``reading`` (capped local and S3
reads), ``http`` (the HTTP client), ``layout`` (the self-sorted folder layout), ``folder``,
``s3``, ``manifest``, ``ieee8023`` and ``kaggle`` (the sources) and ``spec`` (the spec strings,
:func:`parse_source`). The names below are the package's public API.
"""

from cxr_model.sources.folder import FolderSource
from cxr_model.sources.http import (
    HTTP_ATTEMPTS,
    HTTP_BACKOFF_S,
    HTTP_TIMEOUT_S,
    MAX_ARCHIVE_BYTES,
    fetch_bytes,
    fetch_to_file,
    http_fingerprint,
)
from cxr_model.sources.ieee8023 import (
    IEEE8023_BASE_URL,
    Ieee8023Filters,
    Ieee8023Source,
    ieee8023_label,
)
from cxr_model.sources.kaggle import KAGGLE_DATASET, KaggleSource, kaggle_patient_id
from cxr_model.sources.layout import IGNORED_FILES, SPLIT_FOLDERS
from cxr_model.sources.manifest import ALWAYS_REFUSED, ManifestSource
from cxr_model.sources.reading import (
    MAX_FILE_BYTES,
    file_fingerprint,
    local_entries,
    open_file_capped,
    open_input,
    open_object_capped,
    read_capped,
    read_file_capped,
    read_input,
    read_object_capped,
    sha256_capped,
)
from cxr_model.sources.records import (
    FetchError,
    RefusedFile,
    SourceError,
    SourceRecord,
    read_failure,
)
from cxr_model.sources.s3 import S3Source
from cxr_model.sources.spec import Source, check_source, parse_source

__all__ = [
    "ALWAYS_REFUSED",
    "HTTP_ATTEMPTS",
    "HTTP_BACKOFF_S",
    "HTTP_TIMEOUT_S",
    "IEEE8023_BASE_URL",
    "IGNORED_FILES",
    "KAGGLE_DATASET",
    "MAX_ARCHIVE_BYTES",
    "MAX_FILE_BYTES",
    "SPLIT_FOLDERS",
    "FetchError",
    "FolderSource",
    "Ieee8023Filters",
    "Ieee8023Source",
    "KaggleSource",
    "ManifestSource",
    "RefusedFile",
    "S3Source",
    "Source",
    "SourceError",
    "SourceRecord",
    "check_source",
    "fetch_bytes",
    "fetch_to_file",
    "file_fingerprint",
    "http_fingerprint",
    "ieee8023_label",
    "kaggle_patient_id",
    "local_entries",
    "open_file_capped",
    "open_input",
    "open_object_capped",
    "parse_source",
    "read_capped",
    "read_failure",
    "read_file_capped",
    "read_input",
    "read_object_capped",
    "sha256_capped",
]
