"""What the report compares: the real side (train and holdout) and the synthetic rows of
the published shards, all at the metric size (`augment.metrics.preprocess`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from augment.images import decode_png
from augment.metrics.preprocess import resize_mask, to_metric_size
from augment.seeding import derive_seed

UNLABELLED = "unlabelled"  # how rows without a class label are named wherever a person reads them
SUBSAMPLE_STREAM = 81  # derive_seed(job seed, SUBSAMPLE_STREAM, source number) picks a source's rows


@dataclass
class RealImages:
    """Real images at the metric size: N x S x S x C uint8, labels (-1: none), masks or None."""

    images: np.ndarray
    labels: np.ndarray
    masks: np.ndarray | None
    ids: np.ndarray | None = None  # the source's record ids (= the real rows' shard ids); None: not known

    def __len__(self) -> int:
        return len(self.images)


@dataclass
class RealSide:
    """What the synthetic rows are compared against."""

    train: RealImages
    holdout: RealImages
    size: int
    channels: int
    origin: str  # "source" or "report.reference (<kind>)"
    own_tag: str | None  # the `source` tag of the job's own rows; None: every row is compared


@dataclass
class NearestTrain:
    """Each synthetic row's nearest real training image in the report's first feature space."""

    distances: np.ndarray  # float64
    indices: np.ndarray  # int64, into `RealSide.train`
    near_copy_threshold: float | None  # at or below it a row counts as a near copy; None: not calibrated


@dataclass
class SyntheticRows:
    """The synthetic rows of one source the report looks at (a seeded subsample)."""

    source: str
    rows: int  # all rows of this source in the shards
    images: np.ndarray  # at the metric size
    labels: np.ndarray  # -1: none
    masks: np.ndarray | None
    realism: np.ndarray  # stored row scores (nan where none)
    confidence: np.ndarray
    ids: np.ndarray | None = None  # the shard `id` of each row (object array of str); None: not from shards
    nearest: NearestTrain | None = None  # set once measured (`measure_features`)


def read_synthetic(shards: Path, own_tag: str | None, size: int, channels: int, limit: int,
                   seed: int) -> dict[str, SyntheticRows]:
    """Rows of every source other than `own_tag` (None: all rows), by source; at most
    `limit` per source, a seeded choice kept in shard order."""
    files = sorted(shards.glob("*.parquet"))
    if not files:
        return {}
    index = pq.read_table(files, columns=["source"]) if len(files) == 1 else \
        pq.ParquetDataset([str(f) for f in files]).read(columns=["source"])
    tags = np.array(index.column("source").to_pylist(), dtype=object)
    wanted = sorted({str(t) for t in tags if own_tag is None or t != own_tag})
    if not wanted:
        return {}
    columns = ["id", "image", "label", "mask", "source", "scores"]
    table = pq.ParquetDataset([str(f) for f in files]).read(columns=columns)
    out = {}
    for number, tag in enumerate(wanted):
        positions = np.flatnonzero(tags == tag)
        if len(positions) > limit:
            rng = np.random.default_rng(derive_seed(seed, SUBSAMPLE_STREAM, number))
            positions = np.sort(rng.choice(positions, size=limit, replace=False))
        rows = table.take(positions).to_pylist()
        images = np.stack([to_metric_size(decode_png(r["image"]["bytes"]), size, channels) for r in rows])
        masks = None
        if all(r["mask"] is not None for r in rows):
            masks = np.stack([resize_mask(_plane(decode_png(r["mask"]["bytes"])), size) for r in rows])
        scores = [r["scores"] or {} for r in rows]
        out[tag] = SyntheticRows(
            tag, int(np.sum(tags == tag)), images,
            np.array([-1 if r["label"] is None else r["label"] for r in rows], dtype=np.int64), masks,
            np.array([np.nan if s.get("realism") is None else s["realism"] for s in scores], dtype=np.float64),
            np.array([np.nan if s.get("confidence") is None else s["confidence"] for s in scores], np.float64),
            ids=np.array([r["id"] for r in rows], dtype=object))
    return out


def _plane(array: np.ndarray) -> np.ndarray:
    """A decoded mask as H x W (PNG decoding may keep a channel axis)."""
    return array[..., 0] if array.ndim == 3 else array


def class_name(label: int | None, class_names: list[str]) -> str:
    """A class id as a person reads it; no label (None or -1) is `UNLABELLED`."""
    return UNLABELLED if label is None or label < 0 else class_names[label]
