"""The model registry: numbered, immutable model versions and movable aliases, in S3.

Layout under ``registry/<model name>/``:

- ``versions/000007/model.keras`` and ``versions/000007/card.json``: a version is claimed by a
  create-only put of its model file (``IfNoneMatch='*'``), so two processes registering at once get
  two different numbers and nothing is ever overwritten. The card is written last; a version
  without a card is incomplete and is not listed. Other files (a rendered model card, a gate
  decision) can be attached to a complete version, also create-only.
- ``aliases/champion.json``: the version an alias points to, with the history of its moves (who,
  when, from which version to which, why). Alias moves are compare-and-swap on the object's ETag
  (``IfMatch``), retried on conflict, so moves made at the same time are all kept, in some order.

Alias names are lowercase letters, digits and dashes, starting with a letter (``champion``,
``staging-eu``); ``v7``-style names are refused because they read as version numbers.

Rollback undoes the latest move that has not been undone yet: the alias returns to the version it
pointed to before that move, and the rollback is recorded as a move of its own (reason
``rollback``). Rolling back again undoes the move before that, and so on down to the alias's first
version; a later promotion is undone before any earlier one. With one move left (the alias's
creation) there is nothing to roll back to, which is an error.

Loading checks the model file's sha256 against the card and uses Keras safe mode. Keras is imported
only when a model is loaded, so listing and moving aliases stay light.
"""

from __future__ import annotations

import getpass
import hashlib
import platform
import random
import re
import socket
import subprocess
import time
from collections.abc import Callable
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from cxr_model.storage import AlreadyExists, ChangedSinceRead, ObjectStore

if TYPE_CHECKING:
    import keras

REGISTRY_PREFIX = "registry"
CHAMPION = "champion"
CANDIDATE = "candidate"
ROLLBACK = "rollback"
MODEL_FILE = "model.keras"
CARD_FILE = "card.json"
ATTACHMENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
MAX_CLAIM_ATTEMPTS = 50
MAX_ALIAS_ATTEMPTS = 100
# A writer that lost a compare-and-swap waits up to this long before re-reading, so that many
# writers at once do not keep colliding in lockstep.
ALIAS_RETRY_JITTER_S = 0.05
ALIAS_NAME = re.compile(r"[a-z][a-z0-9-]{0,62}")
VERSION_LIKE = re.compile(r"v?\d+")
# Card fields compared by ``diff``; ``training`` (per-epoch history) and identity fields are left out.
DIFF_FIELDS = (
    "threshold",
    "metrics",
    "parameters",
    "dataset_id",
    "model_bytes",
    "model_sha256",
    "code_version",
    "library_versions",
)


class RegistryError(LookupError):
    """A version or alias does not exist, an alias cannot move, or a model fails its check."""


class AliasNameError(ValueError):
    """An alias name that the registry does not accept."""


class ModelCard(BaseModel):
    """Everything known about a registered version; written once, never changed."""

    name: str
    version: int
    created_at: str
    model_key: str
    model_sha256: str
    model_bytes: int
    threshold: float
    metrics: dict
    training: dict
    parameters: dict
    dataset_id: str
    code_version: str
    library_versions: dict[str, str]
    notes: list[str] = Field(default_factory=list)
    generalisation: dict | None = Field(
        default=None,
        description="Held-out-source and within-source evidence "
        "(cxr_model.generalisation.Generalisation); None on versions registered before it.",
    )


class AliasMove(BaseModel):
    """One move of an alias: who moved it, when, from which version to which."""

    version: int
    previous_version: int | None
    moved_at: str
    moved_by: str
    reason: str = ""
    rollback: bool = Field(default=False, description="This move undid the latest live move.")


class Alias(BaseModel):
    """Where an alias points now, and every move that led there."""

    alias: str
    version: int
    history: list[AliasMove]

    def live_versions(self) -> list[int]:
        """Versions of the moves not undone by a rollback, oldest first (the last is current)."""
        stack: list[int] = []
        for move in self.history:
            if move.rollback:
                stack.pop()
            else:
                stack.append(move.version)
        return stack


class FieldDifference(BaseModel):
    """One card field (dotted path) in two versions; None where a version lacks it."""

    field: str
    a: Any
    b: Any


def check_alias_name(alias: str) -> str:
    """``alias`` itself when it is a valid alias name; AliasNameError saying why otherwise."""
    if VERSION_LIKE.fullmatch(alias):
        raise AliasNameError(f"alias {alias!r} looks like a version number; pick a name")
    if not ALIAS_NAME.fullmatch(alias):
        raise AliasNameError(
            f"alias {alias!r} is not allowed: use lowercase letters, digits and dashes, starting "
            "with a letter, at most 63 characters (e.g. champion, staging-eu)"
        )
    return alias


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as ``{"a.b.c": leaf}``; lists and scalars are leaves."""
    if not isinstance(value, dict):
        return {prefix: value}
    flat: dict[str, Any] = {}
    for key, item in value.items():
        flat.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def diff_cards(a: ModelCard, b: ModelCard, *, everything: bool = False) -> list[FieldDifference]:
    """The :data:`DIFF_FIELDS` of two cards side by side; only those that differ by default."""
    left = flatten({name: getattr(a, name) for name in DIFF_FIELDS})
    right = flatten({name: getattr(b, name) for name in DIFF_FIELDS})
    rows = [
        FieldDifference(field=name, a=left.get(name), b=right.get(name))
        for name in sorted(left.keys() | right.keys(), key=_field_order)
    ]
    return rows if everything else [row for row in rows if row.a != row.b]


def _field_order(name: str) -> tuple[int, str]:
    """Fields in :data:`DIFF_FIELDS` order, then alphabetically inside each."""
    return DIFF_FIELDS.index(name.split(".", 1)[0]), name


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _actor() -> str:
    return f"{getpass.getuser()}@{socket.gethostname()}"


def code_version() -> str:
    """The git commit of the code when run from a checkout, else the package version."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"git:{sha}" if sha else f"cxr {metadata.version('cxr')}"


def library_versions() -> dict[str, str]:
    names = [
        "tensorflow",
        "keras",
        "numpy",
        "scikit-learn",
        "pillow",
        "great-expectations",
        "prefect",
    ]
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class Registry:
    """The registry of one model name in one store."""

    def __init__(self, store: ObjectStore, name: str, cache_dir: Path):
        self.store = store
        self.name = name
        self.cache_dir = cache_dir
        self.prefix = f"{REGISTRY_PREFIX}/{name}"

    def _version_prefix(self, version: int) -> str:
        return f"{self.prefix}/versions/{version:06d}"

    def _alias_key(self, alias: str) -> str:
        return f"{self.prefix}/aliases/{alias}.json"

    def version_uri(self, version: int) -> str:
        return self.store.uri(self._version_prefix(version) + "/")

    def _numbers_in_use(self) -> list[int]:
        numbers = set()
        for key in self.store.list_keys(f"{self.prefix}/versions/"):
            part = key[len(self.prefix) + len("/versions/") :].split("/", 1)[0]
            if part.isdigit():
                numbers.add(int(part))
        return sorted(numbers)

    def register(self, model_path: Path, **card_fields) -> ModelCard:
        """Store ``model_path`` as the next version with a card made of ``card_fields``."""
        data = model_path.read_bytes()
        sha256 = hashlib.sha256(data).hexdigest()
        for _ in range(MAX_CLAIM_ATTEMPTS):
            version = max(self._numbers_in_use(), default=0) + 1
            model_key = f"{self._version_prefix(version)}/{MODEL_FILE}"
            try:
                self.store.put_bytes(
                    model_key, data, content_type="application/zip", create_only=True
                )
            except AlreadyExists:
                continue  # another process claimed this number first; take the next
            card = ModelCard(
                name=self.name,
                version=version,
                created_at=_now(),
                model_key=model_key,
                model_sha256=sha256,
                model_bytes=len(data),
                code_version=code_version(),
                library_versions=library_versions(),
                **card_fields,
            )
            self.store.put_bytes(
                f"{self._version_prefix(version)}/{CARD_FILE}",
                card.model_dump_json(indent=2).encode(),
                create_only=True,
            )
            return card
        raise RegistryError(f"could not claim a version number after {MAX_CLAIM_ATTEMPTS} attempts")

    def attach(self, version: int, name: str, data: bytes) -> str:
        """Add a file (a rendered model card, a gate decision) to a version; returns its key.

        Like the version itself, an attached file is written once and never replaced.
        """
        if not ATTACHMENT_NAME.fullmatch(name) or name in (MODEL_FILE, CARD_FILE):
            raise RegistryError(
                f"cannot attach {name!r} to {self.name} v{version}: use a plain file name "
                f"(letters, digits, dots, dashes, underscores) other than {MODEL_FILE} and {CARD_FILE}"
            )
        self.card(version)  # only complete versions take attachments
        key = f"{self._version_prefix(version)}/{name}"
        try:
            self.store.put_bytes(key, data, create_only=True)
        except AlreadyExists as exc:
            raise RegistryError(
                f"{self.store.uri(key)} is already attached; versions never change"
            ) from exc
        return key

    def card(self, version: int) -> ModelCard:
        found = self.store.get_with_etag(f"{self._version_prefix(version)}/{CARD_FILE}")
        if found is None:
            raise RegistryError(f"{self.name} has no version {version}")
        return ModelCard.model_validate_json(found[0])

    def versions(self) -> list[ModelCard]:
        """Every complete version, oldest first."""
        cards = []
        for version in self._numbers_in_use():
            try:
                cards.append(self.card(version))
            except RegistryError:
                continue  # being registered right now: its card is not written yet
        return cards

    def alias(self, alias: str) -> Alias | None:
        found = self.store.get_with_etag(self._alias_key(alias))
        return Alias.model_validate_json(found[0]) if found else None

    def all_aliases(self) -> list[Alias]:
        """Every alias of this model, with its history."""
        keys = self.store.list_keys(f"{self.prefix}/aliases/")
        found = (self.alias(key.rsplit("/", 1)[-1].removesuffix(".json")) for key in keys)
        return [alias for alias in found if alias is not None]

    def aliases(self) -> dict[str, int]:
        """Alias name → version, for every alias of this model."""
        return {alias.alias: alias.version for alias in self.all_aliases()}

    def set_alias(
        self, alias: str, version: int, *, reason: str = "", only_if_absent: bool = False
    ) -> Alias | None:
        """Point ``alias`` at ``version`` with compare-and-swap; every move is kept in history.

        Pointing an alias where it already points records nothing. With ``only_if_absent`` the
        alias is created but never moved (None when it existed).
        """
        check_alias_name(alias)
        self.card(version)  # refuse to point at a version that does not exist

        def move_to(current: Alias | None) -> AliasMove | None:
            if current and (only_if_absent or current.version == version):
                return None
            return self._move(current, version, reason)

        now, moved = self._update_alias(alias, move_to)
        return None if only_if_absent and not moved else now

    def rollback(self, alias: str) -> Alias:
        """Move ``alias`` back to where it pointed before its latest live move (see module doc)."""
        check_alias_name(alias)

        def move_back(current: Alias | None) -> AliasMove:
            if current is None:
                raise RegistryError(
                    f"{self.name} has no alias {alias!r}; known: {sorted(self.aliases())}"
                )
            live = current.live_versions()
            if len(live) < 2:
                raise RegistryError(
                    f"{alias} of {self.name} has nothing to roll back to: it points at version "
                    f"{current.version}, where it started, and every later move was rolled back"
                )
            return self._move(current, live[-2], ROLLBACK, rollback=True)

        now, _ = self._update_alias(alias, move_back)
        return now

    def _move(
        self, current: Alias | None, version: int, reason: str, *, rollback: bool = False
    ) -> AliasMove:
        return AliasMove(
            version=version,
            previous_version=current.version if current else None,
            moved_at=_now(),
            moved_by=_actor(),
            reason=reason,
            rollback=rollback,
        )

    def _update_alias(
        self, alias: str, next_move: Callable[[Alias | None], AliasMove | None]
    ) -> tuple[Alias | None, bool]:
        """Apply ``next_move`` to the alias as it is now, by compare-and-swap.

        Returns the alias afterwards and whether it moved (``next_move`` returns None for no
        move). On a conflict the alias is re-read and ``next_move`` decides again.
        """
        key = self._alias_key(alias)
        for _ in range(MAX_ALIAS_ATTEMPTS):
            found = self.store.get_with_etag(key)
            current = Alias.model_validate_json(found[0]) if found else None
            move = next_move(current)
            if move is None:
                return current, False
            history = [*(current.history if current else []), move]
            updated = Alias(alias=alias, version=move.version, history=history)
            body = updated.model_dump_json(indent=2).encode()
            try:
                if found is None:
                    self.store.put_bytes(
                        key, body, content_type="application/json", create_only=True
                    )
                else:
                    self.store.replace_if_unchanged(key, body, found[1])
                return updated, True
            except (AlreadyExists, ChangedSinceRead):
                # someone moved it meanwhile: re-read and decide again on top of their move
                time.sleep(random.uniform(0, ALIAS_RETRY_JITTER_S))
        raise RegistryError(
            f"{self.store.uri(key)} kept changing: gave up after {MAX_ALIAS_ATTEMPTS} attempts"
        )

    def aliases_of(self, version: int) -> list[Alias]:
        """The aliases that point at ``version`` now, with their histories."""
        return [alias for alias in self.all_aliases() if alias.version == version]

    def diff(
        self, a: str | int, b: str | int, *, everything: bool = False
    ) -> list[FieldDifference]:
        """:func:`diff_cards` of two versions given as numbers or aliases."""
        return diff_cards(
            self.card(self.resolve(a)), self.card(self.resolve(b)), everything=everything
        )

    def resolve(self, ref: str | int) -> int:
        """A version number from a number, a ``v7``-style string, or an alias name."""
        text = str(ref).strip()
        if text.lstrip("v").isdigit():
            return int(text.lstrip("v"))
        current = self.alias(text)
        if current is None:
            raise RegistryError(
                f"{self.name} has no alias {text!r}; known: {sorted(self.aliases())}"
            )
        return current.version

    def load(self, ref: str | int) -> tuple[keras.Model, ModelCard]:
        """The model behind ``ref``, verified against its card's sha256, loaded in safe mode."""
        import keras

        card = self.card(self.resolve(ref))
        path = self.cache_dir / "models" / self.name / f"{card.version:06d}" / MODEL_FILE
        if not path.exists() or sha256_file(path) != card.model_sha256:
            self.store.download(card.model_key, path)
        actual = sha256_file(path)
        if actual != card.model_sha256:
            path.unlink(missing_ok=True)
            raise RegistryError(
                f"{self.store.uri(card.model_key)} has sha256 {actual}, but its card says "
                f"{card.model_sha256}: refusing to load a model that changed after registration"
            )
        return keras.saving.load_model(path, compile=False, safe_mode=True), card

    def describe(self) -> list[dict]:
        """Versions with their aliases, for listings."""
        by_version: dict[int, list[str]] = {}
        for alias, version in self.aliases().items():
            by_version.setdefault(version, []).append(alias)
        return [
            {
                "name": card.name,
                "version": card.version,
                "aliases": sorted(by_version.get(card.version, [])),
                "created_at": card.created_at,
                "dataset_id": card.dataset_id,
                "metrics": card.metrics,
                "model_bytes": card.model_bytes,
                "uri": self.version_uri(card.version),
            }
            for card in self.versions()
        ]
