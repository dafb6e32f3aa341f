"""Numbered, immutable model versions in S3, under ``registry/<model name>/versions/``.

``000007/card.json`` and ``000007/model.keras``: a version is claimed by a create-only put of its
card (``IfNoneMatch='*'``), so two processes registering at once get two different numbers and
nothing is ever overwritten; the model file follows, also create-only. The card names the
model's sha256 and the registration that claimed it (a run id, or a random one), so registering
is idempotent: a put whose response was lost and that botocore retried, or a registration called
again with the same ``registration_id`` after failing half-way (a retried task), finds the
version it claimed and finishes it instead of claiming another.

A version with both files is complete. One without its model file (a registration that stopped
before uploading it) or without its card (left by earlier releases, which wrote the model first,
or damaged by hand) is incomplete: listed as such, never loaded or aliased, and removed by
:func:`cxr_model.registry.gc.collect`. Other files (a rendered model card, a gate decision, the
ONNX export) can be attached to a complete version, also create-only. Local copies of stored
files are only a cache, checked against the sha256 their card records.
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cxr_model.inference import Export

from cxr_model.registry.cards import (
    ATTACHMENT_NAME,
    CARD_FILE,
    COMPLETE,
    MODEL_FILE,
    NO_CARD,
    NO_MODEL,
    REGISTRY_PREFIX,
    UNREADABLE,
    ModelCard,
    RegistryError,
    UnreadableEntry,
    VersionState,
    code_version,
    library_versions,
    parse_entry,
    sha256_file,
    utc_now,
)
from cxr_model.storage import AlreadyExists, ObjectStore

MAX_CLAIM_ATTEMPTS = 50


class Versions:
    """The versions of one model name in one store."""

    def __init__(self, store: ObjectStore, name: str, cache_dir: Path):
        self.store = store
        self.name = name
        self.cache_dir = cache_dir
        self.prefix = f"{REGISTRY_PREFIX}/{name}"

    def version_prefix(self, version: int) -> str:
        return f"{self.prefix}/versions/{version:06d}"

    def _card_key(self, version: int) -> str:
        return f"{self.version_prefix(version)}/{CARD_FILE}"

    def _model_key(self, version: int) -> str:
        return f"{self.version_prefix(version)}/{MODEL_FILE}"

    def version_uri(self, version: int) -> str:
        return self.store.uri(self.version_prefix(version) + "/")

    def _stored(self) -> dict[int, dict[str, datetime]]:
        """Version number → its files (name → when written), oldest version first; one listing."""
        start = f"{self.prefix}/versions/"
        found: dict[int, dict[str, datetime]] = {}
        for key, modified in self.store.list_modified(start):
            number, _, name = key[len(start) :].partition("/")
            if number.isdigit() and name:
                found.setdefault(int(number), {})[name] = modified
        return dict(sorted(found.items()))

    def register(
        self,
        model_path: Path,
        *,
        registration_id: str | None = None,
        export: Export | None = None,
        **card_fields,
    ) -> ModelCard:
        """Store ``model_path`` as a new version with a card made of ``card_fields``.

        ``registration_id`` names this registration (a run id): called again with the same id
        and the same model file after a call that failed half-way, it finishes the version that
        call claimed instead of claiming another. Without it, every call is a registration of
        its own (lost responses inside the call are still recognised). ``export`` (the model's
        ONNX export, :mod:`cxr_model.inference`) goes on the card as ``inference`` and is
        attached, so scoring runs it.
        """
        if export is not None:
            card_fields["inference"] = export.artifact.model_dump()
        data = model_path.read_bytes()
        sha256 = hashlib.sha256(data).hexdigest()
        own = self._own_claim(sha256, registration_id) if registration_id else None
        if own is not None and own[1]:
            card = own[0]  # registered completely before: a retry after a later step failed
        else:
            card = own[0] if own else self._claim(sha256, len(data), registration_id, card_fields)
            self._upload_model(card, data)
        if export is not None:  # attaching the same bytes again is a no-op
            self.attach(card.version, export.artifact.file, export.data)
        return card

    def _own_claim(self, sha256: str, registration_id: str) -> tuple[ModelCard, bool] | None:
        """The card this registration claimed before, and whether its model file is stored."""
        for version, files in reversed(self._stored().items()):
            if CARD_FILE not in files:
                continue
            try:
                card = self.card(version)
            except RegistryError:
                continue  # unreadable, or removed since the listing: not a claim to finish
            if (card.model_sha256, card.registration_id) == (sha256, registration_id):
                return card, MODEL_FILE in files
        return None

    def _claim(
        self, sha256: str, size: int, registration_id: str | None, card_fields: dict
    ) -> ModelCard:
        """Claim the next version number with a create-only put of the card."""
        registration_id = registration_id or uuid.uuid4().hex
        code, libraries = code_version(), library_versions()
        for _ in range(MAX_CLAIM_ATTEMPTS):
            version = max(self._stored(), default=0) + 1
            card = ModelCard(
                name=self.name,
                version=version,
                created_at=utc_now(),
                model_key=self._model_key(version),
                model_sha256=sha256,
                model_bytes=size,
                registration_id=registration_id,
                code_version=code,
                library_versions=libraries,
                **card_fields,
            )
            try:
                self.store.put_bytes(
                    self._card_key(version),
                    card.model_dump_json(indent=2).encode(),
                    content_type="application/json",
                    create_only=True,
                )
                return card
            except AlreadyExists:
                # taken by another registration, or by this one: botocore retried a put whose
                # response was lost, and the retry found the card the first try wrote
                try:
                    found = self.card(version)
                except RegistryError:
                    continue
                if (found.model_sha256, found.registration_id) == (sha256, registration_id):
                    return found
        raise RegistryError(f"could not claim a version number after {MAX_CLAIM_ATTEMPTS} attempts")

    def _upload_model(self, card: ModelCard, data: bytes) -> None:
        """Store the model file of a claimed version, once."""
        try:
            self.store.put_bytes(
                card.model_key, data, content_type="application/zip", create_only=True
            )
        except AlreadyExists:
            # stored by an earlier try whose response was lost; only the claimant writes here
            stored = hashlib.sha256(self.store.get_bytes(card.model_key)).hexdigest()
            if stored != card.model_sha256:
                raise RegistryError(
                    f"{self.store.uri(card.model_key)} has sha256 {stored}, but the card of "
                    f"version {card.version} says {card.model_sha256}: it holds another model"
                ) from None

    def attach(self, version: int, name: str, data: bytes) -> str:
        """Add a file (a rendered model card, a gate decision) to a version; returns its key.

        Like the version itself, an attached file is written once and never replaced.
        """
        if not ATTACHMENT_NAME.fullmatch(name) or name in (MODEL_FILE, CARD_FILE):
            raise RegistryError(
                f"cannot attach {name!r} to {self.name} v{version}: use a plain file name "
                f"(letters, digits, dots, dashes, underscores) other than {MODEL_FILE} and {CARD_FILE}"
            )
        self.complete_card(version)  # only complete versions take attachments
        key = f"{self.version_prefix(version)}/{name}"
        try:
            self.store.put_bytes(key, data, create_only=True)
        except AlreadyExists as exc:
            if self.store.get_bytes(key) == data:
                return key  # attached before by this same registration, retried
            raise RegistryError(
                f"{self.store.uri(key)} is already attached; versions never change"
            ) from exc
        return key

    def attachment(self, version: int, name: str, sha256: str) -> bytes:
        """A file attached to ``version``, verified against the ``sha256`` its card records."""
        key = f"{self.version_prefix(version)}/{name}"
        stored = self.store.get_with_etag(key)
        if stored is None:
            raise RegistryError(
                f"{self.store.uri(key)} is missing, but the card of version {version} names it"
            )
        data = stored[0]
        found = hashlib.sha256(data).hexdigest()
        if found != sha256:
            raise RegistryError(
                f"{self.store.uri(key)} has sha256 {found}, but the card of version {version} "
                f"says {sha256}: refusing to use it"
            )
        return data

    def card(self, version: int) -> ModelCard:
        """The card of ``version``; RegistryError when it has none or it cannot be parsed."""
        key = self._card_key(version)
        found = self.store.get_with_etag(key)
        if found is None:
            if any(self.store.list_keys(self.version_prefix(version) + "/")):
                raise RegistryError(
                    f"{self.name} version {version} is incomplete: no card "
                    f"({self.store.uri(key)} is missing)"
                )
            raise RegistryError(f"{self.name} has no version {version}")
        return parse_entry(ModelCard, found[0], self.store.uri(key), "model card")

    def complete_card(self, version: int) -> ModelCard:
        """The card of ``version`` once its model file is stored too; RegistryError otherwise."""
        card = self.card(version)
        if not self.store.exists(card.model_key):
            raise RegistryError(
                f"{self.name} version {version} is incomplete: no model file "
                f"({self.store.uri(card.model_key)} is missing)"
            )
        return card

    def states(self) -> list[VersionState]:
        """Every version number in use, oldest first: complete, incomplete or unreadable."""
        states = []
        for version, files in self._stored().items():
            common = dict(version=version, files=sorted(files), modified_at=max(files.values()))
            if CARD_FILE not in files:
                missing = self.store.uri(self._card_key(version))
                states.append(
                    VersionState(status=NO_CARD, problem=f"{missing} is missing", **common)
                )
                continue
            try:
                card = self.card(version)
            except UnreadableEntry as exc:
                states.append(VersionState(status=UNREADABLE, problem=str(exc), **common))
                continue
            except RegistryError as exc:  # removed since the listing
                states.append(VersionState(status=NO_CARD, problem=str(exc), **common))
                continue
            if MODEL_FILE in files:
                states.append(VersionState(status=COMPLETE, card=card, **common))
            else:
                missing = self.store.uri(card.model_key)
                states.append(
                    VersionState(
                        status=NO_MODEL, problem=f"{missing} is missing", card=card, **common
                    )
                )
        return states

    def versions(self) -> list[ModelCard]:
        """Every complete version, oldest first (:meth:`states` shows the others too)."""
        return [state.card for state in self.states() if state.status == COMPLETE]

    def _cached(self, card: ModelCard, key: str, sha256: str) -> Path:
        """The file at ``key`` of ``card``'s version in the local cache (downloaded when missing
        or different), verified against ``sha256``: local disk is only a cache of the store."""
        path = self.cache_dir / "models" / self.name / f"{card.version:06d}" / key.rsplit("/")[-1]
        if not path.exists() or sha256_file(path) != sha256:
            if not self.store.exists(key):
                raise RegistryError(
                    f"{self.store.uri(key)} is missing, but the card of version {card.version} "
                    "names it"
                )
            self.store.download(key, path)
        actual = sha256_file(path)
        if actual != sha256:
            path.unlink(missing_ok=True)
            raise RegistryError(
                f"{self.store.uri(key)} has sha256 {actual}, but its card says {sha256}: "
                "refusing to load a model that changed after registration"
            )
        return path
