"""Object storage: one small interface over any S3-compatible store, through boto3.

Everything the pipeline produces lives in a bucket; local disk is only a cache. The same code talks
to the embedded SeaweedFS store, MinIO (set ``CXR_S3_ENDPOINT_URL``) or AWS S3 (``CXR_S3_USE_AWS``),
with credentials from the standard chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``,
profiles, instance roles) for the latter two.
"""

from __future__ import annotations

import functools
import inspect
import mimetypes
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

import boto3
from boto3.exceptions import S3UploadFailedError
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)

from cxr_model import embedded_store
from cxr_model.config import Settings

CLIENT_CONFIG = Config(
    connect_timeout=5,
    read_timeout=60,
    retries={"max_attempts": 4, "mode": "standard"},
    max_pool_connections=16,
    s3={"addressing_style": "path"},
    signature_version="s3v4",  # presigned links too (botocore presigns S3 with SigV2 otherwise)
)


PRECONDITION_FAILED = {"PreconditionFailed", "412", "ConditionalRequestConflict"}
MISSING_KEY_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
"""S3 error codes meaning "no such key": GET answers ``NoSuchKey``, HEAD a bare 404/``NotFound``."""


class StoreError(RuntimeError):
    """The object store could not be used; the message says what to fix."""


class StoreUnreachable(StoreError, ConnectionError):
    """The store stopped answering (a ConnectionError, so task retries still apply)."""


# botocore's errors for a server that is gone or hung; their text carries the full request URL
UNREACHABLE = (
    EndpointConnectionError,
    ConnectTimeoutError,
    ReadTimeoutError,
    ConnectionClosedError,
)


def _unreachable(exc: BaseException) -> bool:
    if isinstance(exc, UNREACHABLE):
        return True
    # upload_file wraps the error in S3UploadFailedError; keep the cause chain in mind
    cause = exc.__cause__ or exc.__context__
    return isinstance(exc, S3UploadFailedError) and cause is not None and _unreachable(cause)


def _says_when_unreachable(method):
    """Turn "Could not connect to the endpoint URL ..." into one line that says what to do."""

    def unreachable(self, exc):
        where = self.endpoint_url or "AWS S3"
        return StoreUnreachable(f"the S3 store at {where} stopped responding; rerun to resume")

    if inspect.isgeneratorfunction(method):

        @functools.wraps(method)
        def generator(self, *args, **kwargs):
            try:
                yield from method(self, *args, **kwargs)
            except Exception as exc:
                if _unreachable(exc):
                    raise unreachable(self, exc) from exc
                raise

        return generator

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except Exception as exc:
            if _unreachable(exc):
                raise unreachable(self, exc) from exc
            raise

    return wrapper


class AlreadyExists(StoreError):
    """A create-only write found the key already taken."""


class ChangedSinceRead(StoreError):
    """A compare-and-swap write found the object changed since it was read."""


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` → ``("bucket", "some/prefix")``."""
    if not uri.startswith("s3://"):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not bucket:
        raise ValueError(f"no bucket in {uri!r}")
    return bucket, key


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


@dataclass(frozen=True)
class ObjectStore:
    """A bucket on an S3-compatible server. Keys are plain strings inside the bucket."""

    client: object
    bucket: str
    endpoint_url: str | None = None

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def http_url(self, key: str) -> str | None:
        """A browser-friendly address for a key on an endpoint that serves plain GETs."""
        return f"{self.endpoint_url}/{self.bucket}/{key}" if self.endpoint_url else None

    def presigned_url(self, key: str, expires_in: int) -> str:
        """A GET URL for ``key`` that works without credentials for ``expires_in`` seconds.

        It carries a SigV4 signature and the access key id (never the secret); S3 caps
        ``expires_in`` at 7 days.
        """
        return self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=expires_in
        )

    def in_bucket(self, bucket: str) -> ObjectStore:
        """The same server and credentials, another bucket (for ``s3://other/...`` inputs)."""
        return ObjectStore(client=self.client, bucket=bucket, endpoint_url=self.endpoint_url)

    def ensure_bucket(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            if _error_code(exc) not in ("404", "NoSuchBucket", "NotFound"):
                raise
            self.client.create_bucket(Bucket=self.bucket)

    def put_bytes(
        self, key: str, data: bytes, *, content_type: str | None = None, create_only: bool = False
    ) -> str:
        """Write ``data`` at ``key`` and return its ETag. ``create_only`` never overwrites."""
        extra: dict[str, str] = {}
        content_type = content_type or mimetypes.guess_type(key)[0]
        if content_type:
            extra["ContentType"] = content_type
        if create_only:
            extra["IfNoneMatch"] = "*"
        try:
            reply = self.client.put_object(Bucket=self.bucket, Key=key, Body=data, **extra)
        except ClientError as exc:
            if create_only and _error_code(exc) in PRECONDITION_FAILED:
                raise AlreadyExists(f"{self.uri(key)} already exists") from exc
            raise
        return reply["ETag"]

    def replace_if_unchanged(self, key: str, data: bytes, etag: str) -> str:
        """Overwrite ``key`` only if it still has ``etag`` (compare-and-swap); return the new ETag."""
        try:
            reply = self.client.put_object(
                Bucket=self.bucket, Key=key, Body=data, IfMatch=etag, ContentType="application/json"
            )
        except ClientError as exc:
            if _error_code(exc) in PRECONDITION_FAILED:
                raise ChangedSinceRead(f"{self.uri(key)} changed since it was read") from exc
            raise
        return reply["ETag"]

    def put_file(self, key: str, path: Path) -> None:
        content_type = mimetypes.guess_type(str(path))[0] or "application/octet-stream"
        self.client.upload_file(
            str(path), self.bucket, key, ExtraArgs={"ContentType": content_type}
        )

    def get_bytes(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def get_with_etag(self, key: str) -> tuple[bytes, str] | None:
        """The object and its ETag, or None when there is no such key."""
        try:
            reply = self.client.get_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _error_code(exc) in MISSING_KEY_CODES:
                return None
            raise
        return reply["Body"].read(), reply["ETag"]

    @contextmanager
    def open_object(self, key: str) -> Iterator[tuple[BinaryIO, int]]:
        """``key``'s body as a stream, with its size; closed on leaving. botocore's errors are
        raised as they are, so that the caller can tell a missing key from a failing store."""
        reply = self.client.get_object(Bucket=self.bucket, Key=key)
        body = reply["Body"]
        try:
            yield body, int(reply.get("ContentLength") or 0)
        finally:
            body.close()

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _error_code(exc) in MISSING_KEY_CODES:
                return False
            raise
        return True

    def list_keys(self, prefix: str) -> Iterator[str]:
        """Every key under ``prefix``, streamed page by page."""
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                yield item["Key"]

    def list_etags(self, prefix: str) -> Iterator[tuple[str, str, int | None]]:
        """Every key under ``prefix`` with its ETag (unquoted) and size, page by page; botocore's
        errors are raised as they are."""
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                yield item["Key"], str(item.get("ETag", "")).strip('"'), item.get("Size")

    def list_modified(self, prefix: str) -> Iterator[tuple[str, datetime]]:
        """Every key under ``prefix`` with the time it was last written, page by page."""
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                yield item["Key"], item["LastModified"]

    def delete(self, key: str) -> None:
        """Remove ``key`` (nothing happens when it is not there)."""
        self.client.delete_object(Bucket=self.bucket, Key=key)

    def copy(self, src_key: str, dst_key: str) -> None:
        """Server-side copy inside the bucket."""
        self.client.copy_object(
            Bucket=self.bucket, Key=dst_key, CopySource={"Bucket": self.bucket, "Key": src_key}
        )

    def download(self, key: str, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".part")
        self.client.download_file(self.bucket, key, str(partial))
        partial.replace(path)
        return path

    def upload_dir(self, folder: Path, prefix: str) -> list[str]:
        """Upload every file under ``folder`` to ``prefix/<relative path>``; return the keys.

        Hidden files and folders (tool state such as ``.gx``) stay local.
        """
        keys = []
        files = (p for p in folder.rglob("*") if p.is_file())
        for path in sorted(p for p in files if not _hidden(p.relative_to(folder))):
            key = f"{prefix.rstrip('/')}/{path.relative_to(folder).as_posix()}"
            self.put_file(key, path)
            keys.append(key)
        return keys


for _name in (
    "ensure_bucket",
    "put_bytes",
    "replace_if_unchanged",
    "put_file",
    "get_bytes",
    "get_with_etag",
    "exists",
    "list_keys",
    "copy",
    "download",
    "upload_dir",
):
    setattr(ObjectStore, _name, _says_when_unreachable(getattr(ObjectStore, _name)))


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def _client_for(settings: Settings):
    if settings.embedded:
        server, creds = embedded_store.ensure_running(settings.state_dir)
        return embedded_store.s3_client(server.endpoint_url, creds), server.endpoint_url
    session = boto3.session.Session(region_name=settings.s3_region)
    client = session.client("s3", endpoint_url=settings.s3_endpoint_url, config=CLIENT_CONFIG)
    return client, settings.s3_endpoint_url


DENIED_CODES = {"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "Forbidden"}


def _where(settings: Settings) -> str:
    return settings.s3_endpoint_url or ("AWS S3" if settings.s3_use_aws else "the embedded store")


def open_store(settings: Settings) -> ObjectStore:
    """The configured store with its bucket ready; a one-line StoreError says what to fix."""
    try:
        client, endpoint = _client_for(settings)
        store = ObjectStore(client=client, bucket=settings.bucket, endpoint_url=endpoint)
        store.ensure_bucket()
    except embedded_store.EmbeddedStoreError as exc:
        raise StoreError(f"embedded S3 store: {exc}") from exc
    except ClientError as exc:
        code = _error_code(exc)
        hint = (
            "the credentials were refused: check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"
            if code in DENIED_CODES
            else f"check CXR_BUCKET and the store ({exc})"
        )
        raise StoreError(
            f"S3 at {_where(settings)} cannot use bucket {settings.bucket!r}: {hint}"
        ) from exc
    except NoCredentialsError as exc:
        raise StoreError(
            f"no S3 credentials for {_where(settings)}: set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE with ~/.aws/credentials), or unset "
            "CXR_S3_ENDPOINT_URL and CXR_S3_USE_AWS to use the embedded store"
        ) from exc
    except BotoCoreError as exc:
        raise StoreError(
            f"cannot reach S3 at {_where(settings)}: {exc}. Check CXR_S3_ENDPOINT_URL (unset it to "
            "use the embedded store)."
        ) from exc
    return store
