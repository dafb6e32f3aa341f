"""Links people can open in a browser: every link cxr shows points at an object in the store.

One rule decides the address of every link (Prefect link artifacts, the CLI's lines, reports):

- with ``CXR_REPORTS_URL`` set (the local stack sets it to its report server,
  :mod:`cxr_model.report_server`, on 127.0.0.1), ``<reports_url>/<key>``: read-only, no
  credentials, no expiry;
- otherwise (AWS S3, MinIO, or the embedded store without a report server), a presigned GET URL
  that works for ``CXR_LINK_EXPIRY_SECONDS`` (default 7 days, the SigV4 maximum). It carries a
  signature and the access key id, never the secret key.

Plots are never linked: reports carry them inline, so a report opens whole
wherever it is opened (the Prefect UI, a browser, a downloaded file):
:func:`cxr_model.html_report.data_uri`.
"""

from __future__ import annotations

from urllib.parse import quote

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from cxr_model.storage import ObjectStore

MAX_PRESIGN_SECONDS = 7 * 24 * 3600  # SigV4's limit


class LinkSettings(BaseSettings):
    """How links to stored objects are made (environment variables ``CXR_...``)."""

    model_config = SettingsConfigDict(env_prefix="CXR_", extra="ignore")

    reports_url: str | None = Field(
        default=None,
        description="Base URL of a report server that serves the bucket's objects read-only "
        "(e.g. http://127.0.0.1:4210, set by `make up`). Unset: links are presigned URLs.",
    )
    link_expiry_seconds: int = Field(
        default=MAX_PRESIGN_SECONDS,
        ge=60,
        le=MAX_PRESIGN_SECONDS,
        description="How long a presigned link works (seconds; at most 7 days).",
    )


def object_link(store: ObjectStore, key: str, settings: LinkSettings | None = None) -> str:
    """A URL a browser opens for ``key`` in ``store``'s bucket (see the module's rule)."""
    settings = settings or LinkSettings()
    if settings.reports_url:
        return f"{settings.reports_url.rstrip('/')}/{quote(key)}"
    return store.presigned_url(key, settings.link_expiry_seconds)
