"""The registry under real concurrency: separate processes against the real S3 server.

Each child process opens its own store from the environment (the ``settings`` fixture's variables,
passed on explicitly), waits at a barrier so that all of them act at once, then registers a model
or moves an alias. No shared client, no shared memory: only S3's conditional writes keep them apart.
"""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import pytest

from cxr_model.config import Settings
from cxr_model.registry import CHAMPION, Registry
from cxr_model.storage import open_store

pytestmark = pytest.mark.slow  # six processes each, started from a forkserver
PROCESSES = 6
MODEL_NAME = "race-model"
CARD = dict(threshold=0.5, metrics={}, training={}, parameters={}, dataset_id="d1")
JOIN_TIMEOUT_S = 120


def _registry(env: dict[str, str]) -> Registry:
    os.environ.update(env)
    settings = Settings()
    return Registry(open_store(settings), MODEL_NAME, settings.cache_dir)


def _promote(env: dict[str, str], barrier, version: int) -> None:
    models = _registry(env)
    barrier.wait()
    models.set_alias(CHAMPION, version, reason=f"process for v{version}")


def _register(env: dict[str, str], barrier, path: str, results) -> None:
    models = _registry(env)
    barrier.wait()
    card = models.register(Path(path), **CARD)
    results.put((path, card.version))


def _context():
    """Fresh processes (never a fork of this one, which may hold TensorFlow's threads), forked
    from one server that has imported the registry once, so six of them start quickly."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["cxr_model.registry", "cxr_model.storage", __name__])
    return context


def _run_all(target, argument_lists: list[tuple]) -> None:
    """Start one process per argument tuple, all released together; all must succeed."""
    context = _context()
    barrier = context.Barrier(len(argument_lists))
    env = {name: value for name, value in os.environ.items() if name.startswith(("CXR_", "AWS_"))}
    processes = [
        context.Process(target=target, args=(env, barrier, *arguments))
        for arguments in argument_lists
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(JOIN_TIMEOUT_S)
    assert [p.exitcode for p in processes] == [0] * len(processes)


@pytest.fixture
def registry(settings, store) -> Registry:
    return Registry(store, MODEL_NAME, settings.cache_dir)


def test_processes_moving_one_alias_at_once_lose_no_move(registry, tmp_path):
    for n in range(PROCESSES + 1):
        (tmp_path / f"m{n}").write_bytes(f"model {n}".encode())
        registry.register(tmp_path / f"m{n}", **CARD)
    registry.set_alias(CHAMPION, 1, reason="initial")

    targets = list(range(2, PROCESSES + 2))
    _run_all(_promote, [(version,) for version in targets])

    alias = registry.alias(CHAMPION)
    moves = alias.history
    assert len(moves) == PROCESSES + 1
    assert moves[0].version == 1 and moves[0].reason == "initial"
    assert sorted(m.version for m in moves[1:]) == targets  # each process's move, exactly once
    assert sorted(m.reason for m in moves[1:]) == sorted(f"process for v{v}" for v in targets)
    for before, move in zip(moves, moves[1:], strict=False):
        assert move.previous_version == before.version  # every move applied on top of the last
    assert alias.version == moves[-1].version


def test_processes_registering_at_once_get_distinct_versions(registry, tmp_path):
    files = []
    for n in range(PROCESSES):
        path = tmp_path / f"model-{n}.keras"
        path.write_bytes(f"model bytes {n}".encode() * 100)
        files.append(path)
    results = _context().Queue()
    _run_all(_register, [(str(path), results) for path in files])

    claimed = dict(results.get(timeout=JOIN_TIMEOUT_S) for _ in files)
    assert sorted(claimed.values()) == list(range(1, PROCESSES + 1))
    assert [card.version for card in registry.versions()] == list(range(1, PROCESSES + 1))
    for path, version in claimed.items():
        card = registry.card(version)
        data = Path(path).read_bytes()
        # each version holds the bytes of the process that claimed it: nothing was overwritten
        assert registry.store.get_bytes(card.model_key) == data
        assert card.model_bytes == len(data)
