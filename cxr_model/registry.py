"""The model registry: numbered, immutable model versions and movable aliases, in S3.

Layout under ``registry/<model name>/``:

- ``versions/000007/model.keras`` and ``versions/000007/card.json``: a version is claimed by a
  create-only put of its model file (``IfNoneMatch='*'``), so two processes registering at once get
  two different numbers and nothing is ever overwritten. The card is written last; a version
  without a card is incomplete and is not listed.
- ``aliases/champion.json``: the version an alias points to, with the history of its moves. Alias
  moves are compare-and-swap on the object's ETag (``IfMatch``), retried on conflict.

Loading checks the model file's sha256 against the card and uses Keras safe mode.
"""

from __future__ import annotations

import getpass
import hashlib
import platform
import socket
import subprocess
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import keras
from pydantic import BaseModel, Field

from cxr_model.storage import AlreadyExists, ChangedSinceRead, ObjectStore

REGISTRY_PREFIX = "registry"
CHAMPION = "champion"
CANDIDATE = "candidate"
MAX_CLAIM_ATTEMPTS = 50


class RegistryError(LookupError):
    """A version or alias does not exist, or a model file fails its integrity check."""


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


class AliasMove(BaseModel):
    """One move of an alias: who moved it, when, from which version to which."""

    version: int
    previous_version: int | None
    moved_at: str
    moved_by: str
    reason: str = ""


class Alias(BaseModel):
    """Where an alias points now, and every move that led there."""

    alias: str
    version: int
    history: list[AliasMove]


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
            model_key = f"{self._version_prefix(version)}/model.keras"
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
                f"{self._version_prefix(version)}/card.json",
                card.model_dump_json(indent=2).encode(),
                create_only=True,
            )
            return card
        raise RegistryError(f"could not claim a version number after {MAX_CLAIM_ATTEMPTS} attempts")

    def card(self, version: int) -> ModelCard:
        found = self.store.get_with_etag(f"{self._version_prefix(version)}/card.json")
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

    def aliases(self) -> dict[str, int]:
        """Alias name → version, for every alias of this model."""
        result = {}
        for key in self.store.list_keys(f"{self.prefix}/aliases/"):
            name = key.rsplit("/", 1)[-1].removesuffix(".json")
            current = self.alias(name)
            if current:
                result[name] = current.version
        return result

    def set_alias(
        self, alias: str, version: int, *, reason: str = "", only_if_absent: bool = False
    ) -> Alias | None:
        """Point ``alias`` at ``version`` with compare-and-swap; every move is kept in history.

        With ``only_if_absent`` the alias is created but never moved (None when it existed).
        """
        self.card(version)  # refuse to point at a version that does not exist
        key = self._alias_key(alias)
        while True:
            found = self.store.get_with_etag(key)
            current = Alias.model_validate_json(found[0]) if found else None
            if current and only_if_absent:
                return None
            move = AliasMove(
                version=version,
                previous_version=current.version if current else None,
                moved_at=_now(),
                moved_by=_actor(),
                reason=reason,
            )
            updated = Alias(
                alias=alias, version=version, history=[*(current.history if current else []), move]
            )
            body = updated.model_dump_json(indent=2).encode()
            try:
                if found is None:
                    self.store.put_bytes(
                        key, body, content_type="application/json", create_only=True
                    )
                else:
                    self.store.replace_if_unchanged(key, body, found[1])
                return updated
            except (AlreadyExists, ChangedSinceRead):
                continue  # someone moved it meanwhile: re-read and apply on top

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
        card = self.card(self.resolve(ref))
        path = self.cache_dir / "models" / self.name / f"{card.version:06d}" / "model.keras"
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
