"""The S3 model registry: immutable numbered versions, race-safe aliases, verified loading."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from cxr_model.model import seed_cnn
from cxr_model.registry import CHAMPION, Registry, RegistryError

CARD = dict(threshold=0.5, metrics={"accuracy": 0.9}, training={}, parameters={}, dataset_id="d1")


@pytest.fixture
def registry(store, tmp_path) -> Registry:
    return Registry(store, "test-model", tmp_path / "cache")


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "model.keras"
    seed_cnn(image_size=32).save(path)
    return path


def test_versions_are_numbered_and_carry_a_card(registry, model_file):
    first = registry.register(model_file, **CARD)
    second = registry.register(model_file, **CARD)
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
