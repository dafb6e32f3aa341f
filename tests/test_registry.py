"""The S3 model registry: immutable numbered versions, race-safe aliases, verified loading."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from helpers import CARD

from cxr_model.registry import (
    CHAMPION,
    COMPLETE,
    NO_CARD,
    NO_MODEL,
    UNREADABLE,
    AliasNameError,
    Registry,
    RegistryError,
    check_alias_name,
)

REPO = Path(__file__).resolve().parents[1]
CLI_TIMEOUT_S = 120


def test_versions_are_numbered_and_carry_a_card(registry, model_file):
    first = registry.register(model_file, **CARD)
    second = registry.register(model_file, **CARD)  # another registration: a version of its own
    assert (first.version, second.version) == (1, 2)
    card = registry.card(2)
    assert card.model_sha256 == second.model_sha256 and len(card.model_sha256) == 64
    assert card.model_bytes == model_file.stat().st_size
    assert card.dataset_id == "d1" and "tensorflow" in card.library_versions
    assert card.code_version


def test_concurrent_registrations_get_distinct_versions(registry, tmp_path):
    files = []
    for n in range(6):
        path = tmp_path / f"m{n}.keras"
        path.write_bytes(f"model {n}".encode())
        files.append(path)
    with ThreadPoolExecutor(max_workers=6) as pool:
        cards = list(pool.map(lambda p: registry.register(p, **CARD), files))
    assert sorted(c.version for c in cards) == [1, 2, 3, 4, 5, 6]
    # each version holds the bytes of the model that claimed it: nothing was overwritten
    for card, path in zip(cards, files, strict=True):
        assert registry.store.get_bytes(card.model_key) == path.read_bytes()


def test_alias_moves_are_compare_and_swap_and_keep_history(registry, tmp_path):
    for n in range(4):
        (tmp_path / f"m{n}").write_bytes(bytes([n]))
        registry.register(tmp_path / f"m{n}", **CARD)
    assert registry.set_alias(CHAMPION, 1, only_if_absent=True).version == 1
    assert registry.set_alias(CHAMPION, 2, only_if_absent=True) is None
    with ThreadPoolExecutor(max_workers=3) as pool:
        list(pool.map(lambda v: registry.set_alias(CHAMPION, v), [2, 3, 4]))
    alias = registry.alias(CHAMPION)
    moves = [m.version for m in alias.history]
    assert moves[0] == 1 and sorted(moves[1:]) == [2, 3, 4]  # every move applied, none lost
    assert [m.previous_version for m in alias.history[1:]] == moves[:-1]
    assert registry.resolve(CHAMPION) == alias.version == moves[-1]
    with pytest.raises(RegistryError, match="no version 9"):
        registry.set_alias(CHAMPION, 9)


def test_files_attach_to_a_version_once(registry, model_file):
    card = registry.register(model_file, **CARD)
    key = registry.attach(card.version, "model_card.md", b"# v1")
    assert key.endswith("/000001/model_card.md") and registry.store.get_bytes(key) == b"# v1"
    with pytest.raises(RegistryError, match="already attached"):
        registry.attach(card.version, "model_card.md", b"# changed")
    assert registry.store.get_bytes(key) == b"# v1"
    for name in ("card.json", "../escape.md", "a/b.md"):
        with pytest.raises(RegistryError, match="plain file name"):
            registry.attach(card.version, name, b"x")
    with pytest.raises(RegistryError, match="no version 2"):
        registry.attach(2, "notes.md", b"x")
    assert [c.version for c in registry.versions()] == [1]


def test_load_verifies_sha256_and_round_trips(registry, model_file):
    card = registry.register(model_file, **CARD)
    registry.set_alias(CHAMPION, card.version)
    model, loaded_card = registry.load("champion")
    assert loaded_card.version == card.version
    pixels = np.random.default_rng(0).integers(0, 255, (2, 32, 32, 3)).astype("float32")
    probabilities = model.predict(pixels, verbose=0)
    assert probabilities.shape == (2, 1) and ((0 <= probabilities) & (probabilities <= 1)).all()

    registry.store.put_bytes(card.model_key, b"tampered")  # a write that bypasses the registry
    cached = registry.cache_dir / "models" / "test-model" / f"{card.version:06d}" / "model.keras"
    cached.unlink()
    with pytest.raises(RegistryError, match="refusing to load"):
        registry.load(card.version)


def test_unknown_alias_names_the_known_ones(registry, model_file):
    registry.register(model_file, **CARD)
    registry.set_alias("candidate", 1)
    with pytest.raises(RegistryError, match=r"no alias 'champion'; known: \['candidate'\]"):
        registry.resolve("champion")
    assert registry.describe()[0]["aliases"] == ["candidate"]


@pytest.fixture
def four_versions(registry, tmp_path) -> Registry:
    for n in range(4):
        (tmp_path / f"v{n}").write_bytes(bytes([n]))
        registry.register(tmp_path / f"v{n}", **CARD)
    return registry


@pytest.mark.parametrize("name", ["champion", "staging-eu", "a1", "x" * 63])
def test_alias_names_that_are_accepted(name):
    assert check_alias_name(name) == name


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("Champion", "lowercase"),
        ("my_alias", "lowercase"),
        ("", "lowercase"),
        ("-x", "starting with a letter"),
        ("x" * 64, "at most 63"),
        ("7", "looks like a version"),
        ("v12", "looks like a version"),
    ],
)
def test_alias_names_that_are_refused(name, why):
    with pytest.raises(AliasNameError, match=why):
        check_alias_name(name)


def test_set_alias_refuses_bad_names_and_records_no_empty_moves(four_versions):
    with pytest.raises(AliasNameError):
        four_versions.set_alias("Prod", 1)
    assert four_versions.aliases() == {}
    four_versions.set_alias("prod", 2, reason="first")
    again = four_versions.set_alias("prod", 2, reason="same place")
    assert [m.reason for m in again.history] == ["first"]  # nothing moved, nothing recorded


def test_rollback_walks_back_through_live_moves(four_versions):
    models = four_versions
    for version in (1, 2, 3):
        models.set_alias(CHAMPION, version, reason=f"to {version}")
    back = models.rollback(CHAMPION)
    assert back.version == 2
    move = back.history[-1]
    assert (move.previous_version, move.version, move.reason, move.rollback) == (
        3,
        2,
        "rollback",
        True,
    )
    assert models.rollback(CHAMPION).version == 1
    with pytest.raises(RegistryError, match="nothing to roll back to"):
        models.rollback(CHAMPION)
    assert len(models.alias(CHAMPION).history) == 5  # the refused rollback recorded nothing

    # a promotion after rollbacks is undone first, then the walk continues where it was
    models.set_alias(CHAMPION, 4)
    models.set_alias(CHAMPION, 2)
    assert models.alias(CHAMPION).live_versions() == [1, 4, 2]
    assert [models.rollback(CHAMPION).version for _ in range(2)] == [4, 1]


def test_rollback_of_a_missing_alias_names_the_known_ones(four_versions):
    four_versions.set_alias("candidate", 1)
    with pytest.raises(RegistryError, match=r"no alias 'champion'; known: \['candidate'\]"):
        four_versions.rollback(CHAMPION)


def test_aliases_of_a_version_come_with_their_history(four_versions):
    four_versions.set_alias(CHAMPION, 1)
    four_versions.set_alias(CHAMPION, 2, reason="better AUC")
    four_versions.set_alias("candidate", 2)
    four_versions.set_alias("staging", 3)
    found = {a.alias: a for a in four_versions.aliases_of(2)}
    assert sorted(found) == ["candidate", CHAMPION]
    assert [(m.previous_version, m.version) for m in found[CHAMPION].history] == [(None, 1), (1, 2)]
    assert found[CHAMPION].history[-1].reason == "better AUC"
    assert four_versions.aliases_of(4) == []


def test_diff_shows_only_what_differs_unless_asked(registry, tmp_path):
    path = tmp_path / "m"
    path.write_bytes(b"one")
    parameters = {"training": {"image_size": 32, "epochs": 1}}
    registry.register(path, **{**CARD, "parameters": parameters})
    path.write_bytes(b"two")
    registry.register(
        path,
        **{
            **CARD,
            "metrics": {"accuracy": 0.95},
            "parameters": {"training": {"image_size": 32, "epochs": 3}},
            "dataset_id": "d2",
        },
    )
    rows = {row.field: (row.a, row.b) for row in registry.diff(1, "v2")}
    assert rows["metrics.accuracy"] == (0.9, 0.95)
    assert rows["parameters.training.epochs"] == (1, 3)
    assert rows["dataset_id"] == ("d1", "d2")
    assert rows["model_sha256"][0] != rows["model_sha256"][1]
    assert "parameters.training.image_size" not in rows and "threshold" not in rows
    assert not any(name.startswith("library_versions") for name in rows)

    everything = {row.field: (row.a, row.b) for row in registry.diff(1, 2, everything=True)}
    assert everything["parameters.training.image_size"] == (32, 32)
    assert everything["library_versions.python"][0] == everything["library_versions.python"][1]
    assert list(everything)[0] == "threshold"  # card order: threshold, metrics, parameters, ...


def _cxr(*args: str) -> subprocess.CompletedProcess:
    """The console script (``python -m flows.cli``) against this test's store."""
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *args],
        cwd=REPO,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
    )


@pytest.mark.slow
def test_cli_promotes_rolls_back_shows_and_diffs(settings, store, tmp_path):
    models = Registry(store, settings.model_name, settings.cache_dir)
    for n, accuracy in enumerate([0.8, 0.9]):
        (tmp_path / f"m{n}").write_bytes(bytes([n]))
        models.register(tmp_path / f"m{n}", **{**CARD, "metrics": {"accuracy": accuracy}})
    models.set_alias(CHAMPION, 1, reason="first model")

    promoted = _cxr("registry", "promote", "2", "--reason", "better accuracy")
    assert promoted.returncode == 0 and "champion → version 2 (was 1)" in promoted.stdout

    shown = json.loads(_cxr("registry", "show", "champion", "--json").stdout)
    assert shown["card"]["version"] == 2
    [alias] = shown["aliases"]
    assert [(m["version"], m["reason"]) for m in alias["history"]] == [
        (1, "first model"),
        (2, "better accuracy"),
    ]

    diff = json.loads(_cxr("registry", "diff", "1", "champion", "--json").stdout)
    fields = {row["field"]: (row["a"], row["b"]) for row in diff["fields"]}
    assert fields["metrics.accuracy"] == (0.8, 0.9) and "dataset_id" not in fields

    rolled = _cxr("registry", "rollback")
    assert "champion → version 1 (rolled back from 2)" in rolled.stdout
    refused = _cxr("registry", "rollback")
    assert refused.returncode == 1 and "nothing to roll back to" in refused.stdout


def test_a_champion_without_its_card_is_listed_with_its_alias_and_refuses_to_load(
    registry, tmp_path
):
    (tmp_path / "m").write_bytes(b"champion")
    card = registry.register(tmp_path / "m", **CARD)
    registry.set_alias(CHAMPION, card.version)
    registry.store.delete(f"{registry.prefix}/versions/000001/card.json")
    [row] = registry.describe()
    assert (row["version"], row["status"], row["aliases"]) == (1, NO_CARD, [CHAMPION])
    with pytest.raises(RegistryError, match="version 1 is incomplete: no card"):
        registry.load(CHAMPION)


def test_unreadable_aliases_and_cards_are_listed_with_their_key_and_reason(four_versions):
    models = four_versions
    models.set_alias(CHAMPION, 1)
    models.set_alias("candidate", 2)
    champion_key = f"{models.prefix}/aliases/champion.json"
    card_key = f"{models.prefix}/versions/000003/card.json"
    models.store.put_bytes(champion_key, b'{"alias": "champion", "vers')
    models.store.put_bytes(card_key, b'{"name": "test-model"}')

    rows = models.describe()
    by_version = {row["version"]: row for row in rows if row["version"] is not None}
    assert [by_version[v]["status"] for v in (1, 2, 3, 4)] == [
        COMPLETE,
        COMPLETE,
        UNREADABLE,
        COMPLETE,
    ]
    assert by_version[2]["aliases"] == ["candidate"] and by_version[1]["metrics"] == {
        "accuracy": 0.9
    }
    assert by_version[3]["problem"].startswith(models.store.uri(card_key) + ": ")
    assert "version: Field required" in by_version[3]["problem"]
    [alias_row] = [row for row in rows if row["version"] is None]
    assert (alias_row["status"], alias_row["aliases"]) == (UNREADABLE, [CHAMPION])
    assert alias_row["problem"].startswith(models.store.uri(champion_key) + ": ")
    assert "EOF while parsing" in alias_row["problem"]
    assert not any("\n" in (row["problem"] or "") for row in rows)

    with pytest.raises(RegistryError, match="aliases/champion.json: .*EOF while parsing"):
        models.resolve(CHAMPION)
    with pytest.raises(RegistryError, match="000003/card.json: .*version: Field required"):
        models.card(3)
    assert models.resolve("candidate") == 2  # the rest of the registry still works


@pytest.mark.slow
def test_cli_lists_what_it_can_read_and_names_the_broken_entries(settings, store, tmp_path):
    models = Registry(store, settings.model_name, settings.cache_dir)
    for n in range(3):
        (tmp_path / f"m{n}").write_bytes(bytes([n]))
        models.register(tmp_path / f"m{n}", **CARD)
    models.set_alias(CHAMPION, 1)
    models.store.put_bytes(f"{models.prefix}/aliases/champion.json", b"not json")
    models.store.delete(f"{models.prefix}/versions/000003/model.keras")

    listed = _cxr("registry", "list")
    assert listed.returncode == 0, listed.stdout + listed.stderr
    lines = listed.stdout.splitlines()
    model_uri = store.uri(f"{models.prefix}/versions/000003/model.keras")
    assert f"version 3 ({NO_MODEL}): {model_uri} is missing" in lines
    champion_uri = store.uri(f"{models.prefix}/aliases/champion.json")
    assert any(
        line.startswith(f"alias champion ({UNREADABLE}): {champion_uri}: ")
        and "Invalid JSON" in line
        for line in lines
    )
    assert "validation error" not in listed.stdout
    assert "cxr registry gc" in listed.stdout
    rows = json.loads(_cxr("registry", "list", "--json").stdout)
    assert [(row["version"], row["status"]) for row in rows] == [
        (1, COMPLETE),
        (2, COMPLETE),
        (3, NO_MODEL),
        (None, UNREADABLE),
    ]


@pytest.mark.slow
def test_cli_gc_lists_by_default_and_removes_with_yes(settings, store, tmp_path):
    models = Registry(store, settings.model_name, settings.cache_dir)
    (tmp_path / "m").write_bytes(b"model")
    models.register(tmp_path / "m", **CARD)
    models.store.put_bytes(f"{models.prefix}/versions/000002/model.keras", b"orphan")

    listed = _cxr("registry", "gc", "--min-age-minutes", "0")
    assert listed.returncode == 0, listed.stdout + listed.stderr
    assert "version 2 (incomplete: no card" in listed.stdout and "would remove" in listed.stdout
    assert "--yes" in listed.stdout
    assert [c["status"] for c in json.loads(_cxr("registry", "list", "--json").stdout)] == [
        COMPLETE,
        NO_CARD,
    ]
    recent = _cxr("registry", "gc", "--yes")
    assert "kept" in recent.stdout and "may still be being registered" in recent.stdout
    removed = _cxr("registry", "gc", "--yes", "--min-age-minutes", "0")
    assert removed.returncode == 0 and "version 2 (incomplete: no card" in removed.stdout
    assert "removed 1 incomplete version" in removed.stdout
    assert [c["version"] for c in json.loads(_cxr("registry", "list", "--json").stdout)] == [1]
    assert "no incomplete versions" in _cxr("registry", "gc").stdout
