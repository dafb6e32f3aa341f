"""What a scoring run tells people: its summary in Markdown (counts, the model, speed, where the
predictions are) and where the Parquet copy of its predictions CSV goes."""

from __future__ import annotations

from cxr_model import scoring


def parquet_key_for(csv_key: str) -> str:
    """Where the Parquet copy of the predictions CSV at ``csv_key`` (a key or URI) goes."""
    return csv_key.removesuffix(".csv") + ".parquet"


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{name} {count}" for name, count in sorted(counts.items())) or "none"


def summary_markdown(
    title: str,
    summary: scoring.ScoreSummary,
    uri: str,
    seconds: float,
    *,
    model_name: str,
    version: int,
    threshold: float,
    runtime: str,
) -> str:
    """The run's summary for people: counts, model, speed and where the predictions (``uri``,
    the CSV) are; a warning first when the inputs look unlike the training data."""
    rate = (summary.files + summary.skipped) / seconds if seconds > 0 else 0.0
    status = summary.by_status
    rows = [
        (
            "model",
            f"{model_name} version {version}, threshold {threshold:g}, run by {runtime}",
        ),
        ("files", f"{summary.files} in the table, {summary.skipped} left out as already scored"),
        ("ok", f"{status.get(scoring.OK, 0)} ({_counts(summary.by_label)})"),
        (
            "out of distribution",
            f"{summary.out_of_distribution} (probability given, no label)"
            if summary.ood_checked or not summary.scored
            else "not checked: this version has no OOD check",
        ),
        ("rejected", f"{status.get(scoring.REJECTED, 0)} ({_counts(summary.rejected_by_reason)})"),
        ("errors", f"{summary.errors} ({_counts(summary.errors_by_reason)})"),
        ("predicted now", str(summary.predicted)),
        ("reused (earlier scoring or the same content)", str(summary.reused)),
        ("time", f"{seconds:.1f} s, {rate:.1f} images/s"),
    ]
    lines = [f"### {title}", ""]
    warning = scoring.distribution_warning(summary)
    if warning:
        lines += [f"**WARNING: {warning}**", ""]
    lines += ["| | |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in rows]
    parquet = parquet_key_for(uri)
    return "\n".join([*lines, "", f"Predictions: `{uri}` (typed columns: `{parquet}`)"])
