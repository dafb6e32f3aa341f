"""Get images: read every source and store its files, content-addressed, in the raw store."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact
from pydantic import BaseModel

from cxr_model import manifest
from cxr_model.config import get_settings
from cxr_model.sources import parse_source
from tasks.common import TRANSIENT_RETRIES, artifact_key, say, store


class IngestResult(BaseModel):
    """The ingest manifest's key, and how many files were seen and newly stored."""

    manifest_key: str
    files: int
    stored_now: int
    not_fetched: int
    by_label: dict[str, int]
    summary: str


@task(name="get-images", **TRANSIENT_RETRIES)
def get_images(sources: list[str]) -> IngestResult:
    """Ingest all ``sources``; files already in the raw store are not stored again."""
    objects = store()
    images = []
    for spec in sources:
        source = parse_source(spec, store=objects, cache_dir=get_settings().cache_dir)
        found = manifest.ingest(objects, source.records())
        failed = sum(bool(i.read_error) for i in found)
        say(
            f"{source.name}: {len(found)} files, {sum(i.stored_now for i in found)} new"
            + (f", {failed} could not be fetched (listed in the report)" if failed else "")
        )
        images.extend(found)
    frame = manifest.to_frame(images)
    ingest_id = manifest.content_id(frame, ["key", "sha256", "label", "patient_id"])
    key = manifest.write_csv(objects, f"manifests/ingest-{ingest_id}.csv", frame)
    summary = manifest.ingest_summary(frame) + f"\n\nIngest manifest: `{objects.uri(key)}`"
    result = IngestResult(
        manifest_key=key,
        files=len(frame),
        stored_now=int(frame["stored_now"].sum()),
        not_fetched=int(frame["read_error"].notna().sum()),
        by_label={str(k): int(v) for k, v in frame["label"].value_counts(dropna=False).items()},
        summary=summary,
    )
    create_markdown_artifact(markdown=summary, key=artifact_key("ingest"))
    return result
