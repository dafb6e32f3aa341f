"""The ingest flow: get images → check them, without training (to look at data quality first)."""

from __future__ import annotations

from prefect import flow
from pydantic import BaseModel, Field

from cxr_model.quality import QualitySettings
from flows.run_names import timestamped
from tasks.common import run_prefix
from tasks.ingest import IngestResult, get_images
from tasks.quality import QualityResult, check_images


class IngestParams(BaseModel):
    sources: list[str] = Field(
        description="Image sources: folder:<path> or manifest:<csv>.", min_length=1
    )
    quality: QualitySettings = Field(default_factory=QualitySettings)


class IngestReport(BaseModel):
    ingest: IngestResult
    quality: QualityResult


@flow(name="ingest", flow_run_name=timestamped("ingest"))
def ingest(params: IngestParams) -> IngestReport:
    """Store the sources' images in the raw store and validate them."""
    images = get_images(params.sources)
    quality = check_images(images.manifest_key, params.quality, f"{run_prefix('ingest')}/quality")
    return IngestReport(ingest=images, quality=quality)
