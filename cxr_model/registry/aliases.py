"""Movable aliases (``champion``, ``candidate``) over a model's versions, with their history.

``registry/<model name>/aliases/champion.json`` holds the version an alias points to and every
move (who, when, from which version to which, why). Moves are compare-and-swap on the object's
ETag (``IfMatch``), retried on conflict, so moves made at the same time are all kept, in some
order. Names are lowercase letters, digits and dashes, starting with a letter; ``v7``-style names
are refused because they read as version numbers.

Rollback undoes the latest move that has not been undone yet: the alias returns to the version it
pointed to before that move, and the rollback is recorded as a move of its own (reason
``rollback``). Rolling back again undoes the move before that, and so on down to the alias's
first version; with one move left (the alias's creation) there is nothing to roll back to.
"""

from __future__ import annotations

import getpass
import random
import re
import socket
import time
from collections.abc import Callable

from pydantic import BaseModel, Field

from cxr_model.registry.cards import RegistryError, UnreadableEntry, parse_entry, utc_now
from cxr_model.registry.versions import Versions
from cxr_model.storage import AlreadyExists, ChangedSinceRead

CHAMPION = "champion"
CANDIDATE = "candidate"
ROLLBACK = "rollback"
MAX_ALIAS_ATTEMPTS = 100
# A writer that lost a compare-and-swap waits up to this long before re-reading, so that many
# writers at once do not keep colliding in lockstep.
ALIAS_RETRY_JITTER_S = 0.05
ALIAS_NAME = re.compile(r"[a-z][a-z0-9-]{0,62}")
VERSION_LIKE = re.compile(r"v?\d+")


class AliasNameError(ValueError):
    """An alias name that the registry does not accept."""


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


def _actor() -> str:
    return f"{getpass.getuser()}@{socket.gethostname()}"


class Aliases(Versions):
    """The versions of one model name, and the aliases that point at them."""

    def _alias_key(self, alias: str) -> str:
        return f"{self.prefix}/aliases/{alias}.json"

    def alias(self, alias: str) -> Alias | None:
        """Where ``alias`` points, with its history; None when there is no such alias."""
        key = self._alias_key(alias)
        found = self.store.get_with_etag(key)
        return parse_entry(Alias, found[0], self.store.uri(key), "alias record") if found else None

    def alias_names(self) -> list[str]:
        """The names of this model's aliases, from the keys alone."""
        keys = self.store.list_keys(f"{self.prefix}/aliases/")
        return sorted(key.rsplit("/", 1)[-1].removesuffix(".json") for key in keys)

    def all_aliases(self) -> list[Alias]:
        """Every alias of this model, with its history (UnreadableEntry if one cannot be read)."""
        found = (self.alias(name) for name in self.alias_names())
        return [alias for alias in found if alias is not None]

    def read_aliases(self) -> tuple[list[Alias], dict[str, str]]:
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
            moved_at=utc_now(),
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
                parse_entry(Alias, found[0], self.store.uri(key), "alias record") if found else None
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

    def resolve(self, ref: str | int) -> int:
        """A version number from a number, a ``v7``-style string, or an alias name."""
        text = str(ref).strip()
        if text.lstrip("v").isdigit():
            return int(text.lstrip("v"))
        current = self.alias(text)
        if current is None:
            raise RegistryError(f"{self.name} has no alias {text!r}; known: {self.alias_names()}")
        return current.version
