"""Quality reports: outcome models, their Markdown summaries, and the Data Docs audit page and banner.

:class:`QualityReport` (manifest) and :class:`SplitReport` (Train/Val leakage) say whether the run
may go on (``passed``: no critical failure) and render the counts, failed expectations and rows
to act on as Markdown. The shortcut audit's page and a banner on the Data Docs index make its
warnings visible where people look at the data quality.
"""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from cxr_model.audit import ShortcutAudit
from cxr_model.markdown import markdown_table
from cxr_model.quality.suites import GX_STORE
from cxr_model.safe_text import markdown_text
from cxr_model.split import TRAIN, VAL

AUDIT_PAGE = "shortcut_audit.html"


_BANNER_FILE = "index_banner.html"


class Rejection(BaseModel):
    """A quarantined manifest row and why, e.g. ``shorter side 40 px < 64 px``."""

    key: str
    original_path: str
    reasons: list[str]


class ExpectationOutcome(BaseModel):
    """One expectation's result, reduced to what a user needs to act on it."""

    suite: str
    expectation: str
    column: str | None
    severity: Literal["critical", "warning"]
    success: bool
    unexpected_count: int
    summary: str


class OutcomeReport(BaseModel):
    """Expectation outcomes, and what they mean for the run."""

    outcomes: list[ExpectationOutcome]

    @property
    def critical_failures(self) -> list[ExpectationOutcome]:
        """Failed critical expectations: the run must stop."""
        return [o for o in self.outcomes if not o.success and o.severity == "critical"]

    @property
    def warnings(self) -> list[ExpectationOutcome]:
        """Failed warnings: rows quarantined or pairs listed; the run goes on."""
        return [o for o in self.outcomes if not o.success and o.severity == "warning"]

    @property
    def passed(self) -> bool:
        """True when no critical expectation failed."""
        return not self.critical_failures


class QualityReport(OutcomeReport):
    """What :func:`validate_manifest` found; ``docs_dir`` holds the Data Docs ``index.html``.

    ``audit`` is the shortcut audit of the accepted rows (its flags are warnings only).
    """

    total: int
    accepted_keys: list[str]
    rejected: list[Rejection]
    docs_dir: str
    audit: ShortcutAudit | None = None

    def summary_markdown(self, limit: int = 200) -> str:
        """Counts, failed expectations, and the rejected files (at most ``limit``) as Markdown."""
        flags = self.audit.flags if self.audit is not None else []
        status = "FAILED" if not self.passed else "passed"
        if flags and self.passed:
            status = f"passed with {len(flags)} SHORTCUT WARNING(S)"
        lines = [f"## Data quality: {status}", ""]
        lines += [f"**Warning: {markdown_text(flag.warning)}**  " for flag in flags]
        if flags:
            lines += [
                "A model can score well on these data by learning the shortcut instead of the "
                "disease; only held-out-source and within-source results show which it learned.",
                "",
            ]
        lines += [
            f"- files: {self.total}, accepted: {len(self.accepted_keys)}, "
            f"rejected: {len(self.rejected)}",
            f"- critical failures: {len(self.critical_failures)}, warnings: "
            f"{len(self.warnings) + len(flags)} ({len(self.warnings)} from expectations, "
            f"{len(flags)} from the shortcut audit)",
            f"- Data Docs: `{Path(self.docs_dir) / 'index.html'}`",
        ]
        if self.audit is not None:
            lines += [
                f"- shortcut audit: {len(self.audit.flags)} flag(s), "
                f"`{Path(self.docs_dir) / AUDIT_PAGE}`",
                "",
                self.audit.summary_markdown(heading="###").rstrip("\n"),
            ]
        lines += _failed_table(self.critical_failures + self.warnings)
        if self.rejected:
            lines += [
                "",
                "### Rejected files",
                "",
                *markdown_table(
                    ["key", "original path", "reasons"],
                    [(r.key, r.original_path, "; ".join(r.reasons)) for r in self.rejected[:limit]],
                ),
            ]
            if len(self.rejected) > limit:
                lines.append(f"\n... and {len(self.rejected) - limit} more rejected files")
        return "\n".join(lines) + "\n"


class QualityError(Exception):
    """Raised by callers when a report has critical failures; one line per failure."""

    def __init__(self, report: QualityReport | SplitReport) -> None:
        self.report = report
        failures = report.critical_failures
        lines = [f"data quality failed: {len(failures)} critical expectation(s) failed"]
        lines += [
            f"- {o.suite}: {o.expectation}{f' [{o.column}]' if o.column else ''}: {o.summary}"
            for o in failures
        ]
        self.lines = lines  # printed one per console line
        super().__init__("\n".join(lines))

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.report,))


class NearDuplicate(BaseModel):
    """A validation image that looks like a training image (dhash distance ≤ the setting)."""

    val_key: str
    val_path: str
    train_key: str
    train_path: str
    distance: int


class SplitReport(OutcomeReport):
    """What :func:`validate_split` found; ``docs_dir`` holds the Data Docs ``index.html``."""

    total: int
    counts: dict[str, dict[str, int]]  # split -> label -> images
    near_duplicates: list[NearDuplicate]
    hashed: dict[str, int]  # Val/Train images with a perceptual hash (compared for near-dups)
    docs_dir: str

    def summary_markdown(self, limit: int = 50) -> str:
        """Counts per split, failed expectations and near-duplicate pairs as Markdown."""
        status = "passed" if self.passed else "FAILED"
        labels = sorted({label for per in self.counts.values() for label in per})
        lines = [
            f"## Split quality: {status}",
            "",
            f"- images: {self.total}; "
            + "; ".join(
                f"{split}: " + ", ".join(f"{label} {per.get(label, 0)}" for label in labels)
                for split, per in self.counts.items()
            ),
            f"- critical failures: {len(self.critical_failures)}, warnings: {len(self.warnings)}",
            f"- near-duplicates: {len(self.near_duplicates)} pair(s) among "
            f"{self.hashed.get(VAL, 0)} {VAL} × {self.hashed.get(TRAIN, 0)} {TRAIN} images "
            "with a perceptual hash",
            f"- Data Docs: `{Path(self.docs_dir) / 'index.html'}`",
        ]
        lines += _failed_table(self.critical_failures + self.warnings)
        if self.near_duplicates:
            lines += [
                "",
                "### Near-duplicates across splits",
                "",
                *markdown_table(
                    ["distance", "Val image", "Train image"],
                    [
                        (d.distance, d.val_path or d.val_key, d.train_path or d.train_key)
                        for d in self.near_duplicates[:limit]
                    ],
                    align="r",
                ),
            ]
            if len(self.near_duplicates) > limit:
                lines.append(f"\n... and {len(self.near_duplicates) - limit} more pairs")
        return "\n".join(lines) + "\n"


def write_audit_pages(docs_dir: Path, audit: ShortcutAudit) -> None:
    """``shortcut_audit.html`` beside the Data Docs index, and a banner at the top of the index
    (kept in ``.gx`` so later rebuilds of the index, e.g. by :func:`validate_split`, show it)."""
    (docs_dir / AUDIT_PAGE).write_text(audit.to_html(), encoding="utf-8")
    if audit.flags:
        items = "".join(f"<li>{html.escape(flag.warning)}</li>" for flag in audit.flags)
        banner = (
            '<div id="cxr-shortcut-audit" style="background:#fde2e1;border:2px solid #c0392b;'
            'padding:.8em 1.2em;margin:0;font-family:sans-serif">'
            f"<strong>Shortcut audit: {len(audit.flags)} feature(s) separate the labels on "
            f'their own</strong><ul style="margin:.4em 0">{items}</ul>'
            f'<a href="{AUDIT_PAGE}">Shortcut audit details</a></div>'
        )
    else:
        banner = (
            '<div id="cxr-shortcut-audit" style="padding:.5em 1.2em;font-family:sans-serif">'
            f'Shortcut audit: no flags. <a href="{AUDIT_PAGE}">Details</a></div>'
        )
    store = docs_dir / GX_STORE
    store.mkdir(parents=True, exist_ok=True)
    (store / _BANNER_FILE).write_text(banner, encoding="utf-8")
    decorate_index(docs_dir)


def decorate_index(docs_dir: Path) -> None:
    """Put the stored audit banner right after ``<body>`` of the Data Docs index (once)."""
    index, banner_file = docs_dir / "index.html", docs_dir / GX_STORE / _BANNER_FILE
    if not index.is_file() or not banner_file.is_file():
        return
    page = index.read_text(encoding="utf-8")
    if 'id="cxr-shortcut-audit"' in page:
        return
    body = re.search(r"<body[^>]*>", page)
    if body:
        page = (
            page[: body.end()]
            + "\n"
            + banner_file.read_text(encoding="utf-8")
            + "\n"
            + page[body.end() :]
        )
        index.write_text(page, encoding="utf-8")


def _failed_table(failed: list[ExpectationOutcome]) -> list[str]:
    """The failed expectations as a Markdown section (empty when none failed)."""
    if not failed:
        return []
    return [
        "",
        "### Failed expectations",
        "",
        *markdown_table(
            ["severity", "suite", "expectation", "column", "unexpected", "summary"],
            [
                (
                    o.severity,
                    o.suite,
                    f"`{o.expectation}`",
                    o.column or "",
                    o.unexpected_count,
                    o.summary,
                )
                for o in failed
            ],
            align="llllr",
        ),
    ]
