"""The Ray Data stages called directly on small batches, before Ray is involved."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from augment.shards import shard_entry_from_file, table_to_samples
from augment.sources.base import SourceRecord
from jobs.config import QuotaConfig
from jobs.datasink import ShardDatasink, remove_stale_temporaries
from jobs.plan import make_plan
from jobs.workers import ScanWorker, ShardWorker, record_columns

DIGITS = {"kind": "digits", "image_size": 16, "color": "gray"}
TRANSFORMS = [{"name": "Affine", "p": 1.0, "params": {"rotate": [-20, 20]}}]
NAMES = [str(i) for i in range(10)]


def tiny_plan(rows_per_shard: int = 6):
    records = [SourceRecord(f"digits/{i:04d}", i % 10, str(i)) for i in range(20)]
    return make_plan(class_names=NAMES, train=records, holdout=[], quota=QuotaConfig(multiplier=2.0),
                     seed=5, rows_per_shard=rows_per_shard, include_real=True)


def test_shard_worker_makes_the_planned_rows_deterministically() -> None:
    plan = tiny_plan()
    worker = ShardWorker(DIGITS, TRANSFORMS, NAMES, png_compress_level=1)
    batch = {"spec": np.array([plan.train[0].to_json()], dtype=object)}
    first, second = worker(batch), ShardWorker(DIGITS, TRANSFORMS, NAMES, 1)(batch)
    assert first.num_rows == plan.train[0].rows
    assert first.equals(second)
    samples = table_to_samples(first.drop_columns(["_shard"]))
    real = [s for s in samples if s.source == "real"]
    synthetic = [s for s in samples if s.source == "classical"]
    assert real and synthetic and all(s.parent_id in {r.id for r in real} for s in synthetic)
    assert all(s.image.shape == (16, 16, 1) for s in samples)
    # An augmented child differs from its parent (Affine with p=1 moves pixels).
    parent = {s.id: s for s in real}[synthetic[0].parent_id]
    assert not np.array_equal(parent.image, synthetic[0].image)


def test_scan_worker_flags_unusable_records(tmp_path: Path) -> None:
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        Image.new("RGB", (8, 8), (10, 20, 30)).save(tmp_path / name / "ok.png")
    (tmp_path / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"junk" * 10)
    source = {"kind": "folder", "root": str(tmp_path)}
    from jobs.sources import build_source
    from jobs.config import FolderSourceConfig

    records = build_source(FolderSourceConfig(kind="folder", root=tmp_path)).records()
    columns = record_columns(records)
    batch = {key: np.array([row[key] for row in columns], dtype=object if key != "label" else np.int64)
             for key in ("id", "label", "ref")}
    result = ScanWorker(source)(batch)
    reasons = dict(zip(result["id"], result["reason"]))
    assert reasons["a/ok.png"] == "" and reasons["b/ok.png"] == ""
    assert reasons["a/broken.png"]


def test_datasink_publishes_whole_shards_and_refuses_partial_ones(tmp_path: Path) -> None:
    plan = tiny_plan()
    worker = ShardWorker(DIGITS, TRANSFORMS, NAMES, png_compress_level=1)
    tables = [worker({"spec": np.array([s.to_json()], dtype=object)}) for s in plan.train[:2]]
    sink = ShardDatasink({s.file: str(tmp_path) for s in plan.train}, {s.file: s.rows for s in plan.train}, NAMES)
    entries = sink.write(iter([pa.concat_tables(tables)]), ctx=None)
    assert [e.file for e in entries] == [s.file for s in plan.train[:2]]
    for entry in entries:
        assert shard_entry_from_file(tmp_path / entry.file) == entry
    with pytest.raises(RuntimeError, match="block was split"):
        sink.write(iter([tables[0].slice(0, 2)]), ctx=None)
    (tmp_path / ".train-00009.parquet.tmp-1234").write_bytes(b"partial")
    assert remove_stale_temporaries(tmp_path) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(e.file for e in entries)
