"""Settings for cxr, read from the environment (prefix ``CXR_``) with sensible local defaults.

Every setting has one environment variable; the README lists them all. Nothing here starts
anything: :func:`cxr_model.storage.open_store` turns settings into a live object store.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

# Where files wait to be scored in the bucket: score-inbox reads it, `make up` seeds it.
INBOX_PREFIX = "inbox/"


class Settings(BaseSettings):
    """Where cxr keeps its state and which object store it talks to."""

    model_config = SettingsConfigDict(env_prefix="CXR_", extra="ignore")

    state_dir: Path = Field(
        default=Path.home() / ".cxr",
        description="Local state: embedded S3 data, credentials, and the local cache.",
    )
    s3_endpoint_url: str | None = Field(
        default=None,
        description="S3-compatible endpoint (MinIO, SeaweedFS, ...). Unset: the embedded store, "
        "unless s3_use_aws is set.",
    )
    s3_use_aws: bool = Field(
        default=False,
        description="Talk to AWS S3 itself (standard endpoint and credential chain).",
    )
    s3_region: str = Field(default="us-east-1", description="Region for the S3 client.")
    bucket: str = Field(default="cxr", description="Bucket that holds everything cxr produces.")
    model_name: str = Field(default="cxr-covid", description="Registry name of the classifier.")
    keep_checkpoints: int = Field(
        default=1,
        ge=0,
        description="Finished training checkpoints (checkpoints/<dataset>/<params hash>) kept "
        "once a version is registered, most recent first; the registered version's counts first. "
        "0 removes them all; unfinished ones (a run to resume) are never removed.",
    )
    manifest_roots: list[Path] = Field(
        default_factory=list,
        description="Folders a manifest's local paths may name besides the manifest's own folder "
        '(a JSON list, e.g. ["/data/xrays"]). /proc, /sys, /dev and state_dir are always refused.',
    )

    @property
    def embedded(self) -> bool:
        """True when cxr runs its own SeaweedFS store under ``state_dir``."""
        return self.s3_endpoint_url is None and not self.s3_use_aws

    @property
    def cache_dir(self) -> Path:
        """Local cache of objects fetched from the store (safe to delete)."""
        return self.state_dir / "cache"


def get_settings() -> Settings:
    """Settings as the environment says now (cheap; read on every call so tests can vary it)."""
    return Settings()
