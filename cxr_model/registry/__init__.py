"""The model registry: numbered, immutable model versions and movable aliases, in S3.

:class:`Registry` is the one entry point; its parts live in one module each:

- :mod:`~cxr_model.registry.cards`: what is stored about a version (its card), and card diffs;
- :mod:`~cxr_model.registry.versions`: claiming, completing and attaching to versions;
- :mod:`~cxr_model.registry.aliases`: compare-and-swap aliases, their history and rollback;
- :mod:`~cxr_model.registry.gc`: removing incomplete versions no alias needs.

Loading checks the model file's sha256 against the card and uses Keras safe mode; Keras is
imported only then, so listing and moving aliases stay light. Scoring loads the version's ONNX
export instead (:mod:`cxr_model.inference`), verified the same way, without TensorFlow.
:meth:`Registry.describe` lists every version and alias, marking those that cannot be read.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from cxr_model.registry import gc as _gc
from cxr_model.registry.aliases import (
    ALIAS_NAME,
    ALIAS_RETRY_JITTER_S,
    CANDIDATE,
    CHAMPION,
    MAX_ALIAS_ATTEMPTS,
    ROLLBACK,
    VERSION_LIKE,
    Alias,
    Aliases,
    AliasMove,
    AliasNameError,
    check_alias_name,
)
from cxr_model.registry.cards import (
    ATTACHMENT_NAME,
    CARD_FILE,
    COMPLETE,
    DIFF_FIELDS,
    INCOMPLETE,
    MISSING,
    MODEL_FILE,
    NO_CARD,
    NO_MODEL,
    REGISTRY_PREFIX,
    UNREADABLE,
    FieldDifference,
    ModelCard,
    RegistryError,
    UnreadableEntry,
    VersionState,
    code_version,
    diff_cards,
    flatten,
    library_versions,
    one_line,
    sha256_file,
)
from cxr_model.registry.gc import GC_MIN_AGE, Leftover
from cxr_model.registry.versions import MAX_CLAIM_ATTEMPTS, Versions

if TYPE_CHECKING:
    import keras

__all__ = [
    "ALIAS_NAME",
    "ALIAS_RETRY_JITTER_S",
    "ATTACHMENT_NAME",
    "Alias",
    "AliasMove",
    "AliasNameError",
    "Aliases",
    "CANDIDATE",
    "CARD_FILE",
    "CHAMPION",
    "COMPLETE",
    "DIFF_FIELDS",
    "FieldDifference",
    "GC_MIN_AGE",
    "INCOMPLETE",
    "Leftover",
    "MAX_ALIAS_ATTEMPTS",
    "MAX_CLAIM_ATTEMPTS",
    "MISSING",
    "MODEL_FILE",
    "ModelCard",
    "NO_CARD",
    "NO_MODEL",
    "REGISTRY_PREFIX",
    "ROLLBACK",
    "Registry",
    "RegistryError",
    "UNREADABLE",
    "UnreadableEntry",
    "VERSION_LIKE",
    "VersionState",
    "Versions",
    "check_alias_name",
    "code_version",
    "diff_cards",
    "flatten",
    "library_versions",
    "one_line",
    "sha256_file",
]


class Registry(Aliases):
    """The registry of one model name in one store: versions, aliases, loading and listing."""

    def diff(
        self, a: str | int, b: str | int, *, everything: bool = False
    ) -> list[FieldDifference]:
        """:func:`diff_cards` of two versions given as numbers or aliases."""
        return diff_cards(
            self.card(self.resolve(a)), self.card(self.resolve(b)), everything=everything
        )

    def load(self, ref: str | int) -> tuple[keras.Model, ModelCard]:
        """The model behind ``ref``, verified against its card's sha256, loaded in safe mode."""
        import keras

        card = self.complete_card(self.resolve(ref))
        path = self._cached(card, card.model_key, card.model_sha256)
        try:
            model = keras.saving.load_model(path, compile=False, safe_mode=True)
        except Exception as exc:  # noqa: BLE001 - a stored file is input: any failure is refused
            reason = " ".join(str(exc).split())[:300]
            raise RegistryError(
                f"{self.store.uri(card.model_key)} cannot be loaded by Keras: "
                f"{type(exc).__name__}: {reason}"
            ) from exc
        return model, card

    def inference_file(self, ref: str | int) -> tuple[Path | None, ModelCard]:
        """The local copy of the ONNX export of the version behind ``ref``, verified against the
        sha256 its card records; None for a version registered before exports existed."""
        card = self.complete_card(self.resolve(ref))
        if card.inference is None:
            return None, card
        file = str(card.inference.get("file", ""))
        if not ATTACHMENT_NAME.fullmatch(file):
            raise UnreadableEntry(
                f"{self.store.uri(self._card_key(card.version))}: inference file {file!r} is not "
                "a plain file name"
            )
        key = f"{self.version_prefix(card.version)}/{file}"
        return self._cached(card, key, str(card.inference.get("sha256", ""))), card

    def describe(self) -> list[dict]:
        """Every version number in use with its status and aliases, for listings.

        Complete versions carry their card's facts; incomplete and unreadable ones a ``problem``
        naming the key. An alias that cannot be read, or that points at a version with nothing
        stored, gets a row of its own (``version`` None for the former).
        """
        aliases, broken = self.read_aliases()
        by_version: dict[int, list[str]] = {}
        for alias in aliases:
            by_version.setdefault(alias.version, []).append(alias.alias)
        states = self.states()
        rows = [self._row(s.version, s.status, s.problem, by_version, s.card) for s in states]
        known = {state.version for state in states}
        for version in sorted(by_version.keys() - known):
            names = ", ".join(sorted(by_version[version]))
            problem = f"{self.version_uri(version)} is empty, but alias {names} points at it"
            rows.append(self._row(version, MISSING, problem, by_version))
        for name, problem in broken.items():
            rows.append(self._row(None, UNREADABLE, problem, {None: [name]}))
        return rows

    def _row(
        self,
        version: int | None,
        status: str,
        problem: str | None,
        aliases: dict,
        card: ModelCard | None = None,
    ) -> dict:
        return {
            "name": self.name,
            "version": version,
            "status": status,
            "problem": problem,
            "aliases": sorted(aliases.get(version, [])),
            "created_at": card.created_at if card else None,
            "dataset_id": card.dataset_id if card else None,
            "metrics": card.metrics if card else {},
            "model_bytes": card.model_bytes if card else None,
            "uri": None if version is None else self.version_uri(version),
        }

    def gc(self, *, min_age: timedelta = GC_MIN_AGE, remove: bool = False) -> list[Leftover]:
        """:func:`cxr_model.registry.gc.collect`: the incomplete versions, removed when
        ``remove`` and neither too young nor needed by an alias."""
        return _gc.collect(self, min_age=min_age, remove=remove)
