"""Garbage collection of incomplete versions: listed always, removed only when asked and safe."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from pydantic import BaseModel

from cxr_model.registry.cards import CARD_FILE, INCOMPLETE, RegistryError, VersionState

if TYPE_CHECKING:
    from cxr_model.registry.aliases import Aliases

# gc leaves incomplete versions written more recently than this: one may be uploading right now.
GC_MIN_AGE = timedelta(hours=1)


class Leftover(BaseModel):
    """An incomplete version that :func:`collect` found, and what it did with it."""

    version: int
    status: str
    files: list[str]
    modified_at: datetime
    removed: bool = False
    kept_because: str | None = None


def _ago(age: timedelta) -> str:
    minutes = age.total_seconds() / 60
    return f"{minutes:.0f} min" if minutes < 120 else f"{minutes / 60:.1f} h"


def collect(
    registry: Aliases, *, min_age: timedelta = GC_MIN_AGE, remove: bool = False
) -> list[Leftover]:
    """The incomplete versions, removed when ``remove`` (else only listed).

    Kept even then: versions written less than ``min_age`` ago (a registration may be
    uploading the model right now) and versions that an alias points at or has in its
    history (a broken champion is for a person to look at, not to delete). Refuses when an
    alias cannot be read, since then it cannot tell which versions the aliases need.
    """
    aliases, broken = registry.read_aliases()
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
    for state in registry.states():
        if state.status not in INCOMPLETE:
            continue
        item = Leftover(**state.model_dump(include={"version", "status", "files", "modified_at"}))
        age = now - state.modified_at
        if state.version in needed:
            item.kept_because = needed[state.version]
        elif age < min_age:
            item.kept_because = (
                f"written {_ago(age)} ago, less than {_ago(min_age)}: it may still be being "
                "registered"
            )
        elif remove:
            _remove(registry, state)
            item.removed = True
        found.append(item)
    return found


def _remove(registry: Aliases, state: VersionState) -> None:
    """Delete a version's files, the card last: a gc stopped half-way leaves it incomplete."""
    prefix = registry.version_prefix(state.version)
    for name in sorted(state.files, key=lambda name: name == CARD_FILE):
        registry.store.delete(f"{prefix}/{name}")
