"""Check images: describe each file with Pillow and validate the manifest with Great Expectations."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_link_artifact, create_markdown_artifact
from pydantic import BaseModel

from cxr_model import manifest
from cxr_model.quality import QualityError, QualitySettings, validate_manifest
from tasks.common import artifact_key, link, local_docs_dir, put_report, say, store

PROGRESS_LISTED = 10  # quarantined files named on the console; the report lists them all


class QualityResult(BaseModel):
    """Where the accepted images and the data-quality report are."""

    accepted_key: str
    accepted: int
    rejected: int
    report_uri: str
    report_link: str = ""  # the report as an HTML page a browser opens (cxr_model.links)
    report_key: str  # the full report (JSON), with the shortcut audit
    docs_uri: str
    docs_link: str = ""  # docs_uri as an address a browser opens (cxr_model.links)
    docs_local: str
    warnings: list[str]
    summary: str
    shortcut_flags: list[str] = []  # the shortcut audit's warnings; empty: no shortcut found


@task(name="check-images")
def check_images(manifest_key: str, settings: QualitySettings, report_prefix: str) -> QualityResult:
    """Validate the ingested images; fail on a critical expectation, quarantine failing files."""
    objects = store()
    images = manifest.describe_images(manifest.read_csv(objects, manifest_key))
    docs_dir = local_docs_dir(report_prefix)
    report = validate_manifest(images, settings, docs_dir)

    manifest.write_csv(objects, f"{report_prefix}/images.csv", images)
    accepted = images[images["key"].isin(report.accepted_keys)]
    accepted_key = manifest.write_csv(objects, f"{report_prefix}/accepted.csv", accepted)
    objects.put_bytes(f"{report_prefix}/report.json", report.model_dump_json(indent=2).encode())
    summary = report.summary_markdown()
    report_html = put_report(f"{report_prefix}/report.md", summary, "Data quality report")
    manifest.quarantine(objects, images, {r.key: r.reasons for r in report.rejected})
    docs_keys = objects.upload_dir(docs_dir, f"{report_prefix}/data_docs")
    docs_key = f"{report_prefix}/data_docs/index.html"
    docs_uri, docs_link = (objects.uri(docs_key), link(docs_key)) if docs_keys else ("", "")

    create_markdown_artifact(markdown=summary, key=artifact_key("data-quality"))
    report_link = link(report_html)
    create_link_artifact(
        link=report_link,
        link_text="Data quality report (HTML)",
        key=artifact_key("data-quality-report"),
        description=f"Stored at {objects.uri(report_html)}",
    )
    if docs_link:
        create_link_artifact(
            link=docs_link,
            link_text="Great Expectations Data Docs",
            key=artifact_key("data-docs"),
            description=f"Stored at {docs_uri}; a local copy is at {docs_dir / 'index.html'}",
        )
    say(f"data quality: {len(accepted)} accepted, {len(report.rejected)} quarantined")
    flags = [flag.warning for flag in report.audit.flags] if report.audit else []
    say(f"shortcut audit: {'; '.join(flags) if flags else 'no shortcut found'}")
    for rejection in report.rejected[:PROGRESS_LISTED]:
        say(f"  quarantined {rejection.original_path}: {'; '.join(rejection.reasons)}")
    if len(report.rejected) > PROGRESS_LISTED:
        say(f"  … and {len(report.rejected) - PROGRESS_LISTED} more, listed in the report")
    if not report.passed:
        raise QualityError(report)
    return QualityResult(
        accepted_key=accepted_key,
        accepted=len(accepted),
        rejected=len(report.rejected),
        report_uri=objects.uri(f"{report_prefix}/report.md"),
        report_link=report_link,
        report_key=f"{report_prefix}/report.json",
        docs_uri=docs_uri,
        docs_link=docs_link,
        docs_local=str((docs_dir / "index.html").resolve()),
        warnings=[w.summary for w in report.warnings],
        summary=summary,
        shortcut_flags=flags,
    )
