"""Sort images: split accepted images by patient into the study's Train/Val layout in the store."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact

from cxr_model import manifest
from cxr_model.quality import QualityError, QualitySettings, validate_split
from cxr_model.split import (
    SplitParams,
    choose_held_out_sources,
    load_split,
    materialise,
)
from tasks.common import TRANSIENT_RETRIES, artifact_key, local_docs_dir, say, store
from tasks.shared import DatasetRef

NEAR_DUPLICATES_LISTED = 3  # on the console; the split report lists every pair


@task(name="sort-images", **TRANSIENT_RETRIES)
def sort_images(
    accepted_key: str,
    params: SplitParams,
    quality: QualitySettings,
    report_prefix: str,
    shortcut_flags: list[str] | None = None,
) -> DatasetRef:
    """Split by patient into ``datasets/<id>/{Train,Val}/{covid,normal}/`` and check the split.

    Sources held out of training (chosen in ``params`` or, when the shortcut audit raised
    ``shortcut_flags``, automatically) go to ``Holdout/``.
    """
    objects = store()
    accepted = manifest.read_csv(objects, accepted_key)
    flags = shortcut_flags or []
    held_out = choose_held_out_sources(accepted, bool(flags), params.held_out_sources)
    say(f"held-out sources: {', '.join(held_out.sources) or 'none'} ({held_out.reason})")
    dataset = materialise(objects, accepted, params, held_out.sources)
    docs_dir = local_docs_dir(report_prefix)
    report = validate_split(load_split(objects, dataset.split_key), accepted, quality, docs_dir)
    objects.upload_dir(docs_dir, f"{report_prefix}/data_docs")
    summary = report.summary_markdown()
    objects.put_bytes(f"{report_prefix}/split-report.md", summary.encode())
    create_markdown_artifact(markdown=summary, key=artifact_key("split-quality"))
    if report.near_duplicates:
        say(
            f"warning: {len(report.near_duplicates)} near-duplicate pair(s) across Train and Val "
            "(all listed in the split report), the closest:"
        )
    for pair in report.near_duplicates[:NEAR_DUPLICATES_LISTED]:
        say(
            f"  near-duplicate across splits: {pair.val_path} ~ {pair.train_path} (distance {pair.distance})"
        )
    if not report.passed:
        raise QualityError(report)
    say(
        f"dataset {dataset.dataset_id}: "
        + ", ".join(f"{split} {counts}" for split, counts in dataset.counts.items())
    )
    return DatasetRef(
        dataset_id=dataset.dataset_id,
        uri=objects.uri(dataset.prefix + "/"),
        split_key=dataset.split_key,
        counts=dataset.counts,
        held_out=held_out,
        shortcut_flags=flags,
    )
