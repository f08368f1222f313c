"""Hostile input (issue 9): file names that are not UTF-8, FIFOs and huge sparse files named
like images, non-ASCII class names, tampered Parquet shards, and the rejection summary.

Every case is a clear error naming the file (exit 2) or a recorded skip with a readable
reason; nothing hangs (FIFOs are opened by nobody) and nothing huge is read.
"""

from __future__ import annotations

import io
import json
import os
import resource
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from augment.errors import ConfigError, InputRejected, readable, reason_kind
from augment.images import load_image_file, max_file_bytes, read_regular_file
from augment.sample import Sample
from augment.shards import samples_to_table, write_manifest, write_shard
from augment.sources import CocoSource, ImageFolderSource, ParquetSource, check_class_name
from augment.sources.base import is_safe_class_name, listed_name
from jobs.runner import summarize_rejections
from simulators.external import ExternalFramesSource
from tests.conftest import cli_command, cli_env

BAD_NAME = os.fsdecode(b"g\xff\xfe.png")  # what os.listdir gives for these bytes (PEP 383)
BAD_NAME_SHOWN = "g\\xff\\xfe.png"  # the 13 characters a record id / rejected.jsonl shows
BIG = 1500 * 2**20  # `truncate -s 1500M`: sparse, costs no disk


@contextmanager
def deadline(seconds: int) -> Iterator[None]:
    """Fail instead of hanging (a FIFO opened for reading blocks until a writer comes)."""

    def expired(signum: int, frame: Any) -> None:
        raise TimeoutError(f"still running after {seconds} s (blocked on a FIFO?)")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _png(path: Path, seed: int = 0, size: int = 8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    path.write_bytes(buffer.getvalue())
    return path


def _assert_text_is_safe(*texts: str) -> None:
    """Encodable as UTF-8, hence as JSON and Arrow strings (no lone surrogates)."""
    for text in texts:
        text.encode("utf-8")
    pa.array(list(texts), pa.string())
    json.dumps(list(texts), ensure_ascii=False).encode("utf-8")


# ---------------------------------------------------------------- item 2: names not UTF-8


def test_readable_escapes_the_bytes_of_a_name_that_is_not_utf8() -> None:
    assert readable(BAD_NAME) == BAD_NAME_SHOWN
    assert readable("café/猫.png") == "café/猫.png"
    assert listed_name("cat/" + BAD_NAME) == ("cat/" + BAD_NAME_SHOWN, "file name is not valid UTF-8")
    assert listed_name("cat/ok.png") == ("cat/ok.png", None)
    rejected = InputRejected("cat/" + BAD_NAME, "x")
    assert rejected.path == "cat/" + BAD_NAME_SHOWN
    assert str(ConfigError(f"{BAD_NAME}: bad")) == f"{BAD_NAME_SHOWN}: bad"


def test_folder_lists_a_name_that_is_not_utf8_as_a_readable_rejected_record(tmp_path: Path) -> None:
    _png(tmp_path / "cat" / "ok.png")
    _png(tmp_path / "cat" / BAD_NAME)
    _png(tmp_path / "cat" / os.fsdecode(b"sub\xe9") / "inner.png")  # a folder name, too
    _png(tmp_path / "dog" / "ok.png")
    source = ImageFolderSource(tmp_path)
    ids = [r.id for r in source.records()]
    assert ids == ["cat/g\\xff\\xfe.png", "cat/ok.png", "cat/sub\\xe9/inner.png", "dog/ok.png"]
    _assert_text_is_safe(*ids, *(r.ref for r in source.records()))
    for record in source.records():
        if "\\x" in record.id:
            with pytest.raises(InputRejected) as excinfo:
                source.load(record)
            assert (excinfo.value.path, excinfo.value.reason) == (record.id, "file name is not valid UTF-8")
        else:
            assert source.load(record).image.shape == (8, 8, 3)


def test_a_class_folder_whose_name_is_not_utf8_is_a_printable_config_error(tmp_path: Path) -> None:
    _png(tmp_path / "cat" / "ok.png")
    _png(tmp_path / os.fsdecode(b"d\xf6g") / "ok.png")
    with pytest.raises(ConfigError) as excinfo:
        ImageFolderSource(tmp_path)
    message = str(excinfo.value)
    message.encode("utf-8")
    assert "d\\xf6g" in message and "is not a safe name" in message


def test_external_frames_with_a_name_that_is_not_utf8_are_rejected(tmp_path: Path) -> None:
    for name in ("a.png", BAD_NAME):
        _png(tmp_path / "rgb" / name)
        label = tmp_path / "labels" / name
        label.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (0, 0, 0)).save(label, format="PNG")
    source = ExternalFramesSource(tmp_path, class_names=["road"], palette={"#000000": "road"})
    records = {r.id: r for r in source.records()}
    assert set(records) == {"external/a", "external/g\\xff\\xfe"}
    _assert_text_is_safe(*records, *(r.ref for r in records.values()))
    assert source.load(records["external/a"]).mask.shape == (8, 8)
    with pytest.raises(InputRejected, match="file name is not valid UTF-8") as excinfo:
        source.load(records["external/g\\xff\\xfe"])
    assert excinfo.value.path == "rgb/" + BAD_NAME_SHOWN


def test_coco_text_that_is_not_valid_unicode(tmp_path: Path) -> None:
    images = tmp_path / "images"
    _png(images / "a.png")
    categories = [{"id": 1, "name": "cat"}]
    # JSON's \udcff escape decodes to a lone surrogate: no valid id, no valid file name.
    path = tmp_path / "bad_id.json"
    path.write_text('{"images": [{"id": "x\\udcff", "file_name": "a.png"}], "annotations": [], '
                    f'"categories": {json.dumps(categories)}}}')
    with pytest.raises(ConfigError, match=r"images\[0\]: id .* is not valid Unicode text"):
        CocoSource(path, images)
    path = tmp_path / "bad_name.json"
    path.write_text('{"images": [{"id": 1, "file_name": "g\\udcff.png"}], "annotations": [], '
                    f'"categories": {json.dumps(categories)}}}')
    source = CocoSource(path, images)
    with pytest.raises(InputRejected, match="not valid Unicode") as excinfo:
        source.load(source.records()[0])
    assert excinfo.value.path == "g\\xff.png"


# ---------------------------------------------------------------- item 3: FIFOs, huge files


def test_a_fifo_named_like_an_image_is_refused_without_opening_it(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo.png")
    os.symlink("fifo.png", tmp_path / "link.png")
    for name in ("fifo.png", "link.png"):
        with deadline(10), pytest.raises(InputRejected) as excinfo:
            load_image_file(Path(name), root=tmp_path)
        assert (excinfo.value.path, excinfo.value.reason) == (name, "not a regular file (FIFO)")


def test_read_regular_file_refuses_a_fifo_even_if_opened(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fstat after open catches a file swapped for a FIFO after the first stat."""
    fifo = tmp_path / "swapped.png"
    os.mkfifo(fifo)
    real_stat = os.stat

    def stat_as_if_regular(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        return real_stat(__file__) if str(path) == str(fifo) else real_stat(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", stat_as_if_regular)
    with deadline(10), pytest.raises(InputRejected, match=r"not a regular file \(FIFO\)"):
        read_regular_file(fifo, name="swapped.png", max_bytes=10**6)


def test_a_huge_sparse_file_is_refused_before_it_is_read(tmp_path: Path) -> None:
    big = tmp_path / "big.png"
    with open(big, "wb") as handle:
        handle.truncate(BIG)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(InputRejected) as excinfo:
        load_image_file(big, root=tmp_path)
    assert excinfo.value.reason == (
        "file too large: 1.6 GB, more than the 336.8 MB a 40,000,000-pixel image can need"
    )
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # kB: nothing read
    # The bound follows max_pixels: 8 bytes a pixel (16-bit RGBA, uncompressed) + 16 MiB.
    assert max_file_bytes(1000) == 8000 + 16 * 2**20
    small = tmp_path / "small.png"
    with open(small, "wb") as handle:
        handle.truncate(max_file_bytes(1000) + 1)
    with pytest.raises(InputRejected, match="more than the 16.8 MB a 1,000-pixel image can need"):
        load_image_file(small, root=tmp_path, max_pixels=1000)


def test_symlinks_to_regular_files_inside_root_still_load(tmp_path: Path) -> None:
    _png(tmp_path / "cat" / "real.png")
    os.symlink("real.png", tmp_path / "cat" / "alias.png")
    assert load_image_file(Path("cat/alias.png"), root=tmp_path).shape == (8, 8, 3)
    (tmp_path / "cat" / "dir.png").mkdir()
    with pytest.raises(InputRejected, match="is a directory"):
        load_image_file(Path("cat/dir.png"), root=tmp_path)


def test_external_label_that_is_a_fifo_is_a_recorded_skip(tmp_path: Path) -> None:
    _png(tmp_path / "rgb" / "a.png")
    (tmp_path / "labels").mkdir()
    os.mkfifo(tmp_path / "labels" / "a.png")
    source = ExternalFramesSource(tmp_path, class_names=["road"], palette={"#000000": "road"})
    with deadline(10), pytest.raises(InputRejected) as excinfo:
        source.load(source.records()[0])
    assert excinfo.value.reason == "label labels/a.png: not a regular file (FIFO)"


def test_coco_annotations_that_are_a_fifo_or_too_big_are_config_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "images").mkdir()
    os.mkfifo(tmp_path / "fifo.json")
    fifo_error = r"fifo.json: cannot read COCO annotations: not a regular file \(FIFO\)"
    with deadline(10), pytest.raises(ConfigError, match=fifo_error):
        CocoSource(tmp_path / "fifo.json", tmp_path / "images")
    big = tmp_path / "big.json"
    big.write_text(json.dumps({"images": [], "annotations": [], "categories": [], "pad": "x" * 5000}))
    monkeypatch.setattr("augment.sources.coco.MAX_ANNOTATIONS_BYTES", 4096)
    with pytest.raises(ConfigError, match=r"big.json: cannot read COCO annotations: file too large: 5.1 kB"):
        CocoSource(big, tmp_path / "images")


# ---------------------------------------------------------------- item 10a: class names


@pytest.mark.parametrize("name", ["café", "cafe\u0301", "猫", "Straße 2", "ß", "क्षेत्र", "a.b+c-d_e", "x" * 64])
def test_unicode_letters_and_digits_make_safe_class_names(name: str) -> None:
    assert check_class_name(name, "here") == name


@pytest.mark.parametrize(
    "name",
    ["", " cat", "cat ", ".", "..", "_cat", "-cat", "a/b", "a\\b", "a\nb", "a\tb", "a\u200bb", "x" * 65,
     "cat\udcff", "\u0301cat", "a|b", "a:b"],
)
def test_unsafe_class_names_are_still_refused(name: str) -> None:
    assert not is_safe_class_name(name)
    with pytest.raises(ConfigError, match="is not a safe name") as excinfo:
        check_class_name(name, "here")
    str(excinfo.value).encode("utf-8")


# ---------------------------------------------------------------- item 10b: manifests


def _write_shards(folder: Path, class_names: list[str], n_files: int = 2) -> list[Any]:
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for f in range(n_files):
        samples = [
            Sample(id=f"s{f}-{i}", image=np.full((4, 4, 3), 10 * i + f, np.uint8), label=i % len(class_names),
                   source="real")
            for i in range(3)
        ]
        entries.append(write_shard(samples_to_table(samples, class_names), folder / f"part-{f}.parquet"))
    write_manifest(folder, entries, class_names)
    return entries


def test_parquet_with_manifest_reads_exactly_the_listed_verified_files(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "shards"
    _write_shards(folder, ["cat", "dog"])
    source = ParquetSource(folder)
    assert len(source.records()) == 6
    # A file the manifest does not list is not part of the dataset: ignored, with a warning.
    extra = [Sample(id="extra", image=np.zeros((4, 4, 3), np.uint8), label=0, source="real")]
    write_shard(samples_to_table(extra, ["cat", "dog"]), folder / "stray.parquet")
    with caplog.at_level("WARNING", logger="synthaug"):
        source = ParquetSource(folder)
    assert "extra" not in {r.id for r in source.records()} and len(source.records()) == 6
    assert "stray.parquet" in caplog.text and "not in _manifest.json" in caplog.text
    with pytest.raises(ConfigError, match=r"stray.parquet: not listed in .*_manifest.json"):
        ParquetSource(folder / "stray.parquet")
    assert len(ParquetSource(folder / "part-0.parquet").records()) == 3


def test_a_tampered_shard_is_a_config_error_naming_both_hashes(tmp_path: Path) -> None:
    folder = tmp_path / "shards"
    entries = _write_shards(folder, ["cat", "dog"])
    # Same ids, rows and schema; other pixels: a row-by-row reader could not tell.
    other = [Sample(id=f"s0-{i}", image=np.full((4, 4, 3), 255, np.uint8), label=i % 2, source="real")
             for i in range(3)]
    tampered = write_shard(samples_to_table(other, ["cat", "dog"]), folder / "part-0.parquet")
    assert tampered.sha256 != entries[0].sha256
    message = f"sha256 {tampered.sha256} does not match {entries[0].sha256} listed in _manifest.json"
    for path in (folder, folder / "part-0.parquet"):
        with pytest.raises(ConfigError, match=message) as excinfo:
            ParquetSource(path)
        assert str(folder / "part-0.parquet") in str(excinfo.value)


def test_manifest_rows_missing_files_and_bad_manifests(tmp_path: Path) -> None:
    folder = tmp_path / "shards"
    _write_shards(folder, ["cat"])
    manifest = json.loads((folder / "_manifest.json").read_text())
    manifest["shards"][1]["rows"] = 7
    (folder / "_manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match="part-1.parquet: 3 rows, but _manifest.json lists 7"):
        ParquetSource(folder)
    (folder / "part-1.parquet").unlink()
    with pytest.raises(ConfigError, match="part-1.parquet: listed in _manifest.json but missing"):
        ParquetSource(folder)
    (folder / "_manifest.json").write_text("{not json")
    with pytest.raises(ConfigError, match="_manifest.json: the shard manifest is not valid JSON"):
        ParquetSource(folder)
    (folder / "_manifest.json").write_text(json.dumps({"shards": [{"file": "../x.parquet", "rows": 1,
                                                                   "sha256": "0" * 64}]}))
    with pytest.raises(ConfigError, match=r"shards\[0\] needs 'file' \(a plain file name\)"):
        ParquetSource(folder)
    (folder / "_manifest.json").unlink()
    os.mkfifo(folder / "_manifest.json")
    fifo_error = r"cannot read the shard manifest: not a regular file \(FIFO\)"
    with deadline(10), pytest.raises(ConfigError, match=fifo_error):
        ParquetSource(folder)


def test_parquet_files_that_are_not_parquet_fifos_or_not_utf8(tmp_path: Path) -> None:
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.parquet").write_bytes(b"PAR1 but not really" * 10)
    with pytest.raises(ConfigError, match="a.parquet: not a readable Parquet file"):
        ParquetSource(tmp_path / "junk")
    (tmp_path / "fifo").mkdir()
    os.mkfifo(tmp_path / "fifo" / "a.parquet")
    with deadline(10), pytest.raises(ConfigError, match=r"a.parquet: not a regular file \(FIFO\)"):
        ParquetSource(tmp_path / "fifo")
    # A string column of invalid UTF-8 bytes (Parquet does not validate them).
    sample = Sample(id="ok", image=np.zeros((2, 2, 3), np.uint8), label=0, source="real")
    table = samples_to_table([sample], ["cat"])
    raw = pa.Array.from_buffers(pa.string(), 1, [None, pa.py_buffer(np.array([0, 2], np.int32).tobytes()),
                                                 pa.py_buffer(b"\xff\xfe")])
    table = table.set_column(table.schema.get_field_index("id"), table.schema.field("id"), raw)
    (tmp_path / "utf8").mkdir()
    pq.write_table(table, tmp_path / "utf8" / "a.parquet")
    with pytest.raises(ConfigError, match="column 'id' holds text that is not valid UTF-8"):
        ParquetSource(tmp_path / "utf8")


def test_cli_refuses_a_tampered_parquet_source_with_exit_2(tmp_path: Path) -> None:
    folder = tmp_path / "shards"
    _write_shards(folder, ["cat", "dog"])
    with open(folder / "part-1.parquet", "r+b") as handle:  # one flipped byte in the middle
        handle.seek(40)
        byte = handle.read(1)
        handle.seek(40)
        handle.write(bytes([byte[0] ^ 0xFF]))
    config = tmp_path / "job.yaml"
    config.write_text(json.dumps({"name": "tampered", "source": {"kind": "parquet", "path": str(folder)},
                                  "report": {"enabled": False}}))
    done = subprocess.run(cli_command("run", str(config), "--out", str(tmp_path / "out")), env=cli_env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "part-1.parquet: sha256 " in done.stderr and "listed in _manifest.json" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "out" / "shards").exists()


# ---------------------------------------------------------------- item 10c: the summary


def test_summary_groups_reasons_by_kind_not_by_record() -> None:
    rows = [
        {"id": "1", "path": "a", "reason": "annotation 1: malformed polygon (need >= 3 x,y points)"},
        {"id": "2", "path": "b", "reason": "annotation 4: malformed polygon (need >= 3 x,y points)"},
        {"id": "3", "path": "c", "reason": "unknown category id 7"},
        {"id": "4", "path": "d", "reason": "unknown category id 99"},
        {"id": "5", "path": "e", "reason": "bbox [100, 100, 10, 10] lies more than 1 px outside the 32x32 image"},
        {"id": "6", "path": "f", "reason": "decompression bomb: 200x200 = 40000 pixels exceeds max_pixels=10000"},
        {"id": "7", "path": "g", "reason": "label labels/a.png: not a regular file (FIFO)"},
        {"id": "8", "path": "h", "reason": "not a regular file (FIFO)"},
    ]
    assert summarize_rejections(rows) == (
        "rejected 8 records (2 malformed polygon, 2 unknown category id N, 2 not a regular file, "
        "1 bbox […] lies more than N px outside the NxN image); see rejected.jsonl"
    )
    assert reason_kind("file name is not valid UTF-8") == "file name is not valid UTF-8"
    assert reason_kind("file too large: 1.6 GB, more than the 336.8 MB a 40,000,000-pixel image can need") == (
        "file too large"
    )
    assert summarize_rejections([]) == "rejected: none"


# ---------------------------------------------------------------- end to end


def test_job_over_hostile_files_finishes_and_records_each_skip(tmp_path: Path) -> None:
    """Names not UTF-8, a FIFO and a 1.5 GB sparse file among good images, a class named
    'café': the job exits 0 (no hang: run under a timeout), writes the good rows, and
    records the three skips with readable reasons."""
    root = tmp_path / "images"
    for c, name in enumerate(("café", "dog")):
        for i in range(4):
            _png(root / name / f"{i}.png", seed=10 * c + i)
    _png(root / "café" / BAD_NAME, seed=99)
    os.mkfifo(root / "dog" / "fifo.png")
    with open(root / "dog" / "big.png", "wb") as handle:
        handle.truncate(BIG)
    config = tmp_path / "job.yaml"
    config.write_text(json.dumps({
        "name": "hostile", "seed": 1,
        "source": {"kind": "folder", "root": str(root)},
        "split": {"holdout": 0.0},
        "output": {"rows_per_shard": 16},
        "execution": {"num_workers": 1, "num_cpus": 2},
        "report": {"enabled": False},
    }, ensure_ascii=False), encoding="utf-8")
    out = tmp_path / "out"
    done = subprocess.run(cli_command("run", str(config), "--out", str(out)), env=cli_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stderr

    rejected = [json.loads(line) for line in (out / "rejected.jsonl").read_text(encoding="utf-8").splitlines()]
    assert rejected == [
        {"id": "café/g\\xff\\xfe.png", "path": "café/g\\xff\\xfe.png", "reason": "file name is not valid UTF-8"},
        {"id": "dog/big.png", "path": "dog/big.png",
         "reason": "file too large: 1.6 GB, more than the 336.8 MB a 40,000,000-pixel image can need"},
        {"id": "dog/fifo.png", "path": "dog/fifo.png", "reason": "not a regular file (FIFO)"},
    ]
    assert ("rejected 3 records (1 file name is not valid UTF-8, 1 file too large, 1 not a regular file); "
            "see rejected.jsonl") in done.stdout

    # The good rows, with the class name intact in the Parquet metadata and the HF features.
    table = pq.read_table(out / "shards")
    good = sorted(f"{c}/{i}.png" for c in ("café", "dog") for i in range(4))
    assert sorted(table.column("id").to_pylist()) == good
    assert set(table.column("label_name").to_pylist()) == {"café", "dog"}
    metadata = pq.read_schema(next((out / "shards").glob("*.parquet"))).metadata
    assert json.loads(metadata[b"synthaug"])["class_names"] == ["café", "dog"]
    features = json.loads(metadata[b"huggingface"])["info"]["features"]
    assert features["label"]["names"] == ["café", "dog"]
    datasets = pytest.importorskip("datasets")
    label = datasets.Features.from_arrow_schema(table.schema)["label"]
    assert label.names == ["café", "dog"] and label.str2int("café") == 0
    manifest = json.loads((out / "shards" / "_manifest.json").read_text(encoding="utf-8"))
    assert manifest["class_counts"] == {"café": 4, "dog": 4}
    # The published shards read back as a verified parquet source with the same names.
    assert ParquetSource(out / "shards").class_names == ["café", "dog"]
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]
