"""Split leakage maths: the derived tables the ``cxr_split`` suite checks, and near-duplicates.

A patient or an image content (sha256) in more than one split, or a split without some class, is
leakage the suite fails on (critical). A Val image whose perceptual hash (dhash) is within a few
bits of a Train image's is listed as a near-duplicate (warning); hashes are compared as 64-bit
words with numpy in blocks, so memory stays bounded for large splits.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from cxr_model.quality.reports import NearDuplicate
from cxr_model.quality.values import is_missing
from cxr_model.split import TRAIN, VAL


def patient_table(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (real) patient: in how many splits, which, how many images."""
    patient = frame["patient_id"].astype("string").str.strip()
    known = frame[patient.notna() & (patient != "")].assign(patient=patient)
    return _spread(known, "patient", "patient")


def content_table(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per image content (sha256): in how many splits, which, and its keys."""
    sha = frame["sha256"].astype("string")
    return _spread(frame[sha.notna() & (sha != "")], "sha256", "sha256")


def _spread(frame: pd.DataFrame, by: str, name: str) -> pd.DataFrame:
    columns = ["key", name, "n_splits", "splits", "images", "keys"]
    if frame.empty:
        return pd.DataFrame(
            {
                c: pd.Series(dtype="int64" if c in ("n_splits", "images") else object)
                for c in columns
            }
        )
    grouped = frame.groupby(by, sort=True)
    table = pd.DataFrame(
        {
            "n_splits": grouped["split"].nunique(),
            "splits": grouped["split"].agg(lambda s: ", ".join(sorted(set(s)))),
            "images": grouped.size(),
            "keys": grouped["key"].agg(lambda s: _shorten(sorted(map(str, s)))),
        }
    )
    table.index.name = name
    table = table.reset_index()
    table["key"] = table[name].astype(str)
    return table[columns]


def split_class_table(frame: pd.DataFrame, labels: list[str]) -> pd.DataFrame:
    """One row per split × class (Train and Val always; other splits when present)."""
    splits = [TRAIN, VAL] + sorted(set(frame["split"]) - {TRAIN, VAL})
    counts = frame.groupby(["split", "label"]).size()
    rows = [
        {
            "key": f"{split}/{label}",
            "split": split,
            "label": label,
            "images": int(counts.get((split, label), 0)),
        }
        for split in splits
        for label in labels
    ]
    return pd.DataFrame(rows, columns=["key", "split", "label", "images"])


def near_duplicates(
    frame: pd.DataFrame, images: pd.DataFrame, distance: int, block: int = 2048
) -> tuple[list[NearDuplicate], pd.DataFrame, dict[str, int]]:
    """Val × Train pairs with dhash distance ≤ ``distance`` (identical content excluded: that is
    the critical sha256 check), and per Val image its nearest Train image."""
    columns = [
        "key",
        "original_path",
        "nearest_train_key",
        "nearest_train_path",
        "nearest_train_distance",
    ]
    info = images.drop_duplicates("key").set_index("key") if "key" in images else None
    lookup = frame[["key", "split", "sha256"]].copy()
    for column in ("dhash", "original_path"):
        if column in frame:
            lookup[column] = frame[column]
        elif info is not None and column in info:
            lookup[column] = lookup["key"].map(info[column])
        else:
            lookup[column] = None
    # each hash as 64-bit words; hashes of another length than the usual (older manifests)
    # are left out of the comparison rather than compared bit for bit with the wrong layout
    words = [_hash_words(h) for h in lookup["dhash"]]
    lengths = pd.Series([len(w) for w in words if w is not None])
    usual = int(lengths.mode().iloc[0]) if len(lengths) else 0
    lookup["hash"] = pd.Series(
        [w if w is not None and len(w) == usual else None for w in words],
        index=lookup.index,
        dtype=object,
    )
    val = lookup[(lookup["split"] == VAL) & lookup["hash"].notna()].reset_index(drop=True)
    train = lookup[(lookup["split"] == TRAIN) & lookup["hash"].notna()].reset_index(drop=True)
    nearest = pd.DataFrame(
        {
            "key": val["key"].astype(str),
            "original_path": val["original_path"],
            "nearest_train_key": None,
            "nearest_train_path": None,
            "nearest_train_distance": np.full(len(val), np.nan),
        },
        columns=columns,
    )
    hashed = {VAL: len(val), TRAIN: len(train)}
    if val.empty or train.empty:
        return [], nearest, hashed
    train_hash = np.stack(train["hash"].to_list())
    train_sha = train["sha256"].astype(str).to_numpy()
    val_hash = np.stack(val["hash"].to_list())
    val_sha = val["sha256"].astype(str).to_numpy()
    never = usual * 64 + 1  # farther than any two hashes can be
    pairs: list[NearDuplicate] = []
    best = np.full(len(val), never, dtype=np.int64)
    best_at = np.zeros(len(val), dtype=np.int64)
    step = max(1, block * block // max(1, len(train)))
    for start in range(0, len(val), step):
        stop = min(start + step, len(val))
        xor = val_hash[start:stop, None, :] ^ train_hash[None, :, :]
        d = np.bitwise_count(xor).astype(np.int64).sum(axis=-1)
        d[val_sha[start:stop, None] == train_sha[None, :]] = never  # identical: not "near"
        best[start:stop] = d.min(axis=1)
        best_at[start:stop] = d.argmin(axis=1)
        for i, j in zip(*np.nonzero(d <= distance), strict=True):
            v, t = val.iloc[start + i], train.iloc[j]
            pairs.append(
                NearDuplicate(
                    val_key=str(v["key"]),
                    val_path=_text(v["original_path"]),
                    train_key=str(t["key"]),
                    train_path=_text(t["original_path"]),
                    distance=int(d[i, j]),
                )
            )
    found = best < never
    nearest.loc[found, "nearest_train_key"] = train["key"].to_numpy()[best_at[found]]
    nearest.loc[found, "nearest_train_path"] = train["original_path"].to_numpy()[best_at[found]]
    nearest.loc[found, "nearest_train_distance"] = best[found]
    pairs.sort(key=lambda p: (p.distance, p.val_key, p.train_key))
    return pairs, nearest, hashed


def _hash_words(value: Any) -> np.ndarray | None:
    """A hex hash as big-endian 64-bit words, or None when missing or not hex."""
    if is_missing(value) or not str(value).strip():
        return None
    text = str(value).strip()
    try:
        raw = bytes.fromhex(text.zfill(-(-len(text) // 16) * 16))
    except ValueError:
        return None
    return np.frombuffer(raw, dtype=">u8").astype(np.uint64)


def _text(value: Any) -> str:
    return "" if is_missing(value) else str(value)


def _shorten(values: list[str], limit: int = 5) -> str:
    more = f" (+{len(values) - limit} more)" if len(values) > limit else ""
    return ", ".join(values[:limit]) + more
