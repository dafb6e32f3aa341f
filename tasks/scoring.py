"""Score: run a registered model over chunks of files and collect the predictions in the store."""

from __future__ import annotations

from functools import lru_cache

from prefect import task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from pydantic import BaseModel

from cxr_model import scoring
from cxr_model.config import get_settings
from cxr_model.image_checks import ImageChecks
from cxr_model.images import LEGACY_PREPROCESSING, Preprocessing
from cxr_model.inference import RUNTIME, OnnxModel
from cxr_model.ood import OodCheck, OodDetector
from cxr_model.quality import QualitySettings
from cxr_model.registry import CHAMPION, ModelCard, RegistryError
from cxr_model.score_report import parquet_key_for, summary_markdown
from tasks.common import TRANSIENT_RETRIES, artifact_key, link, registry, say, store

PREVIEW_ROWS = 20


class ModelChoice(BaseModel):
    """The version a scoring run uses, and how it reads its inputs."""

    name: str
    version: int
    image_size: int
    threshold: float
    preprocessing: Preprocessing = LEGACY_PREPROCESSING
    quality: QualitySettings = QualitySettings()  # the per-image checks' settings of its training
    ood_checked: bool = False  # the version has an out-of-distribution check
    runtime: str = RUNTIME  # onnxruntime (the version's export) or keras (registered before it)


class ChunkResult(BaseModel):
    """Where one chunk's rows are, and its counts."""

    key: str
    summary: scoring.ScoreSummary


KERAS_RUNTIME = "keras"


@lru_cache(maxsize=2)
def _load_cached(settings_json: str, version: int) -> tuple[scoring.Predict, ModelCard]:
    models = registry()
    onnx_file, card = models.inference_file(version)
    ood = None
    if card.ood:  # verified against the card's sha256 like the model file
        check = OodCheck.model_validate(card.ood)
        ood = OodDetector.from_bytes(models.attachment(version, check.file, check.sha256))
    if onnx_file is not None:
        return scoring.onnx_predictor(OnnxModel(onnx_file), ood), card
    try:  # registered before exports existed: only Keras (the `train` extra) can score it
        model, card = models.load(version)
    except ModuleNotFoundError as exc:
        raise RegistryError(
            f"{card.name} v{version} has no ONNX export (registered before exports existed), so "
            f"only Keras can score it, and {exc.name} is not installed: install the train extra "
            "(make install, or uv sync --extra train) or register a newer version"
        ) from exc
    return scoring.keras_predictor(model, ood), card


def runtime_of(card: ModelCard) -> str:
    """What scores the version: ONNX Runtime for its export, Keras for a version without one."""
    return str(card.inference.get("runtime", RUNTIME)) if card.inference else KERAS_RUNTIME


@lru_cache(maxsize=4)
def _checks(quality_json: str) -> ImageChecks:
    return ImageChecks.from_suite(QualitySettings.model_validate_json(quality_json))


def _loaded(version: int) -> tuple[scoring.Predict, ModelCard]:
    """A registered model's predict function, loaded once per process and store."""
    return _load_cached(get_settings().model_dump_json(), version)


@lru_cache(maxsize=8)
def _score_store_cached(settings_json: str, name: str, version: int) -> scoring.ScoreStore:
    return scoring.ScoreStore(store(), name, version)


def _score_store(model: ModelChoice) -> scoring.ScoreStore:
    """The stored scores of a version, one per process and store: each chunk reads only the
    score batches stored since the previous chunk looked."""
    return _score_store_cached(get_settings().model_dump_json(), model.name, model.version)


@task(name="check-input", **TRANSIENT_RETRIES)
def check_input(location: str) -> None:
    """Fail now, naming it, when ``location`` cannot be listed (a missing folder or bucket), so
    that this is reported before anything about the model; an empty folder is fine."""
    next(scoring.list_inputs(location, store()), None)


@task(name="resolve-model", **TRANSIENT_RETRIES)
def resolve_model(ref: str, threshold: float | None) -> ModelChoice | None:
    """The version behind an alias or number (loaded and verified once per process), or None
    when ``ref`` is the champion alias and no version is champion yet (a new registry)."""
    models = registry()
    if ref == CHAMPION and models.alias(CHAMPION) is None:
        return None
    version = models.resolve(ref)
    _, card = _loaded(version)
    if card.inference is None:
        say(
            f"{card.name} v{version} has no ONNX export (registered before exports): scoring with Keras"
        )
    return ModelChoice(
        name=card.name,
        version=version,
        image_size=int(card.parameters["training"]["image_size"]),
        preprocessing=Preprocessing.of_model(card.parameters["training"]),
        threshold=card.threshold if threshold is None else threshold,
        quality=QualitySettings.model_validate(card.parameters.get("quality", {})),
        ood_checked=card.ood is not None,
        runtime=runtime_of(card),
    )


@task(name="score-chunk", **TRANSIENT_RETRIES)
def score_chunk(
    paths: list[str], model: ModelChoice, chunk_key: str, run: str, only_new: bool = False
) -> ChunkResult:
    """Score one chunk of files (reusing stored scores) and write its rows to ``chunk_key``."""
    objects = store()
    predict, _ = _loaded(model.version)
    scored = scoring.score_chunk(
        paths,
        objects,
        _score_store(model),
        predict,
        image_size=model.image_size,
        preprocessing=model.preprocessing,
        checks=_checks(model.quality.model_dump_json()),
        threshold=model.threshold,
        run=run,
        only_new=only_new,
    )
    table = scoring.frame_to_csv_bytes(scoring.predictions_frame(scored.predictions))
    objects.put_bytes(chunk_key, table, content_type="text/csv")
    return ChunkResult(key=chunk_key, summary=scored.summary)


@task(name="publish-predictions", **TRANSIENT_RETRIES)
def publish_predictions(
    chunks: list[ChunkResult], model: ModelChoice, output_key: str, title: str, seconds: float
) -> scoring.ScoreSummary:
    """Merge the chunks' rows into one predictions CSV (and its Parquet copy) and publish the
    run's summary."""
    objects = store()
    preview = scoring.merge_tables(
        objects,
        [chunk.key for chunk in chunks],
        output_key,
        parquet_key_for(output_key),
        PREVIEW_ROWS,
    )
    summary = sum((chunk.summary for chunk in chunks), scoring.ScoreSummary())
    uri = objects.uri(output_key)
    create_markdown_artifact(
        markdown=summary_markdown(
            title,
            summary,
            uri,
            seconds,
            model_name=model.name,
            version=model.version,
            threshold=model.threshold,
            runtime=model.runtime,
        ),
        key=artifact_key("scoring-summary"),
    )
    create_table_artifact(preview, key=artifact_key("predictions-preview"))
    create_link_artifact(
        link=link(output_key),
        link_text="predictions CSV",
        key=artifact_key("predictions"),
        description=f"Stored at {uri}",
    )
    create_link_artifact(
        link=link(parquet_key_for(output_key)),
        link_text="predictions Parquet",
        key=artifact_key("predictions-parquet"),
        description=f"Stored at {parquet_key_for(uri)}",
    )
    say(
        f"scored {summary.scored} of {summary.files} files ({summary.errors} with errors, "
        f"{summary.predicted} predicted now, {summary.reused} reused); predictions at {uri}"
    )
    return summary
