"""Sort images: split accepted images by patient into the study's Train/Val layout in the store."""

from __future__ import annotations

from prefect import task
from pydantic import BaseModel

from cxr_model import manifest
from cxr_model.split import SplitParams, materialise
from tasks.common import TRANSIENT_RETRIES, say, store


class DatasetRef(BaseModel):
    """A materialised dataset: its id, its split manifest, and image counts per split and label."""

    dataset_id: str
    uri: str
    split_key: str
    counts: dict[str, dict[str, int]]


@task(name="sort-images", **TRANSIENT_RETRIES)
def sort_images(accepted_key: str, params: SplitParams) -> DatasetRef:
    """Split by patient and copy the images to ``datasets/<id>/{Train,Val}/{covid,normal}/``."""
    objects = store()
    dataset = materialise(objects, manifest.read_csv(objects, accepted_key), params)
    say(
        f"dataset {dataset.dataset_id}: Train {dataset.counts['Train']}, Val {dataset.counts['Val']}"
    )
    return DatasetRef(
        dataset_id=dataset.dataset_id,
        uri=objects.uri(dataset.prefix + "/"),
        split_key=dataset.split_key,
        counts=dataset.counts,
    )
