"""Scoring's per-image checks: the image suite's expectations, one image at a time."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from test_quality import STRIP, TOO_SMALL, manifest, validate

from cxr_model.image_checks import SCORING_FACTS, ImageChecks, scoring_facts
from cxr_model.quality import QualitySettings


@pytest.mark.parametrize(
    ("facts", "reasons"),
    [
        (("PNG", 1024, 900, 5000), []),
        (("PNG", 8, 8, 90), ["shorter side 8 px < 64 px"]),
        (
            ("PNG", 2000, 40, 900),
            [
                "shorter side 40 px < 64 px",
                "aspect ratio 50 > 2.5 (long side / short side): not the shape of a chest x-ray",
            ],
        ),
        (("GIF", 300, 300, 900), ["format GIF not allowed (allowed: PNG, JPEG, WEBP, BMP, TIFF)"]),
    ],
    ids=["x-ray", "icon", "strip", "gif"],
)
def test_an_image_fails_with_the_suites_reasons(facts, reasons) -> None:
    checks = ImageChecks.from_suite(QualitySettings())

    assert checks.failures(scoring_facts(*facts)) == reasons


def test_the_settings_of_the_model_apply() -> None:
    strict = ImageChecks.from_suite(QualitySettings(min_side=512, max_aspect_ratio=1.2))

    assert strict.failures(scoring_facts("PNG", 400, 600, 9)) == [
        "shorter side 400 px < 512 px",
        "aspect ratio 1.5 > 1.2 (long side / short side): not the shape of a chest x-ray",
    ]


def test_scoring_refuses_what_training_quarantines(tmp_path: Path) -> None:
    """The same rows, through GX (training) and one at a time (scoring): the same verdicts.

    (An undecodable file is an error before any check, in scoring as in ingest.)
    """
    frame = manifest(
        20, r1=TOO_SMALL, r2=STRIP, r3=dict(format="TGA"), r4=dict(format="GIF"), r5=dict(height=63)
    )
    trained = {r.key: r.reasons for r in validate(frame, tmp_path).rejected}
    checks = ImageChecks.from_suite(QualitySettings())

    scored = {}
    for row in frame.to_dict("records"):
        facts = scoring_facts(row["format"], row["width"], row["height"], row["bytes"])
        assert set(facts) == set(SCORING_FACTS)
        if failures := checks.failures(facts):
            scored[row["key"]] = failures
    assert scored == trained
    assert pd.Series(list(scored)).tolist() == [f"raw/000{i}.png" for i in range(1, 6)]
