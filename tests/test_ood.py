"""The out-of-distribution check: a small model trained here on real x-rays knows what it saw.

Fitted on the training images' penultimate features and calibrated on validation images (so
about 5% of them are flagged), it must flag random noise every time, and scoring must give noise
``status=out_of_distribution`` and refuse an 8 × 8 icon and a 2000 × 40 strip outright.
"""

from __future__ import annotations

import io

import keras
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxr_model.image_checks import ImageChecks
from cxr_model.images import Preprocessing, to_model_input
from cxr_model.model import compact_cnn
from cxr_model.ood import OodDetector, feature_extractor, thumbnails, with_features
from cxr_model.quality import QualitySettings
from cxr_model.scoring import (
    OK,
    OUT_OF_DISTRIBUTION,
    REJECTED,
    ScoreStore,
    keras_predictor,
    score_chunk,
)

SIZE = 64
PRE = Preprocessing(resize="pad", equalize=True)


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def noise_png(seed: int, shape=(300, 360)) -> bytes:
    return _png(np.random.default_rng(seed).integers(0, 255, shape, dtype=np.uint8))


@pytest.fixture(scope="module")
def trained(real_data):
    """A compact CNN fitted for a few epochs on frontal real x-rays (patients split 80/20)."""
    keras.utils.set_random_seed(1)
    frame = pd.read_csv(real_data / "manifest.csv", dtype=str)
    frame = frame[~frame["view"].fillna("").str.upper().eq("L")]
    patients = frame["patient_id"].drop_duplicates().sample(frac=0.2, random_state=0)
    val = frame[frame["patient_id"].isin(patients)]
    train = frame[~frame["patient_id"].isin(patients)]

    def pixels(rows):
        data = [(real_data / f).read_bytes() for f in rows["file"]]
        return np.stack([to_model_input(d, SIZE, preprocessing=PRE) for d in data])

    x_train, x_val = pixels(train), pixels(val)
    model = compact_cnn(SIZE)
    model.compile("adam", "binary_crossentropy")
    labels = (train["label"] == "covid").to_numpy("float32")
    model.fit(x_train.astype("float32"), labels, epochs=4, batch_size=32, verbose=0)
    features = feature_extractor(model)

    def views(x):
        return features.predict(x.astype("float32"), verbose=0), thumbnails(x)

    detector = OodDetector.fit(views(x_train), views(x_val))
    return model, detector, x_val


@pytest.mark.slow
def test_validation_images_are_mostly_in_distribution_and_noise_never(trained):
    model, detector, x_val = trained
    noise = np.stack([to_model_input(noise_png(n), SIZE, preprocessing=PRE) for n in range(20)])
    features = feature_extractor(model)

    val_scores = detector.scores(features.predict(x_val.astype("float32"), verbose=0), x_val)
    noise_scores = detector.scores(features.predict(noise.astype("float32"), verbose=0), noise)

    assert np.mean(val_scores > 1) == pytest.approx(0.05, abs=0.02)  # calibrated on them
    assert (noise_scores > 1).all()


@pytest.mark.slow
def test_lateral_views_and_gradients_are_out_of_distribution(trained, real_data):
    """A frontal-only model: the real set's lateral views and smooth gradients look like none
    of its training images (the layout view catches what the network's features may not)."""
    model, detector, _ = trained
    frame = pd.read_csv(real_data / "manifest.csv", dtype=str)
    lateral = frame[frame["view"].fillna("").str.upper().eq("L")]["file"]
    ramp = np.tile(np.linspace(0, 255, 360).astype(np.uint8), (300, 1))
    data = [(real_data / f).read_bytes() for f in lateral]
    data += [_png(np.roll(ramp, n * 30, axis=1)) for n in range(6)]
    images = np.stack([to_model_input(d, SIZE, preprocessing=PRE) for d in data])

    scores = detector.scores(
        feature_extractor(model).predict(images.astype("float32"), verbose=0), images
    )

    assert len(lateral) == 4
    assert np.mean(scores > 1) >= 0.8


@pytest.mark.slow
def test_the_detector_round_trips_through_bytes(trained):
    _, detector, _ = trained

    again = OodDetector.from_bytes(detector.to_bytes())

    assert again.threshold == detector.threshold and again.n_train == detector.n_train
    assert again.scales == detector.scales
    np.testing.assert_array_equal(again.features.precision, detector.features.precision)
    np.testing.assert_array_equal(again.pixels.mean, detector.pixels.mean)


def test_an_ensemble_has_no_feature_head():
    from cxr_model.ensemble import average_ensemble

    ensemble = average_ensemble([compact_cnn(SIZE), compact_cnn(SIZE)])

    with pytest.raises(ValueError, match="no out-of-distribution check"):
        with_features(ensemble)


@pytest.mark.slow
def test_scoring_flags_noise_and_refuses_what_training_would(trained, real_data, store, tmp_path):
    model, detector, _ = trained
    xray = sorted((real_data / "nih" / "normal").iterdir())[0]
    files = {
        "xray.png": xray.read_bytes(),
        "copy-of-xray.png": xray.read_bytes(),
        "icon.png": _png(np.full((8, 8), 128, np.uint8)),
        "strip.png": _png(np.full((40, 2000), 128, np.uint8)),
        **{f"noise-{n}.png": noise_png(100 + n) for n in range(8)},
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    paths = sorted(str(p) for p in tmp_path.iterdir())

    scored = score_chunk(
        paths,
        store,
        ScoreStore(store, "ood-test", 1),
        keras_predictor(model, detector),
        image_size=SIZE,
        threshold=0.5,
        run="r",
        preprocessing=PRE,
        checks=ImageChecks.from_suite(QualitySettings()),
    )

    rows = {p.source_path.rsplit("/", 1)[-1]: p for p in scored.predictions}
    assert rows["icon.png"].status == REJECTED
    assert rows["icon.png"].error == "shorter side 8 px < 64 px"
    assert (
        rows["strip.png"].status == REJECTED and "aspect ratio 50 > 2.5" in rows["strip.png"].error
    )
    assert rows["icon.png"].probability_covid is None
    noise = [rows[f"noise-{n}.png"] for n in range(8)]
    assert {r.status for r in noise} == {OUT_OF_DISTRIBUTION}
    assert all(r.ood_score > 1 and r.in_distribution is False for r in noise)
    assert all(r.predicted_label is None and r.probability_covid is not None for r in noise)
    assert rows["xray.png"].in_distribution is not None
    # input order: the copy's name sorts first, so it is predicted and xray.png reuses it
    assert [rows["copy-of-xray.png"].reused, rows["xray.png"].reused] == [False, True]
    assert scored.summary.by_status[REJECTED] == 2
    assert scored.summary.by_status[OUT_OF_DISTRIBUTION] >= 8
    assert scored.summary.rejected_by_reason == {"shorter side": 2, "aspect ratio": 1}
    assert scored.summary.mostly_out_of_distribution and scored.summary.ood_checked
    if rows["xray.png"].status == OK:
        assert rows["xray.png"].predicted_label in {"covid", "normal"}


@pytest.mark.parametrize(("n", "rank"), [(10, 10), (19, 19), (20, 20), (100, 96), (1000, 951)])
def test_the_threshold_is_the_conformal_rank_of_val(n, rank):
    from cxr_model.ood import conformal_threshold

    distances = np.random.default_rng(n).permutation(np.arange(1.0, n + 1))

    assert conformal_threshold(distances, 0.05) == rank  # distance k has rank k
