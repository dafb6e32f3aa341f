"""The model registry: numbered, immutable model versions and movable aliases, in S3.

Layout under ``registry/<model name>/``:

- ``versions/000007/card.json`` and ``versions/000007/model.keras``: a version is claimed by a
  create-only put of its card (``IfNoneMatch='*'``), so two processes registering at once get two
  different numbers and nothing is ever overwritten; the model file follows, also create-only.
  The card names the model's sha256 and the registration that claimed it (a run id, or a random
  one), so registering is idempotent: a put whose response was lost and that botocore retried,
  or a registration called again with the same ``registration_id`` after failing half-way (a
  retried task), finds the version it claimed and finishes it instead of claiming another.
  A version with both files is complete. One without its model file (a registration that stopped
  before uploading it) or without its card (left by earlier releases, which wrote the model
  first, or damaged by hand) is incomplete: listed as such, never loaded or aliased, and removed
  by :meth:`Registry.gc`. Other files (a rendered model card, a gate decision) can be attached to
  a complete version, also create-only.
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
only when a model is loaded, so listing and moving aliases stay light. Scoring loads the version's
ONNX export instead (``model.onnx``, attached at registration, its sha256 on the card as
``inference``; :mod:`cxr_model.inference`), verified the same way, without TensorFlow. A card or alias record that
cannot be parsed raises :class:`UnreadableEntry`, one line naming its key and the first problem;
:meth:`Registry.describe` lists everything else and marks such entries.
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
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, Field, ValidationError

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
# What is stored under a version number (VersionState.status).
COMPLETE = "complete"
NO_CARD = "incomplete: no card"
NO_MODEL = "incomplete: no model file"
UNREADABLE = "unreadable"
MISSING = "missing"  # an alias points at a version number with nothing stored under it
INCOMPLETE = (NO_CARD, NO_MODEL)
# gc leaves incomplete versions written more recently than this: one may be uploading right now.
GC_MIN_AGE = timedelta(hours=1)
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


class UnreadableEntry(RegistryError):
    """A stored card or alias record that cannot be parsed; the message names its key and why."""


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
    registration_id: str | None = Field(
        default=None,
        description="The registration that claimed this version (a run id, or random): calling "
        "register again with it and the same model finishes this version. None before it existed.",
    )
    generalisation: dict | None = Field(
        default=None,
        description="Held-out-source and within-source evidence "
        "(cxr_model.generalisation.Generalisation); None on versions registered before it.",
    )
    ood: dict | None = Field(
        default=None,
        description="The version's out-of-distribution check (cxr_model.ood.OodCheck: its "
        "attached file and sha256, threshold, and the share of Val and Holdout it flags); None "
        "when it has none (an ensemble, or registered before it existed).",
    )
    inference: dict | None = Field(
        default=None,
        description="The version's ONNX export for scoring without TensorFlow "
        "(cxr_model.inference.InferenceArtifact: its attached file, sha256, input contract, "
        "outputs and the parity checked at export); None on versions registered before it, "
        "which are scored with Keras.",
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


class VersionState(BaseModel):
    """A version number in use: what is stored under it, and whether it can be used."""

    version: int
    status: str = Field(description="complete, incomplete: no card|no model file, or unreadable")
    problem: str | None = Field(default=None, description="What is wrong, naming the key.")
    card: ModelCard | None = None
    files: list[str]
    modified_at: datetime = Field(description="When the newest of its files was written.")


class Leftover(BaseModel):
    """An incomplete version that :meth:`Registry.gc` found, and what it did with it."""

    version: int
    status: str
    files: list[str]
    modified_at: datetime
    removed: bool = False
    kept_because: str | None = None


class FieldDifference(BaseModel):
    """One card field (dotted path) in two versions; None where a version lacks it."""

    field: str
    a: Any
    b: Any


Parsed = TypeVar("Parsed", bound=BaseModel)


def one_line(exc: ValidationError) -> str:
    """The first problem pydantic found, on one line, with how many more there are."""
    errors = exc.errors(include_url=False)
    first = errors[0]
    where = ".".join(str(part) for part in first["loc"])
    reason = f"{where}: {first['msg']}" if where else first["msg"]
    if len(errors) > 1:
        reason += f" (and {len(errors) - 1} more problems)"
    return " ".join(reason.split())


def _parse(model: type[Parsed], data: bytes, uri: str, what: str) -> Parsed:
    """``data`` as a ``model``, or :class:`UnreadableEntry` naming ``uri`` and the problem."""
    try:
        return model.model_validate_json(data)
    except ValidationError as exc:
        raise UnreadableEntry(f"{uri}: not a valid {what}: {one_line(exc)}") from None


def _ago(age: timedelta) -> str:
    minutes = age.total_seconds() / 60
    return f"{minutes:.0f} min" if minutes < 120 else f"{minutes / 60:.1f} h"


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
        "onnxruntime",
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

    def _card_key(self, version: int) -> str:
        return f"{self._version_prefix(version)}/{CARD_FILE}"

    def _model_key(self, version: int) -> str:
        return f"{self._version_prefix(version)}/{MODEL_FILE}"

    def _alias_key(self, alias: str) -> str:
        return f"{self.prefix}/aliases/{alias}.json"

    def version_uri(self, version: int) -> str:
        return self.store.uri(self._version_prefix(version) + "/")

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
        self, model_path: Path, *, registration_id: str | None = None, **card_fields
    ) -> ModelCard:
        """Store ``model_path`` as a new version with a card made of ``card_fields``.

        ``registration_id`` names this registration (a run id): called again with the same id
        and the same model file after a call that failed half-way, it finishes the version that
        call claimed instead of claiming another. Without it, every call is a registration of
        its own (lost responses inside the call are still recognised).
        """
        data = model_path.read_bytes()
        sha256 = hashlib.sha256(data).hexdigest()
        own = self._own_claim(sha256, registration_id) if registration_id else None
        if own is not None and own[1]:
            return own[0]  # registered completely before: a retry after a later step failed
        card = own[0] if own else self._claim(sha256, len(data), registration_id, card_fields)
        self._upload_model(card, data)
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
                created_at=_now(),
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
        key = f"{self._version_prefix(version)}/{name}"
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
        key = f"{self._version_prefix(version)}/{name}"
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
            if any(self.store.list_keys(self._version_prefix(version) + "/")):
                raise RegistryError(
                    f"{self.name} version {version} is incomplete: no card "
                    f"({self.store.uri(key)} is missing)"
                )
            raise RegistryError(f"{self.name} has no version {version}")
        return _parse(ModelCard, found[0], self.store.uri(key), "model card")

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

    def alias(self, alias: str) -> Alias | None:
        """Where ``alias`` points, with its history; None when there is no such alias."""
        key = self._alias_key(alias)
        found = self.store.get_with_etag(key)
        return _parse(Alias, found[0], self.store.uri(key), "alias record") if found else None

    def alias_names(self) -> list[str]:
        """The names of this model's aliases, from the keys alone."""
        keys = self.store.list_keys(f"{self.prefix}/aliases/")
        return sorted(key.rsplit("/", 1)[-1].removesuffix(".json") for key in keys)

    def all_aliases(self) -> list[Alias]:
        """Every alias of this model, with its history (UnreadableEntry if one cannot be read)."""
        found = (self.alias(name) for name in self.alias_names())
        return [alias for alias in found if alias is not None]

    def _read_aliases(self) -> tuple[list[Alias], dict[str, str]]:
        """The aliases that can be read, and alias name → problem for those that cannot."""
        readable, broken = [], {}
        for name in self.alias_names():
            try:
                found = self.alias(name)
            except UnreadableEntry as exc:
                broken[name] = str(exc)
                continue
            if found is not None:
                readable.append(found)
        return readable, broken

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
        self.complete_card(version)  # refuse to point at a version that is missing or incomplete

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
                    f"{self.name} has no alias {alias!r}; known: {self.alias_names()}"
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
            current = (
                _parse(Alias, found[0], self.store.uri(key), "alias record") if found else None
            )
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
            raise RegistryError(f"{self.name} has no alias {text!r}; known: {self.alias_names()}")
        return current.version

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
        key = f"{self._version_prefix(card.version)}/{file}"
        return self._cached(card, key, str(card.inference.get("sha256", ""))), card

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

    def describe(self) -> list[dict]:
        """Every version number in use with its status and aliases, for listings.

        Complete versions carry their card's facts; incomplete and unreadable ones a ``problem``
        naming the key. An alias that cannot be read, or that points at a version with nothing
        stored, gets a row of its own (``version`` None for the former).
        """
        aliases, broken = self._read_aliases()
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
        """The incomplete versions, removed when ``remove`` (else only listed).

        Kept even then: versions written less than ``min_age`` ago (a registration may be
        uploading the model right now) and versions that an alias points at or has in its
        history (a broken champion is for a person to look at, not to delete). Refuses when an
        alias cannot be read, since then it cannot tell which versions the aliases need.
        """
        aliases, broken = self._read_aliases()
        if broken:
            raise RegistryError(
                f"cannot tell which versions the aliases need: {next(iter(broken.values()))}; "
                "repair or remove that alias first"
            )
        needed: dict[int, str] = {}
        for alias in aliases:
            needed[alias.version] = f"alias {alias.alias} points at it"
            for move in alias.history:
                for version in (move.version, move.previous_version):
                    if version is not None:
                        needed.setdefault(version, f"alias {alias.alias} has it in its history")
        now = datetime.now(UTC)
        found = []
        for state in self.states():
            if state.status not in INCOMPLETE:
                continue
            item = Leftover(
                **state.model_dump(include={"version", "status", "files", "modified_at"})
            )
            age = now - state.modified_at
            if state.version in needed:
                item.kept_because = needed[state.version]
            elif age < min_age:
                item.kept_because = (
                    f"written {_ago(age)} ago, less than {_ago(min_age)}: it may still be being "
                    "registered"
                )
            elif remove:
                self._remove(state)
                item.removed = True
            found.append(item)
        return found

    def _remove(self, state: VersionState) -> None:
        """Delete a version's files, the card last: a gc stopped half-way leaves it incomplete."""
        prefix = self._version_prefix(state.version)
        for name in sorted(state.files, key=lambda name: name == CARD_FILE):
            self.store.delete(f"{prefix}/{name}")
