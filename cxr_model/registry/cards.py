"""What the registry stores about a version: its card, its state, and how two cards differ.

A card is written once, when its version is claimed, and never changed; it records the model
file's sha256, the training facts, and the code and library versions it was made with. Stored
entries are input: one that cannot be parsed is an :class:`UnreadableEntry` naming its key.
"""

from __future__ import annotations

import hashlib
import platform
import re
import subprocess
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, Field, ValidationError

REGISTRY_PREFIX = "registry"
MODEL_FILE = "model.keras"
CARD_FILE = "card.json"
ATTACHMENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
# What is stored under a version number (VersionState.status).
COMPLETE = "complete"
NO_CARD = "incomplete: no card"
NO_MODEL = "incomplete: no model file"
UNREADABLE = "unreadable"
MISSING = "missing"  # an alias points at a version number with nothing stored under it
INCOMPLETE = (NO_CARD, NO_MODEL)
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


class VersionState(BaseModel):
    """A version number in use: what is stored under it, and whether it can be used."""

    version: int
    status: str = Field(description="complete, incomplete: no card|no model file, or unreadable")
    problem: str | None = Field(default=None, description="What is wrong, naming the key.")
    card: ModelCard | None = None
    files: list[str]
    modified_at: datetime = Field(description="When the newest of its files was written.")


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


def parse_entry(model: type[Parsed], data: bytes, uri: str, what: str) -> Parsed:
    """``data`` as a ``model``, or :class:`UnreadableEntry` naming ``uri`` and the problem."""
    try:
        return model.model_validate_json(data)
    except ValidationError as exc:
        raise UnreadableEntry(f"{uri}: not a valid {what}: {one_line(exc)}") from None


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


def utc_now() -> str:
    """Now, in UTC, to the second, as ISO 8601 text (cards and alias moves)."""
    return datetime.now(UTC).isoformat(timespec="seconds")


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
