"""What the runs produced, one command away: list runs, name their outputs, download them.

Every flow run keeps what it produces under ``runs/<flow>/<run>/`` in the bucket (see the README's
"Where outputs land"). This module lists those runs newest first, resolves a run name plus an
output name (``predictions``, ``card``, ``report``, ...) or an ``s3://bucket/key`` URI to objects,
and downloads them to a local path. Plain Python over :class:`~cxr_model.storage.ObjectStore`:
the ``cxr get``, ``cxr open`` and ``cxr runs`` commands are thin wrappers.

Keys come from the store, so they are never trusted as local paths: a key whose relative part
is absolute or contains ``..`` is refused.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path, PurePosixPath

from cxr_model.storage import ObjectStore, parse_s3_uri

RUNS_PREFIX = "runs/"
REGISTERED_FILE = "registered.json"
"""Written by the retrain flow next to its outputs: the version it registered (card key)."""

OUTPUTS: dict[str, tuple[str, ...]] = {
    # name → keys relative to the run prefix, the first that exists wins
    "predictions": ("predictions.csv",),
    "predictions-parquet": ("predictions.parquet",),
    "report": (
        "evaluation/report.html",
        "evaluation/evaluation.html",
        "evaluation/evaluation.md",
        "quality/report.html",
        "quality/report.md",
    ),
    "evaluation": ("evaluation/evaluation.json",),
    "quality": ("quality/report.html", "quality/report.md"),
    "data-docs": ("quality/data_docs/index.html",),
    "split": ("quality/split-report.md",),
    "training": ("training.json",),
    "model": ("model.keras",),
    "cross-validation": ("cross_validation/report.md",),
}
"""Output names a user can give instead of a key; ``card`` is resolved through the registry."""
CARD = "card"
OUTPUT_NAMES = (*OUTPUTS, CARD)


class OutputError(ValueError):
    """A run or output that cannot be found or fetched; the message says which and what exists."""


@dataclass
class Run:
    """One flow run's prefix in the store: its flow, name, latest write and its keys."""

    flow: str
    name: str
    updated: datetime
    keys: list[str] = field(default_factory=list)

    @property
    def prefix(self) -> str:
        return f"{RUNS_PREFIX}{self.flow}/{self.name}/"

    def outputs(self) -> dict[str, str]:
        """The named outputs this run has: name → key."""
        present = set(self.keys)
        found = {}
        for name, candidates in OUTPUTS.items():
            for relative in candidates:
                if self.prefix + relative in present:
                    found[name] = self.prefix + relative
                    break
        if self.prefix + REGISTERED_FILE in present:
            found[CARD] = self.prefix + REGISTERED_FILE  # resolved to the card on download
        return found


def list_runs(store: ObjectStore, flow: str | None = None) -> list[Run]:
    """Every run under ``runs/`` (or only ``flow``'s), newest first (by its latest write)."""
    prefix = f"{RUNS_PREFIX}{flow}/" if flow else RUNS_PREFIX
    runs: dict[tuple[str, str], Run] = {}
    for key, modified in store.list_modified(prefix):
        parts = key[len(RUNS_PREFIX) :].split("/", 2)
        if len(parts) < 3:
            continue  # an object directly under runs/ or runs/<flow>/: not a run's output
        flow_name, run_name, _ = parts
        run = runs.setdefault(
            (flow_name, run_name), Run(flow=flow_name, name=run_name, updated=modified)
        )
        run.updated = max(run.updated, modified)
        run.keys.append(key)
    return sorted(runs.values(), key=lambda r: r.updated, reverse=True)


def find_run(store: ObjectStore, name: str) -> Run:
    """The run called ``name`` (``<run>`` or ``<flow>/<run>``); an OutputError says what exists."""
    flow, _, run_name = name.strip("/").rpartition("/")
    runs = [r for r in list_runs(store, flow or None) if r.name == run_name]
    if not runs:
        recent = ", ".join(r.name for r in list_runs(store)[:5]) or "none yet"
        raise OutputError(f"no run named {name!r} in {store.uri(RUNS_PREFIX)} (recent: {recent})")
    if len(runs) > 1:
        which = ", ".join(f"{r.flow}/{r.name}" for r in runs)
        raise OutputError(f"{name!r} names more than one run ({which}): give <flow>/<run>")
    return runs[0]


@dataclass(frozen=True)
class Target:
    """What to download: objects in ``store``, each with its path relative to the destination."""

    store: ObjectStore
    files: list[tuple[str, str]]  # (key, relative local path)
    uri: str
    main_key: str | None = None  # the object asked for; None for a prefix

    @property
    def single(self) -> bool:
        return len(self.files) == 1


def _relative(key: str, base: str) -> str:
    """``key`` below ``base`` as a safe relative path (never absolute, never with ``..``)."""
    relative = PurePosixPath(key[len(base) :].lstrip("/"))
    if not relative.parts or relative.is_absolute() or ".." in relative.parts:
        raise OutputError(f"refusing to write {key!r} to a local path: unsafe name")
    return relative.as_posix()


def _folder(store: ObjectStore, prefix: str, uri: str) -> Target:
    prefix = prefix.rstrip("/") + "/"
    keys = [k for k in store.list_keys(prefix) if not k.endswith("/")]
    if not keys:
        raise OutputError(f"nothing at {uri}")
    base = prefix.rstrip("/").rpartition("/")[0]
    return Target(store, [(k, _relative(k, base)) for k in sorted(keys)], uri)


def resolve_uri(store: ObjectStore, uri: str, *, with_folder: bool = False) -> Target:
    """``s3://bucket/key`` (an object, or a prefix: every object under it) as a download target.

    ``with_folder``: an HTML page comes with the other files of its folder (its plots, its
    stylesheets), so that it renders from the local copy.
    """
    try:
        bucket, key = parse_s3_uri(uri)
    except ValueError as exc:
        raise OutputError(str(exc)) from exc
    objects = store.in_bucket(bucket)
    if key and not key.endswith("/") and objects.exists(key):
        if with_folder and key.endswith((".html", ".htm")):
            folder = key.rpartition("/")[0]
            if folder:
                return replace(_folder(objects, folder, uri), main_key=key)
        return Target(objects, [(key, _relative(key, key.rpartition("/")[0]))], uri, key)
    return _folder(objects, key, uri)


def _card_uri(store: ObjectStore, registered_key: str) -> str:
    try:
        record = json.loads(store.get_bytes(registered_key))
        return record["card_uri"]
    except (ValueError, KeyError, TypeError) as exc:
        raise OutputError(f"{store.uri(registered_key)} does not name a model card: {exc}") from exc


def resolve_output(store: ObjectStore, run_name: str, output: str, **kwargs) -> Target:
    """A run's output by name (``predictions``, ``card``, ``report``, ...) or by its key relative
    to the run (``evaluation/roc.png``) as a download target."""
    run = find_run(store, run_name)
    named = run.outputs()
    if output in named:
        key = named[output]
        uri = _card_uri(store, key) if output == CARD else store.uri(key)
        return resolve_uri(store, uri, **kwargs)
    candidate = run.prefix + output.strip("/")
    if candidate in run.keys or any(k.startswith(candidate + "/") for k in run.keys):
        return resolve_uri(store, store.uri(candidate), **kwargs)
    has = ", ".join(named) or "no named outputs"
    raise OutputError(
        f"run {run.flow}/{run.name} has no {output!r} (it has: {has}; or give a key under "
        f"{store.uri(run.prefix)})"
    )


def resolve(store: ObjectStore, what: str, output: str | None = None, **kwargs) -> Target:
    """``s3://...`` alone, or a run name with an output name: see :func:`resolve_output`."""
    if what.startswith("s3://"):
        if output is not None:
            raise OutputError("give either an s3:// URI or a run name and an output, not both")
        return resolve_uri(store, what, **kwargs)
    if output is None:
        raise OutputError(
            f"{what!r} is not an s3:// URI: give a run name and an output "
            f"({', '.join(OUTPUT_NAMES)})"
        )
    return resolve_output(store, what, output, **kwargs)


def download(target: Target, dest: Path, *, overwrite: bool = False) -> Path:
    """Download ``target`` to ``dest``; return the local path of the file (or folder).

    A single file goes to ``dest`` (or into it, when it is a folder); several files (a prefix)
    go under ``dest``. An existing file is never replaced unless ``overwrite``.
    """
    dest = dest.expanduser()
    if target.main_key is not None:  # one object (an HTML page's folder is for `open`)
        key, relative = next(f for f in target.files if f[0] == target.main_key)
        path = dest / PurePosixPath(relative).name if dest.is_dir() else dest
        _refuse_existing([path], overwrite)
        target.store.download(key, path)
        return path.resolve()
    paths = [(key, dest / relative) for key, relative in target.files]
    _refuse_existing([p for _, p in paths], overwrite)
    for key, path in paths:
        target.store.download(key, path)
    top = PurePosixPath(target.files[0][1]).parts[0]
    return (dest / top).resolve()


def _refuse_existing(paths: Iterable[Path], overwrite: bool) -> None:
    if overwrite:
        return
    existing = [p for p in paths if p.exists()]
    if existing:
        more = f" and {len(existing) - 1} more" if len(existing) > 1 else ""
        raise OutputError(f"{existing[0]}{more} already exists: pass --force to replace it")


def fetch_to_cache(target: Target, cache_dir: Path) -> Path:
    """Download ``target`` under ``cache_dir/outputs/<bucket>/<key>`` (replacing older copies);
    return the local path of the object asked for, or of the folder."""
    root = cache_dir / "outputs" / target.store.bucket
    for key, _ in target.files:
        target.store.download(key, root / _relative(key, ""))
    if target.main_key is not None:
        return (root / _relative(target.main_key, "")).resolve()
    common = _common_prefix(k for k, _ in target.files)
    return (root / _relative(common, "")).resolve() if common else root.resolve()


def _common_prefix(keys: Iterable[str]) -> str:
    parts = [k.split("/")[:-1] for k in keys]
    common = []
    for level in zip(*parts, strict=False):
        if len(set(level)) != 1:
            break
        common.append(level[0])
    return "/".join(common)
