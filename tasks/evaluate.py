"""Evaluate: score Val and the held-out sources with a model; record metrics, plots and a report.

Besides the internal Val numbers, every evaluation measures the model where a source shortcut
cannot help: on held-out sources and within sources that have both classes
(:mod:`cxr_model.generalisation`).
"""

from __future__ import annotations

import json

import keras
import numpy as np
from prefect import task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from pydantic import BaseModel

from cxr_model.evaluate import (
    Evaluation,
    ThresholdRule,
    evaluate_predictions,
    evaluation_plots,
    evaluation_report_markdown,
)
from cxr_model.gate import HEADLINE
from cxr_model.generalisation import (
    Generalisation,
    assess_generalisation,
    estimates_markdown,
    honest_line,
)
from cxr_model.images import Preprocessing
from cxr_model.ood import OOD_FILE, OodCheck, OodDetector, thumbnails, with_features
from cxr_model.predict import predict_probabilities, predict_with_features
from cxr_model.registry import CHAMPION, RegistryError
from cxr_model.split import HOLDOUT, TRAIN, VAL, load_split
from cxr_model.train import TrainParams
from tasks.common import TRANSIENT_RETRIES, artifact_key, link, put_report, registry, say, store
from tasks.shared import ChampionEvaluation, DatasetRef, split_arrays, staged_model

# Key numbers shown as the run's table artifact (the full evaluation is in evaluation.json).
TABLE_METRICS = ["n_images", *HEADLINE]


class ModelEvaluation(BaseModel):
    """The internal Val evaluation and the evidence from unseen sources, with the report; and
    the model's out-of-distribution check, fitted on Train and calibrated on Val, staged at
    ``ood_key`` (None, with ``ood_note`` saying why, when it could not be fitted)."""

    internal: Evaluation
    generalisation: Generalisation
    report_uri: str  # s3:// URI of evaluation.html
    report_link: str = ""  # the same, as an address a browser opens (cxr_model.links)
    ood: OodCheck | None = None
    ood_key: str | None = None
    ood_note: str = ""


class Predictions(BaseModel):
    """Labels, covid probabilities, sources and split names of a dataset's images, in one order."""

    labels: list[float]
    probabilities: list[float]
    sources: list[str]
    splits: list[str]

    def of(self, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
        keep = np.asarray(self.splits) == split
        sources = [s for s, k in zip(self.sources, keep, strict=True) if k]
        return np.asarray(self.labels)[keep], np.asarray(self.probabilities)[keep], sources


def predict_splits(
    model: keras.Model,
    dataset: DatasetRef,
    image_size: int,
    preprocessing: Preprocessing,
    splits: tuple[str, ...] = (VAL, HOLDOUT),
    features: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
) -> Predictions:
    """The model's predictions on the named splits of the dataset (a missing split gives none).

    With a ``features`` dict, the same pass also fills it with each split's penultimate features
    (:func:`cxr_model.ood.with_features`) and thumbnails (:func:`cxr_model.ood.thumbnails`), and
    the predictions leave out ``Train``.
    """
    frame = load_split(store(), dataset.split_key).set_index("dataset_key")
    present = [split for split in splits if (frame["split"] == split).any()]
    network = with_features(model) if features is not None else model
    found = Predictions(labels=[], probabilities=[], sources=[], splits=[])
    for split, arrays in zip(
        present,
        split_arrays(dataset, image_size, *present, preprocessing=preprocessing),
        strict=True,
    ):
        if features is not None:
            probabilities, penultimate = predict_with_features(network, arrays.images)
            features[split] = (penultimate, thumbnails(arrays.images))
        else:
            probabilities = predict_probabilities(network, arrays.images)
        if split == TRAIN:
            continue
        found.labels += arrays.labels.tolist()
        found.probabilities += probabilities.tolist()
        found.sources += [str(s) for s in frame.loc[arrays.keys, "source"]]
        found.splits += [split] * len(arrays)
    return found


def fit_ood_check(
    features: dict[str, tuple[np.ndarray, np.ndarray]], key: str
) -> tuple[OodCheck | None, str]:
    """The OOD detector fitted on Train's views and calibrated on Val's, stored at ``key``;
    with the share of each other split it flags. (None, why) when it cannot be fitted."""
    if TRAIN not in features or VAL not in features:
        return None, "no out-of-distribution check: the dataset has no Train or no Val images"
    try:
        detector = OodDetector.fit(features[TRAIN], features[VAL])
    except ValueError as exc:
        return None, f"no out-of-distribution check: {exc}"
    flagged = {
        split: round(float(np.mean(detector.distances(*views) / detector.threshold > 1.0)), 4)
        for split, views in features.items()
        if split != TRAIN
    }
    data = detector.to_bytes()
    store().put_bytes(key, data)
    return OodCheck.of(data, detector, flagged), ""


def _evaluate_val(predictions: Predictions, rule: ThresholdRule) -> Evaluation:
    labels, probabilities, sources = predictions.of(VAL)
    return evaluate_predictions(
        labels,
        probabilities,
        sources=sources,
        rule=rule.rule,
        target_sensitivity=rule.target_sensitivity,
    )


@task(name="evaluate-model")
def evaluate_model(
    model_key: str,
    training: TrainParams,
    dataset: DatasetRef,
    rule: ThresholdRule,
    run_prefix: str,
) -> ModelEvaluation:
    """AUC with its CI and the threshold metrics on Val, and the same on the held-out sources and
    within sources (the honest estimates); plots and a report in the store."""
    model = staged_model(model_key)
    features: dict[str, tuple[np.ndarray, np.ndarray]] | None = {}
    try:
        with_features(model)
    except ValueError as exc:  # an ensemble: evaluated without an OOD check
        features, ood, ood_note = None, None, f"no out-of-distribution check: {exc}"
    predictions = predict_splits(
        model,
        dataset,
        training.image_size,
        training.preprocessing,
        splits=(TRAIN, VAL, HOLDOUT) if features is not None else (VAL, HOLDOUT),
        features=features,
    )
    if features is not None:
        ood, ood_note = fit_ood_check(features, f"{run_prefix}/{OOD_FILE}")
    say(_ood_line(ood) if ood else ood_note)
    evaluation = _evaluate_val(predictions, rule)
    found = assess_generalisation(
        labels=np.asarray(predictions.labels),
        probabilities=np.asarray(predictions.probabilities),
        sources=predictions.sources,
        splits=predictions.splits,
        threshold=evaluation.threshold,
        held_out_sources=dataset.held_out.sources,
        held_out_reason=dataset.held_out.reason,
        shortcut_flags=dataset.shortcut_flags,
    )
    labels, probabilities, _ = predictions.of(VAL)
    report_key = write_report(evaluation, found, labels, probabilities, f"{run_prefix}/evaluation")
    report_uri, report_link = store().uri(report_key), link(report_key)
    row = evaluation.model_dump(include=set(TABLE_METRICS))
    table = [{"metric": name, "value": row[name]} for name in TABLE_METRICS]
    table += [{"metric": name, "value": value} for name, value in found.evidence().items()]
    create_table_artifact(table, key=artifact_key("evaluation"))
    create_link_artifact(
        link=report_link,
        link_text="Evaluation report (HTML, with plots)",
        key=artifact_key("evaluation-report"),
        description=f"Stored at {report_uri}",
    )
    say(f"validation: {_headline(evaluation)}; report {report_uri}")
    say(honest_line(evaluation, found))
    return ModelEvaluation(
        internal=evaluation,
        generalisation=found,
        report_uri=report_uri,
        report_link=report_link,
        ood=ood,
        ood_key=f"{run_prefix}/{OOD_FILE}" if ood else None,
        ood_note=ood_note,
    )


def _ood_line(ood: OodCheck) -> str:
    shares = ", ".join(f"{share:.0%} of {split}" for split, share in ood.flagged.items())
    return (
        f"out-of-distribution check fitted on {ood.n_train} Train images; it flags {shares} "
        f"(threshold set so that {ood.flag_rate:.0%} of Val is flagged)"
    )


def write_report(
    evaluation: Evaluation,
    found: Generalisation,
    labels: np.ndarray,
    probabilities: np.ndarray,
    prefix: str,
) -> str:
    """evaluation.json, the plots, evaluation.md (linking the plots beside it) and evaluation.html
    (plots inline) under ``prefix``, and the summary artifact with the plots inline; returns the
    HTML report's key."""
    objects = store()
    plots = evaluation_plots(labels, probabilities, evaluation)
    estimates = estimates_markdown(evaluation, found) + "\n"
    record = {"internal": evaluation.model_dump(), "generalisation": found.model_dump()}
    objects.put_bytes(f"{prefix}/evaluation.json", json.dumps(record, indent=2).encode())
    for name, data in plots.items():
        objects.put_bytes(f"{prefix}/{name}", data)
    shown = estimates + evaluation_report_markdown(evaluation, plots)
    html_key = put_report(
        f"{prefix}/evaluation.md",
        estimates + evaluation_report_markdown(evaluation, list(plots)),
        "Evaluation report",
        shown=shown,
    )
    create_markdown_artifact(markdown=shown, key=artifact_key("evaluation-summary"))
    return html_key


@task(name="evaluate-champion", **TRANSIENT_RETRIES)
def evaluate_champion(dataset: DatasetRef, rule: ThresholdRule) -> ChampionEvaluation | None:
    """The current champion re-evaluated on this run's Val split (None when there is none), so
    the promotion gate compares both models on the same images. A champion that exists but
    cannot be loaded is returned with the reason, never taken for "no champion"."""
    models = registry()
    version = None
    try:
        current = models.alias(CHAMPION)
        if current is None:
            say("no champion yet: the new model is gated on the minimums alone")
            return None
        version = current.version
        model, card = models.load(version)
    except RegistryError as exc:
        say(f"the champion cannot be loaded, so the new model cannot be promoted: {exc}")
        return ChampionEvaluation(version=version, problem=str(exc))
    training = card.parameters.get("training", {})
    image_size = int(training.get("image_size", model.input_shape[1]))
    predictions = predict_splits(
        model, dataset, image_size, Preprocessing.of_model(training), splits=(VAL,)
    )
    evaluation = _evaluate_val(predictions, rule)
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
