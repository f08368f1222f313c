"""Parquet shards: round trip, plain readers, `datasets`, determinism, manifest, torch readers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from augment.images import decode_png, encode_png
from augment.shard_dataset import ShardDataset, ShardIterableDataset, collate_items
from augment.sample import Box, GeneratorInfo, Sample, Scores
from augment.shards import (
    MANIFEST_NAME,
    SCHEMA_VERSION,
    ShardEntry,
    read_manifest,
    samples_to_table,
    shard_entry_from_file,
    shard_schema,
    table_to_samples,
    verify_shards,
    write_manifest,
    write_shard,
)

CLASSES = ["cat", "dog", "bird"]


def make_samples(n: int, offset: int = 0) -> list[Sample]:
    rng = np.random.default_rng(offset)
    out = []
    for i in range(offset, offset + n):
        gray = i % 3 == 0
        image = rng.integers(0, 256, (12, 16, 1 if gray else 3), dtype=np.uint8)
        mask = (rng.integers(0, 3, (12, 16)) * 400).astype(np.uint16) if i % 2 == 0 else None
        out.append(Sample(
            id=f"s{i:04d}",
            image=image,
            label=None if i % 5 == 4 else i % 3,
            mask=mask,
            boxes=[Box(1.5, 2.0, 3.25, 4.0, i % 3)] * (i % 3),
            instances=mask,
            depth=(rng.integers(0, 60000, (12, 16))).astype(np.uint16) if i % 4 == 0 else None,
            source="real" if i % 2 else "classical",
            generator=None if i % 2 else GeneratorInfo("albumentations", None, '{"a":1}'),
            seed=None if i % 2 else i,
            parent_id=None if i % 2 else f"s{i + 1:04d}",
            scores=None if i % 2 else Scores(0.5, None),
        ))
    return out


@pytest.fixture()
def shard_dir(tmp_path: Path) -> Path:
    """Two shards (70 rows: two row groups, and 30 rows) plus a manifest."""
    entries = [
        write_shard(samples_to_table(make_samples(70), CLASSES), tmp_path / "part-00000.parquet"),
        write_shard(samples_to_table(make_samples(30, offset=70), CLASSES), tmp_path / "part-00001.parquet"),
    ]
    write_manifest(tmp_path, entries, CLASSES, extra={"job": "test"})
    return tmp_path


def test_png_helpers_round_trip_and_are_deterministic():
    rgb = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    ids = np.array([[0, 300], [65535, 7]], np.uint16)
    for array in (rgb, ids, rgb[:, :, :1]):
        data = encode_png(array, 6)
        assert data == encode_png(array, 6)
        back = decode_png(data)
        np.testing.assert_array_equal(back.reshape(array.shape), array)
        assert back.dtype == array.dtype
    with pytest.raises(ValueError, match="float32"):
        encode_png(np.zeros((2, 2), np.float32))


def test_schema_columns_and_metadata():
    schema = shard_schema(CLASSES)
    assert schema.names == ["id", "image", "height", "width", "label", "label_name", "mask", "instances",
                            "depth", "boxes", "source", "generator", "seed", "parent_id", "scores", "licence",
                            "parent_licence"]
    assert str(schema.field("image").type) == "struct<bytes: binary, path: string>"
    assert str(schema.field("label").type) == "int64"
    meta = json.loads(schema.metadata[b"synthaug"])
    assert meta == {"schema_version": SCHEMA_VERSION, "class_names": CLASSES}
    features = json.loads(schema.metadata[b"huggingface"])["info"]["features"]
    assert features["label"] == {"names": CLASSES, "_type": "ClassLabel"}
    assert features["mask"] == {"_type": "Image"}


def test_round_trip_is_exact():
    samples = make_samples(12)
    back = table_to_samples(samples_to_table(samples, CLASSES))
    for a, b in zip(samples, back, strict=True):
        assert a.image.shape == b.image.shape and a.image.tobytes() == b.image.tobytes()
        for key in ("mask", "instances", "depth"):
            x, y = getattr(a, key), getattr(b, key)
            assert (x is None and y is None) or (y.dtype == np.uint16 and np.array_equal(x, y))
        assert (a.id, a.label, a.boxes, a.source, a.generator, a.seed, a.parent_id, a.scores) == (
            b.id, b.label, b.boxes, b.source, b.generator, b.seed, b.parent_id, b.scores)


def test_bad_rows_are_refused():
    sample = make_samples(1)[0]
    sample.label = 3
    with pytest.raises(ValueError, match="label 3"):
        samples_to_table([sample], CLASSES)
    sample.label, sample.source = 0, "photo shop!"
    with pytest.raises(ValueError, match="photo shop!"):
        samples_to_table([sample], CLASSES)


def test_write_is_atomic_deterministic_and_counted(tmp_path: Path):
    table = samples_to_table(make_samples(20), CLASSES)
    a = write_shard(table, tmp_path / "a.parquet")
    b = write_shard(samples_to_table(make_samples(20), CLASSES), tmp_path / "b.parquet")
    assert a.sha256 == b.sha256 and a.rows == 20
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.parquet", "b.parquet"]  # no temp left
    labels = [s.label for s in make_samples(20) if s.label is not None]
    assert a.class_counts == {CLASSES[k]: labels.count(k) for k in set(labels)}
    assert a.source_counts == {"classical": 10, "real": 10}
    assert pq.ParquetFile(tmp_path / "a.parquet").metadata.num_row_groups == 1
    assert shard_entry_from_file(tmp_path / "a.parquet") == a
    (tmp_path / "junk.parquet").write_bytes(b"junk")
    with pytest.raises(ValueError, match="junk.parquet"):
        shard_entry_from_file(tmp_path / "junk.parquet")


def test_plain_pyarrow_and_pandas_read_without_synthaug(shard_dir: Path):
    code = f"""
import io, json, sys
import pandas as pd, pyarrow.parquet as pq
from PIL import Image
path = {str(shard_dir / "part-00000.parquet")!r}
t = pq.read_table(path)
assert t.num_rows == 70, t.num_rows
assert json.loads(t.schema.metadata[b"synthaug"])["class_names"] == {CLASSES!r}
df = pd.read_parquet(path)
img = Image.open(io.BytesIO(df["image"][1]["bytes"]))
assert img.size == (16, 12) and img.mode == "RGB", (img.size, img.mode)
assert "augment" not in sys.modules and "synthaug" not in sys.modules
print("ok", len(df))
"""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, cwd="/",
                         env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok 70"


def test_pandas_reads_seeds_and_labels_exactly(tmp_path: Path):
    # real rows have no seed; synthetic seeds are 63-bit, beyond float64's 2**53 integers
    samples = make_samples(8)
    seeds = [None, 2**63 - 1, None, 2**53 + 1, 0, 2**62 + 3, None, 2**53 - 1]
    for sample, seed in zip(samples, seeds, strict=True):
        sample.seed = seed
        if seed is None:
            sample.source, sample.generator, sample.parent_id = "real", None, None
    labels = [s.label for s in samples]
    assert None in labels
    table = samples_to_table(samples, CLASSES)
    # a table that lost the `pandas` key (e.g. copied from elsewhere) gets it back on write
    bare = table.replace_schema_metadata({k: v for k, v in table.schema.metadata.items() if k != b"pandas"})
    paths = [tmp_path / "a.parquet", tmp_path / "b.parquet"]
    assert write_shard(table, paths[0]).sha256 == write_shard(bare, paths[1]).sha256
    for df in (pd.read_parquet(paths[0]), pq.read_table(paths[1]).to_pandas()):
        for column, want in (("seed", seeds), ("label", labels)):
            assert str(df[column].dtype) == "Int64", (column, df[column].dtype)
            got = [None if pd.isna(v) else int(v) for v in df[column]]
            assert got == want, column
        assert str(df["height"].dtype) == "int32" and df["id"].tolist() == [s.id for s in samples]


def test_hugging_face_datasets_decodes_images_and_class_names(shard_dir: Path, tmp_path_factory, monkeypatch):
    home = tmp_path_factory.mktemp("hf")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(home))
    datasets = pytest.importorskip("datasets")
    ds = datasets.load_dataset("parquet", data_files=str(shard_dir / "part-00000.parquet"),
                               split="train", cache_dir=str(home / "cache"))
    assert len(ds) == 70
    assert ds.features["label"].names == CLASSES
    row = ds[1]
    assert row["image"].size == (16, 12) and row["image"].mode == "RGB"
    assert ds.features["label"].int2str(row["label"]) == row["label_name"]
    mask = ds[0]["mask"]
    assert np.array_equal(np.asarray(mask).astype(np.uint16), make_samples(1)[0].mask)
    assert ds[1]["mask"] is None
    assert ds[2]["boxes"] == [{"x": 1.5, "y": 2.0, "w": 3.25, "h": 4.0, "label": 2}] * 2


def test_manifest_totals_and_errors(shard_dir: Path, tmp_path: Path):
    m = read_manifest(shard_dir)
    assert m.total_rows == 100 and [e.file for e in m.shards] == ["part-00000.parquet", "part-00001.parquet"]
    assert m.class_names == CLASSES and m.extra == {"job": "test"}
    assert sum(m.source_counts.values()) == 100
    assert m.class_counts == {k: sum(e.class_counts.get(k, 0) for e in m.shards) for k in CLASSES}
    assert verify_shards(shard_dir) == []
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=MANIFEST_NAME):
        read_manifest(empty)
    (empty / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(ValueError, match=MANIFEST_NAME):
        read_manifest(empty)
    (empty / MANIFEST_NAME).write_text(json.dumps(
        {"schema_version": 1, "class_names": [], "total_rows": 0, "shards": [{"file": "../x.parquet", "rows": 1,
                                                                         "sha256": "0"}]}))
    with pytest.raises(ValueError, match="plain file name"):
        read_manifest(empty)


def test_verify_catches_flipped_byte_truncation_missing_and_strays(shard_dir: Path):
    first, second = shard_dir / "part-00000.parquet", shard_dir / "part-00001.parquet"
    data = bytearray(first.read_bytes())
    data[len(data) // 2] ^= 0xFF
    first.write_bytes(bytes(data))
    second.write_bytes(second.read_bytes()[:-100])
    (shard_dir / "stray.parquet").write_bytes(b"x")
    problems = verify_shards(shard_dir)
    assert any(p.startswith("part-00000.parquet: sha256") for p in problems)
    assert any(p.startswith("part-00001.parquet: sha256") for p in problems)
    assert any(p.startswith("part-00001.parquet: unreadable") for p in problems)
    assert "stray.parquet: not in manifest (ignored by readers)" in problems
    second.unlink()
    assert "part-00001.parquet: missing" in verify_shards(shard_dir)


def test_verify_reports_row_count_mismatch(shard_dir: Path):
    m = read_manifest(shard_dir)
    entries = [ShardEntry(e.file, e.rows + 1, e.sha256, e.class_counts, e.source_counts) for e in m.shards]
    write_manifest(shard_dir, entries, CLASSES)
    assert verify_shards(shard_dir) == ["part-00000.parquet: 70 rows, the manifest says 71",
                                        "part-00001.parquet: 30 rows, the manifest says 31"]


def _expected(i: int) -> Sample:
    """The sample the `shard_dir` fixture wrote at global row `i`."""
    return make_samples(30, offset=70)[i - 70] if i >= 70 else make_samples(70)[i]


def test_map_style_dataset(shard_dir: Path):
    ds = ShardDataset(shard_dir)
    assert len(ds) == 100
    for i in (0, 1, 4, 63, 64, 69, 70, 99, -1):
        item, want = ds[i], _expected(i % 100)
        assert item["id"] == want.id
        assert item["image"].dtype == torch.uint8
        assert torch.equal(item["image"], torch.from_numpy(want.image).permute(2, 0, 1))
        assert item["label"] == (-1 if want.label is None else want.label)
        if want.mask is None:
            assert item["mask"].shape == (0, 0)
        else:
            assert item["mask"].dtype == torch.int64 and torch.equal(item["mask"], torch.from_numpy(want.mask.astype(np.int64)))
        assert item["boxes"].shape == (len(want.boxes), 4) and item["box_labels"].tolist() == [b.label for b in want.boxes]
        assert item["seed"] == (-1 if want.seed is None else want.seed)
    with pytest.raises(IndexError):
        ds[100]
    loader = torch.utils.data.DataLoader(ShardDataset(shard_dir, transform=lambda it: {**it, "extra": 1}),
                                         batch_size=16, collate_fn=collate_items, num_workers=0)
    ids = [i for batch in loader for i in batch["id"]]
    assert ids == [f"s{i:04d}" for i in range(100)]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_iterable_dataset_with_workers(shard_dir: Path, num_workers: int):
    ds = ShardIterableDataset(shard_dir, shuffle_files=True, seed=3)
    loader = torch.utils.data.DataLoader(ds, batch_size=8, collate_fn=collate_items, num_workers=num_workers)
    ids = [i for batch in loader for i in batch["id"]]
    assert sorted(ids) == [f"s{i:04d}" for i in range(100)]
    assert len(ds) == 100


def test_map_style_dataset_with_workers(shard_dir: Path):
    ds = ShardDataset(shard_dir)
    assert ds[5]["id"] == "s0005"  # parent opens a file before the workers fork
    loader = torch.utils.data.DataLoader(ds, batch_size=10, collate_fn=collate_items, num_workers=2,
                                         sampler=torch.utils.data.RandomSampler(ds, generator=torch.Generator().manual_seed(0)))
    ids = sorted(i for batch in loader for i in batch["id"])
    assert ids == [f"s{i:04d}" for i in range(100)]


def test_annotation_planes_must_be_uint16():
    sample = make_samples(1)[0]
    sample.mask = sample.mask.astype(np.uint8)
    with pytest.raises(ValueError, match="mask must be uint16"):
        samples_to_table([sample], CLASSES)
