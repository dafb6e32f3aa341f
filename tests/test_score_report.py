"""cxr_model.score_report: a scoring run's summary for people, and where its Parquet copy goes."""

from __future__ import annotations

from cxr_model.score_report import parquet_key_for, summary_markdown
from cxr_model.scoring import ERROR, OK, OUT_OF_DISTRIBUTION, REJECTED, ScoreSummary

URI = "s3://bucket/runs/score/r1/predictions.csv"
MODEL = dict(model_name="cxr", version=3, threshold=0.25, runtime="onnxruntime")


def test_parquet_copy_sits_beside_the_csv():
    assert parquet_key_for(URI) == "s3://bucket/runs/score/r1/predictions.parquet"
    assert parquet_key_for("runs/x/predictions.csv") == "runs/x/predictions.parquet"


def test_summary_lists_counts_model_speed_and_where_the_predictions_are():
    summary = ScoreSummary(
        files=8,
        scored=6,
        errors=1,
        predicted=4,
        reused=2,
        skipped=2,
        errors_by_reason={"unreadable": 1},
        by_label={"covid": 2, "normal": 3},
        by_status={OK: 5, OUT_OF_DISTRIBUTION: 1, REJECTED: 1, ERROR: 1},
        rejected_by_reason={"too small": 1},
        ood_checked=True,
    )

    markdown = summary_markdown("Scored inbox", summary, URI, 4.0, **MODEL)

    assert markdown.startswith("### Scored inbox\n\n| | |\n|---|---|\n")
    assert "| model | cxr version 3, threshold 0.25, run by onnxruntime |" in markdown
    assert "| files | 8 in the table, 2 left out as already scored |" in markdown
    assert "| ok | 5 (covid 2, normal 3) |" in markdown
    assert "| out of distribution | 1 (probability given, no label) |" in markdown
    assert "| rejected | 1 (too small 1) |" in markdown
    assert "| errors | 1 (unreadable 1) |" in markdown
    assert "| predicted now | 4 |" in markdown
    assert "| time | 4.0 s, 2.5 images/s |" in markdown
    assert "WARNING" not in markdown
    assert markdown.endswith(f"Predictions: `{URI}` (typed columns: `{parquet_key_for(URI)}`)")


def test_summary_warns_first_when_the_version_has_no_ood_check():
    summary = ScoreSummary(files=1, scored=1, by_status={OK: 1}, by_label={"normal": 1})

    markdown = summary_markdown("Scored", summary, URI, 0.0, **MODEL)

    assert markdown.splitlines()[2].startswith("**WARNING: this model version has no out-of-")
    assert "| out of distribution | not checked: this version has no OOD check |" in markdown
    assert "| time | 0.0 s, 0.0 images/s |" in markdown
    assert "| rejected | 0 (none) |" in markdown
