"""PyTorch datasets over a shard folder, for training on a job's output.

Kept apart from `augment.shards` (the format) so that writing shards never imports torch.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.utils.data

from augment.images import decode_png
from augment.metrics.judges import JUDGE_NAMES  # per-row task-model scores, nan where not measured
from augment.shards import ROW_GROUP_ROWS, read_manifest
from augment.store import Folder


def _row_to_item(row: dict[str, Any]) -> dict[str, Any]:
    """One shard row as training tensors (instances and depth are not read).

    Missing values become collate-friendly stand-ins: label -1, label_name "", seed -1,
    parent_id "", mask an empty int64 tensor of shape (0, 0), label_preservation and
    label_consistency nan (not measured, or a shard written before the score existed), so a
    training loop can weight or drop rows by them.
    """
    image = decode_png(row["image"]["bytes"])
    mask = row["mask"]
    boxes = row["boxes"] or []
    scores = row.get("scores") or {}
    return {
        "id": row["id"],
        "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
        "label": -1 if row["label"] is None else int(row["label"]),
        "label_name": row["label_name"] or "",
        "mask": (torch.empty((0, 0), dtype=torch.int64) if mask is None
                 else torch.from_numpy(decode_png(mask["bytes"]).reshape(image.shape[:2]).astype(np.int64))),
        "boxes": torch.tensor([[b["x"], b["y"], b["w"], b["h"]] for b in boxes], dtype=torch.float32).reshape(-1, 4),
        "box_labels": torch.tensor([b["label"] for b in boxes], dtype=torch.int64),
        "source": row["source"],
        "seed": -1 if row["seed"] is None else int(row["seed"]),
        "parent_id": row["parent_id"] or "",
        **{name: float("nan") if scores.get(name) is None else float(scores[name]) for name in JUDGE_NAMES},
    }


_ITEM_COLUMNS = ["id", "image", "label", "label_name", "mask", "boxes", "source", "seed", "parent_id", "scores"]


def collate_items(items: list[dict[str, Any]]) -> dict[str, Any]:
    """DataLoader collate: stack images and labels; boxes and masks stay per-item lists."""
    out: dict[str, Any] = {k: [it[k] for it in items] for k in items[0]}
    out["label"] = torch.tensor(out["label"], dtype=torch.int64)
    out["seed"] = torch.tensor(out["seed"], dtype=torch.int64)
    for name in JUDGE_NAMES:
        if name in out:
            out[name] = torch.tensor(out[name], dtype=torch.float32)
    if len({tuple(im.shape) for im in out["image"]}) == 1:
        out["image"] = torch.stack(out["image"])
    return out


class _ShardFiles:
    """Listed shard files of a folder (a path or an s3:// URL), from its manifest (unlisted
    files are never read)."""

    def __init__(self, shard_dir: Path | str) -> None:
        self.folder = Folder(shard_dir)
        self.manifest = read_manifest(self.folder)
        self.files = [e.file for e in self.manifest.shards]
        self.rows = [e.rows for e in self.manifest.shards]

    def open(self, f: int) -> pq.ParquetFile:
        return pq.ParquetFile(self.folder.open(self.files[f]))


class ShardDataset(_ShardFiles, torch.utils.data.Dataset):
    """Map-style dataset over a shard folder (torch `Dataset` protocol).

    Rows are addressed through the manifest; a row's row group is read on demand and the
    current file and row group are cached, so sequential access reads each group once
    (random access costs one row-group read per item: prefer `ShardIterableDataset`).
    """

    def __init__(self, shard_dir: Path, transform: Callable[[dict], dict] | None = None) -> None:
        super().__init__(shard_dir)
        self.transform = transform
        self._starts = np.cumsum([0] + self.rows)
        self._file: tuple[tuple[int, int], pq.ParquetFile, np.ndarray] | None = None
        self._group: tuple[int, int, list[dict]] | None = None

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __getitem__(self, index: int) -> dict[str, Any]:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} rows")
        index %= n
        # 1. Which file, then which row group inside it (opened lazily: safe across workers).
        f = int(np.searchsorted(self._starts, index, side="right") - 1)
        local = index - int(self._starts[f])
        key = (f, os.getpid())  # a DataLoader worker never reuses its parent's handle
        if self._file is None or self._file[0] != key:
            pf = self.open(f)
            group_rows = [pf.metadata.row_group(g).num_rows for g in range(pf.num_row_groups)]
            self._file = (key, pf, np.cumsum([0] + group_rows))
            self._group = None
        _, pf, group_starts = self._file
        g = int(np.searchsorted(group_starts, local, side="right") - 1)
        # 2. Read the row group once and keep it until another is needed.
        if self._group is None or self._group[:2] != (f, g):
            self._group = (f, g, pf.read_row_group(g, columns=_ITEM_COLUMNS).to_pylist())
        item = _row_to_item(self._group[2][local - int(group_starts[g])])
        return self.transform(item) if self.transform else item


class ShardIterableDataset(_ShardFiles, torch.utils.data.IterableDataset):
    """Streaming dataset over a shard folder (torch `IterableDataset` protocol).

    DataLoader workers each take every n-th file; with `shuffle_files` the file order is a
    permutation drawn from `seed` plus the epoch (`set_epoch`), the same in every worker.
    """

    def __init__(self, shard_dir: Path, transform: Callable[[dict], dict] | None = None,
                 shuffle_files: bool = False, seed: int = 0) -> None:
        super().__init__(shard_dir)
        self.transform = transform
        self.shuffle_files = shuffle_files
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return sum(self.rows)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        order = list(range(len(self.files)))
        if self.shuffle_files:
            order = list(np.random.default_rng([self.seed, self.epoch]).permutation(order))
        info = torch.utils.data.get_worker_info()
        if info is not None:
            order = order[info.id::info.num_workers]
        for f in order:
            pf = self.open(f)
            for batch in pf.iter_batches(batch_size=ROW_GROUP_ROWS, columns=_ITEM_COLUMNS):
                for row in batch.to_pylist():
                    item = _row_to_item(row)
                    yield self.transform(item) if self.transform else item
