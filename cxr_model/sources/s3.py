"""``s3://bucket/prefix``: the folder layout of :mod:`.layout` under an S3 prefix.

Read only through :class:`~cxr_model.storage.ObjectStore` (one listing with ETags, the optional
``manifest.csv``, then each object capped as a local file is).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cxr_model.sources.layout import (
    PATIENT_MANIFEST,
    class_folder,
    has_split_files,
    is_ignored,
    no_class_folders,
    patient_map,
)
from cxr_model.sources.reading import object_reader
from cxr_model.sources.records import SourceError, SourceRecord

if TYPE_CHECKING:
    from cxr_model.storage import ObjectStore


def split_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/key`` → ``(bucket, key)``; :class:`SourceError` when it is not one."""
    from cxr_model.storage import parse_s3_uri

    try:
        return parse_s3_uri(uri)
    except ValueError as exc:
        raise SourceError(str(exc)) from exc


def store_for(store: ObjectStore, bucket: str) -> ObjectStore:
    """``store``, or the same server's ``bucket``."""
    return store if bucket == store.bucket else store.in_bucket(bucket)


@dataclass(frozen=True)
class S3Source:
    """The folder layouts of :class:`FolderSource` under an S3 prefix, read through the store."""

    uri: str
    store: ObjectStore = field(repr=False, compare=False)

    @property
    def name(self) -> str:
        return self.uri.rstrip("/")

    def records(self) -> Iterator[SourceRecord]:
        from botocore.exceptions import BotoCoreError, ClientError

        bucket, prefix = split_s3_uri(self.uri)
        store = store_for(self.store, bucket)
        prefix = prefix.strip("/")
        prefix = f"{prefix}/" if prefix else ""
        try:
            etags = {
                key: f"{etag}-{'' if size is None else size}"
                for key, etag, size in store.list_etags(prefix)
            }
            manifest = store.get_with_etag(f"{prefix}{PATIENT_MANIFEST}")
        except (ClientError, BotoCoreError) as exc:
            raise SourceError(f"cannot list {self.name}: {exc}") from exc
        patients = patient_map(io.StringIO(manifest[0].decode("utf-8-sig"))) if manifest else {}
        files = [
            (key, key[len(prefix) :].split("/"))
            for key in sorted(etags)
            if not key.endswith("/") and not is_ignored(key.rsplit("/", 1)[-1])
        ]
        split_layout = has_split_files(parts for _, parts in files)
        chosen = [
            (key, parts, name)
            for key, parts in files
            if (name := class_folder(parts, split_layout)) is not None
        ]
        if not chosen:
            raise no_class_folders(self.name)
        for key, parts, class_name in chosen:
            relative = "/".join(parts)
            yield SourceRecord(
                source=self.name,
                original_path=relative,
                label=class_name.lower(),
                patient_id=patients.get(relative),
                read=object_reader(store, key),
                metadata={"url": store.uri(key)},
                fingerprint=etags[key],
            )
