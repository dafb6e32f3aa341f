"""Evaluate: score the validation split with a model and record metrics, plots and a report."""

from __future__ import annotations

import keras
import numpy as np
from prefect import task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

from cxr_model.config import get_settings
from cxr_model.evaluate import (
    Evaluation,
    ThresholdRule,
    evaluate_predictions,
    evaluation_plots,
    evaluation_report_markdown,
)
from cxr_model.gate import HEADLINE
from cxr_model.registry import CHAMPION, RegistryError
from cxr_model.split import VAL, load_split
from tasks.common import TRANSIENT_RETRIES, artifact_key, say, store
from tasks.registry import ChampionEvaluation, registry
from tasks.split import DatasetRef
from tasks.train import split_arrays

PREDICT_BATCH = 64
# Key numbers shown as the run's table artifact (the full evaluation is in evaluation.json).
TABLE_METRICS = ["n_images", *HEADLINE]


def predict_validation(
    model: keras.Model, dataset: DatasetRef, image_size: int
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Labels, covid probabilities and source names of the Val split, in the cached order."""
    (val,) = split_arrays(dataset, image_size, VAL)
    probabilities = model.predict(
        val.images.astype("float32"), batch_size=PREDICT_BATCH, verbose=0
    ).reshape(-1)
    frame = load_split(store(), dataset.split_key).set_index("dataset_key")
    sources = [str(s) for s in frame.loc[val.keys, "source"]]
    return val.labels, probabilities, sources


def staged_model(model_key: str) -> keras.Model:
    """A model staged by this run (not yet registered), through the local cache."""
    local = get_settings().cache_dir / model_key
    return keras.saving.load_model(store().download(model_key, local), compile=False)


def _evaluate(
    model: keras.Model, dataset: DatasetRef, image_size: int, rule: ThresholdRule
) -> tuple[Evaluation, np.ndarray, np.ndarray]:
    labels, probabilities, sources = predict_validation(model, dataset, image_size)
    evaluation = evaluate_predictions(
        labels,
        probabilities,
        sources=sources,
        rule=rule.rule,
        target_sensitivity=rule.target_sensitivity,
    )
    return evaluation, labels, probabilities


@task(name="evaluate-model")
def evaluate_model(
    model_key: str, image_size: int, dataset: DatasetRef, rule: ThresholdRule, run_prefix: str
) -> Evaluation:
    """AUC with its CI and the threshold metrics on the Val split; plots and a report in the store."""
    evaluation, labels, probabilities = _evaluate(
        staged_model(model_key), dataset, image_size, rule
    )
    report_uri = write_report(evaluation, labels, probabilities, f"{run_prefix}/evaluation")
    row = evaluation.model_dump(include=set(TABLE_METRICS))
    create_table_artifact(
        [{"metric": name, "value": row[name]} for name in TABLE_METRICS],
        key=artifact_key("evaluation"),
    )
    create_link_artifact(
        link=report_uri, link_text="Evaluation report", key=artifact_key("evaluation-report")
    )
    say(f"validation: {_headline(evaluation)}; report {report_uri}")
    return evaluation


def write_report(
    evaluation: Evaluation, labels: np.ndarray, probabilities: np.ndarray, prefix: str
) -> str:
    """evaluation.json, the plots and evaluation.md under ``prefix``; returns the report's URI.

    A copy is kept under the local state folder so the link artifact opens in a browser.
    """
    objects = store()
    plots = evaluation_plots(labels, probabilities, evaluation)
    report = evaluation_report_markdown(evaluation, plots)
    files = {"evaluation.json": evaluation.model_dump_json(indent=2).encode()}
    files |= plots | {"evaluation.md": report.encode()}
    local = get_settings().state_dir / "reports" / prefix
    local.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        objects.put_bytes(f"{prefix}/{name}", data)
        (local / name).write_bytes(data)
    create_markdown_artifact(markdown=report, key=artifact_key("evaluation-summary"))
    return (local / "evaluation.md").resolve().as_uri()


@task(name="evaluate-champion", **TRANSIENT_RETRIES)
def evaluate_champion(dataset: DatasetRef, rule: ThresholdRule) -> ChampionEvaluation | None:
    """The current champion re-evaluated on this run's Val split (None when there is none), so
    the promotion gate compares both models on the same images."""
    models = registry()
    try:
        model, card = models.load(CHAMPION)
    except RegistryError:
        say("no champion yet: the new model is gated on the minimums alone")
        return None
    image_size = int(card.parameters.get("training", {}).get("image_size", model.input_shape[1]))
    evaluation, _, _ = _evaluate(model, dataset, image_size, rule)
    say(f"champion v{card.version} on the same validation images: {_headline(evaluation)}")
    return ChampionEvaluation(version=card.version, evaluation=evaluation)


def _headline(evaluation: Evaluation) -> str:
    auc = "n/a" if evaluation.auc is None else f"{evaluation.auc:.3f}"
    if evaluation.auc_ci_low is not None:
        auc += f" (95% CI {evaluation.auc_ci_low:.3f}–{evaluation.auc_ci_high:.3f})"
    return (
        f"AUC {auc}, accuracy {evaluation.accuracy:.3f} at threshold {evaluation.threshold:.3f} "
        f"({evaluation.threshold_rule})"
    )
