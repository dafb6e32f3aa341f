"""Stored scores, by image content and model version, so that no image is predicted twice.

``scores/<model name>/v<version>/batches/<UTC time>-<random>.json`` each hold the probabilities
(and OOD scores) one chunk's newly predicted images got from that version, by sha256, with when
and by which run. A batch is written create-only, once per chunk, after its images were
predicted, and never changes. When two runs race on the same image, both batches hold it and the
batch whose key sorts first (the earlier one) is the one every reader uses. Looking scores up
costs one listing of the version's batches and one GET per batch not read yet, not a request
per file.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

from pydantic import BaseModel, Field

from cxr_model.storage import ObjectStore

SCORES_PREFIX = "scores"
BATCHES_FOLDER = "batches"
BATCH_TOKEN_BYTES = 4  # random hex in a batch's key, so two chunks never pick the same key
PARALLEL_GETS = 8  # batches read at once: each read mostly waits on the store


class StoredScore(BaseModel):
    """The probability one model version gave to one image content."""

    sha256: str
    probability_covid: float
    scored_at: str
    run: str
    ood_score: float | None = None


class ScoreBatch(BaseModel):
    """The scores one chunk stored: probability (and OOD score) by sha256, when, by which run."""

    run: str
    scored_at: str
    probabilities: dict[str, float]
    ood_scores: dict[str, float] = Field(default_factory=dict)


class ScoreStore:
    """Stored scores of one model version, by image sha256 (see the module docstring).

    An instance remembers the batches it has read and reads only newer ones, so one instance
    should serve every chunk a process scores with a version; it is safe to share between
    threads. It holds every score of the version in memory, about 0.2 KB each.
    """

    def __init__(self, store: ObjectStore, model_name: str, version: int):
        self.store = store
        self.version = version
        self.prefix = f"{SCORES_PREFIX}/{model_name}/v{version}/{BATCHES_FOLDER}/"
        self._lock = threading.Lock()
        self._batch_numbers: dict[str, int] = {}  # batch key → its position in _batches
        self._batches: list[tuple[str, str, str]] = []  # (key, run, scored_at)
        # sha256 → (batch number, probability, OOD score)
        self._best: dict[str, tuple[int, float, float | None]] = {}

    def lookup(self, sha256s: Iterable[str]) -> dict[str, StoredScore]:
        """The stored scores of those of ``sha256s`` this version has scored, by sha256."""
        with self._lock:
            self._catch_up()
            return {sha: self._stored(sha) for sha in set(sha256s) if sha in self._best}

    def save(
        self,
        probabilities: Mapping[str, float],
        run: str,
        ood_scores: Mapping[str, float] | None = None,
    ) -> None:
        """Store new scores as one create-only batch; with no scores nothing is written."""
        if not probabilities:
            return
        now = datetime.now(UTC)
        batch = ScoreBatch(
            run=run,
            scored_at=now.isoformat(timespec="seconds"),
            probabilities=dict(probabilities),
            ood_scores=dict(ood_scores or {}),
        )
        key = f"{self.prefix}{now:%Y%m%dT%H%M%S%fZ}-{secrets.token_hex(BATCH_TOKEN_BYTES)}.json"
        self.store.put_bytes(
            key, batch.model_dump_json().encode(), content_type="application/json", create_only=True
        )
        with self._lock:
            self._add(key, batch)

    def scored(self) -> set[str]:
        """The sha256 of every content this version has a score for."""
        with self._lock:
            self._catch_up()
            return set(self._best)

    def _catch_up(self) -> None:
        """Read the batches stored since the last look; start again if some were deleted."""
        listed = [key for key in self.store.list_keys(self.prefix) if key.endswith(".json")]
        if not self._batch_numbers.keys() <= set(listed):
            self._batch_numbers, self._batches, self._best = {}, [], {}
        unread = [key for key in listed if key not in self._batch_numbers]
        if not unread:
            return
        with ThreadPoolExecutor(max_workers=PARALLEL_GETS) as pool:
            for key, data in zip(unread, pool.map(self.store.get_bytes, unread), strict=True):
                self._add(key, ScoreBatch.model_validate_json(data))

    def _add(self, key: str, batch: ScoreBatch) -> None:
        """Take in a batch; where a content is in several, the batch whose key sorts first wins."""
        if key in self._batch_numbers:
            return
        number = len(self._batches)
        self._batch_numbers[key] = number
        self._batches.append((key, batch.run, batch.scored_at))
        for sha256, probability in batch.probabilities.items():
            held = self._best.get(sha256)
            if held is None or key < self._batches[held[0]][0]:
                self._best[sha256] = (number, probability, batch.ood_scores.get(sha256))

    def _stored(self, sha256: str) -> StoredScore:
        number, probability, ood_score = self._best[sha256]
        _, run, scored_at = self._batches[number]
        return StoredScore(
            sha256=sha256,
            probability_covid=probability,
            scored_at=scored_at,
            run=run,
            ood_score=ood_score,
        )
