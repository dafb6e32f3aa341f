"""The registry when S3 answers badly: lost responses and 503s, injected into the real client.

Each fault comes from :mod:`tests.s3_faults` (botocore's ``before-send`` hook on the store's own
client): a "lost" response reaches the real SeaweedFS server and takes effect, then the client sees
a dropped connection; a 503 never reaches the server. botocore retries as it would for real.
"""

from __future__ import annotations

import os
from datetime import timedelta

import pytest
from botocore.exceptions import ClientError
from helpers import CARD
from s3_faults import s3_faults

from cxr_model.registry import CHAMPION, COMPLETE, NO_CARD, NO_MODEL, Registry, RegistryError
from cxr_model.storage import StoreUnreachable

FOREVER = 1000  # more faults than botocore has attempts: the call itself fails


def _model(tmp_path, n: int):
    path = tmp_path / f"model-{n}.keras"
    path.write_bytes(os.urandom(64) + f"model {n}".encode())
    return path


def _stored(registry: Registry) -> dict[int, list[str]]:
    """Version number → the file names stored under it."""
    found: dict[int, list[str]] = {}
    for key in registry.store.list_keys(f"{registry.prefix}/versions/"):
        number, name = key.rsplit("/", 2)[-2:]
        found.setdefault(int(number), []).append(name)
    return {number: sorted(names) for number, names in sorted(found.items())}


def _statuses(registry: Registry) -> dict[int, str]:
    return {row["version"]: row["status"] for row in registry.describe()}


def test_a_lost_response_to_the_model_upload_leaves_no_orphan_and_no_gap(registry, tmp_path):
    registry.register(_model(tmp_path, 1), **CARD)
    with s3_faults(registry.store.client, "PutObject", "/model.keras", lose=1) as faults:
        card = registry.register(_model(tmp_path, 2), **CARD)
    assert faults.used_up and len(faults.seen) == 2  # botocore retried the upload once
    assert card.version == 2
    assert _stored(registry) == {1: ["card.json", "model.keras"], 2: ["card.json", "model.keras"]}
    assert _statuses(registry) == {1: COMPLETE, 2: COMPLETE}


def test_a_lost_response_to_the_claim_is_recognised_as_its_own(registry, tmp_path):
    with s3_faults(registry.store.client, "PutObject", "/card.json", lose=1) as faults:
        card = registry.register(_model(tmp_path, 1), **CARD)
    assert faults.used_up
    assert card.version == 1 and registry.card(1).model_sha256 == card.model_sha256
    assert _stored(registry) == {1: ["card.json", "model.keras"]}


def test_a_retried_registration_finishes_the_version_it_claimed(registry, tmp_path):
    path = _model(tmp_path, 1)
    with s3_faults(registry.store.client, "PutObject", "/model.keras", lose=FOREVER):
        with pytest.raises(StoreUnreachable, match="stopped responding; rerun to resume"):
            registry.register(path, registration_id="run-1", **CARD)
    card = registry.register(path, registration_id="run-1", **CARD)  # the task's retry
    assert card.version == 1 and card.registration_id == "run-1"
    assert _stored(registry) == {1: ["card.json", "model.keras"]}
    assert _statuses(registry) == {1: COMPLETE}
    # another run registering the same file gets a version of its own
    assert registry.register(path, registration_id="run-2", **CARD).version == 2


def test_503s_on_the_alias_move_then_a_retry_register_the_model_once(registry, tmp_path):
    path = _model(tmp_path, 1)

    def register_and_promote():
        card = registry.register(path, registration_id="run-1", **CARD)
        registry.set_alias(CHAMPION, card.version, reason="first model")
        return card

    aliases = "/aliases/champion.json"
    with s3_faults(registry.store.client, "PutObject", aliases, unavailable=5) as faults:
        with pytest.raises(ClientError, match="ServiceUnavailable"):
            register_and_promote()
        card = register_and_promote()  # the task's retry
    assert faults.used_up
    assert card.version == 1
    assert [c.version for c in registry.versions()] == [1]
    assert [(m.version, m.reason) for m in registry.alias(CHAMPION).history] == [(1, "first model")]


def test_incomplete_versions_are_listed_as_such_and_gc_removes_them(registry, tmp_path):
    registry.register(_model(tmp_path, 1), **CARD)
    # a registration whose model upload never got through: its claim (the card), no model
    with s3_faults(registry.store.client, "PutObject", "/model.keras", unavailable=FOREVER):
        with pytest.raises(ClientError):
            registry.register(_model(tmp_path, 2), **CARD)
    # an orphan as earlier versions of the registry left them: a model file without its card
    registry.store.put_bytes(f"{registry.prefix}/versions/000003/model.keras", b"orphan")
    assert registry.register(_model(tmp_path, 4), **CARD).version == 4

    expected = {1: COMPLETE, 2: NO_MODEL, 3: NO_CARD, 4: COMPLETE}
    assert _statuses(registry) == expected
    assert [c.version for c in registry.versions()] == [1, 4]
    with pytest.raises(RegistryError, match="version 2 is incomplete: no model file"):
        registry.set_alias(CHAMPION, 2)
    with pytest.raises(RegistryError, match="version 3 is incomplete: no card"):
        registry.load(3)

    # by default nothing is removed, and what was written within the last hour is kept
    listed = registry.gc()
    assert [(g.version, g.status, g.removed) for g in listed] == [
        (2, NO_MODEL, False),
        (3, NO_CARD, False),
    ]
    assert all("may still be being registered" in g.kept_because for g in listed)
    dry = registry.gc(min_age=timedelta(0))
    assert [(g.version, g.removed, g.kept_because) for g in dry] == [
        (2, False, None),
        (3, False, None),
    ]
    assert _statuses(registry) == expected

    removed = registry.gc(min_age=timedelta(0), remove=True)
    assert [(g.version, g.removed) for g in removed] == [(2, True), (3, True)]
    assert _stored(registry) == {1: ["card.json", "model.keras"], 4: ["card.json", "model.keras"]}
    assert registry.gc(min_age=timedelta(0), remove=True) == []


def test_gc_keeps_an_incomplete_version_that_an_alias_points_at(registry, tmp_path):
    card = registry.register(_model(tmp_path, 1), **CARD)
    registry.set_alias(CHAMPION, card.version)
    registry.store.delete(f"{registry.prefix}/versions/000001/card.json")  # a broken champion
    [kept] = registry.gc(min_age=timedelta(0), remove=True)
    assert (kept.version, kept.removed) == (1, False)
    assert "champion" in kept.kept_because
    assert _stored(registry) == {1: ["model.keras"]}
