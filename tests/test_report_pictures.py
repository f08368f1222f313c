"""The report's pictures: separated tiles captioned with row ids, and the gallery of worst rows
(lowest realism, lowest confidence, nearest to a training image beside that image)."""

from __future__ import annotations

import io
import json
import re

import numpy as np
from PIL import Image

from augment.report.assemble import ReportSettings, measure_features
from augment.report.files import write_report
from augment.report.gallery import gallery_classes, gallery_pictures, worst
from augment.report.inputs import NearestTrain, RealImages, RealSide, SyntheticRows
from augment.report.plots import sample_grid
from augment.report.tiles import BACKGROUND, CELL, FRAME, TILE_GAP, Tile, tile_grid

NAMES = ["a", "b"]
SIZE = 8


def _pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def _rows(labels: list[int], realism: list[float], confidence: list[float], seed: int = 0,
          nearest: NearestTrain | None = None) -> SyntheticRows:
    images = np.random.default_rng(seed).integers(0, 256, size=(len(labels), SIZE, SIZE, 1), dtype=np.uint8)
    return SyntheticRows("cgan", len(labels), images, np.array(labels), None, np.array(realism, np.float64),
                         np.array(confidence, np.float64), ids=np.array([f"cgan/r{i:03d}" for i in range(len(labels))],
                                                                        dtype=object), nearest=nearest)


def _real(count: int, seed: int = 1) -> RealImages:
    images = np.random.default_rng(seed).integers(0, 256, size=(count, SIZE, SIZE, 1), dtype=np.uint8)
    return RealImages(images, np.arange(count) % 2, None, np.array([f"src/{i:04d}" for i in range(count)], object))


def test_tiles_are_set_apart_by_a_gap_and_framed() -> None:
    black = np.zeros((SIZE, SIZE, 1), np.uint8)  # dark pictures: a gap of their colour would hide the seam
    png = tile_grid([[[Tile(black, ("x/1",)), Tile(black, ("x/2",))]]], [2])
    pixels = _pixels(png)
    picture = pixels[1:CELL - 1]  # the picture rows, below the frame's top edge
    gap = picture[:, CELL:CELL + TILE_GAP]
    assert (gap == BACKGROUND).all()
    assert (picture[:, CELL - 1] == FRAME).all() and (picture[:, CELL + TILE_GAP] == FRAME).all()
    assert (picture[:, 1:CELL - 1] == 0).all() and (picture[:, CELL + TILE_GAP + 1:2 * CELL + TILE_GAP - 1] == 0).all()
    assert (pixels[CELL:, :] != BACKGROUND).any()  # the captions are drawn under the pictures


def test_sample_grid_shows_the_ids_of_its_rows() -> None:
    real = _real(6)
    rows = _rows([0, 1, 1, 0, 1], [1.0] * 5, [0.9] * 5)
    grid = sample_grid((real.images, real.labels, real.ids), (rows.images, rows.labels, rows.ids), NAMES, 2)
    assert grid.ids == [[["src/0000", "src/0002"], ["cgan/r000", "cgan/r003"]],
                        [["src/0001", "src/0003"], ["cgan/r001", "cgan/r002"]]]
    pixels = _pixels(grid.png)
    assert pixels.shape[0] == 2 * (CELL + 2 * 12) + 6  # two rows of tiles with their two caption lines


def test_worst_rows_are_the_lowest_scored_of_their_class() -> None:
    realism = [0.9, 0.2, np.nan, 0.5, 0.1, 3.0, 0.3, 0.05]
    confidence = [0.5, 0.9, 0.1, 0.2, np.nan, 0.8, 0.95, 0.3]
    rows = _rows([0, 0, 0, 0, 0, 0, 0, 1], realism, confidence)
    assert [p.row for p in worst(rows, 0, "realism", 3)] == [4, 1, 6]  # nan left out; row 7 is class b
    assert [p.score for p in worst(rows, 0, "realism", 3)] == [0.1, 0.2, 0.3]
    assert [p.row for p in worst(rows, 0, "confidence", 2)] == [2, 3]
    assert [p.row for p in worst(rows, 1, "realism")] == [7]
    unscored = _rows([0, 1], [np.nan, np.nan], [np.nan, np.nan])
    assert worst(unscored, 0, "realism") == [] and worst(unscored, 0, "nearest") == []


def test_a_copy_of_a_training_image_is_paired_with_it() -> None:
    real = _real(30)
    rows = _rows([0, 1, 0, 1], [1.0] * 4, [0.9] * 4, seed=7)
    rows.images[2] = real.images[17]  # an exact copy of training image 17 (class b there; labels need not agree)
    side = RealSide(real, RealImages(real.images[:6], real.labels[:6], None), SIZE, 1, "source", "real")
    settings = ReportSettings(kinds=("pixels",), requested=("pixels",), k=3, kid_subsets=2, kid_subset_size=4, seed=0,
                              utility=False)
    measured = measure_features(side, {"cgan": rows}, NAMES, settings,
                                lambda images, kind: images.reshape(len(images), -1).astype(np.float32), 1.0)
    nearest = measured.nearest["cgan"]
    assert nearest.indices[2] == 17 and nearest.distances[2] == 0.0
    rows.nearest = nearest
    (pick, *_) = worst(rows, 0, "nearest")
    assert (pick.row, pick.score, pick.train) == (2, 0.0, 17)
    shown = gallery_pictures(real, {"cgan": rows}, NAMES)["cgan"]["criteria"]["nearest"]
    assert shown["rows"][0][0] == {"id": "cgan/r002", "score": 0.0, "train_id": "src/0017"}
    # each pair is the row and then its training image, side by side
    pixels = _pixels(shown["png"])[1:CELL - 1]
    x = int(np.flatnonzero((pixels[CELL // 2] == FRAME).all(axis=1))[0])  # the first frame, past the class label
    row_tile, train_tile = pixels[:, x + 1:x + CELL - 1], pixels[:, x + CELL + TILE_GAP + 1:x + 2 * CELL + TILE_GAP - 1]
    assert np.array_equal(row_tile, train_tile) and row_tile.std() > 0


def test_the_gallery_is_capped_and_says_so(tmp_path) -> None:
    names = [f"c{i}" for i in range(12)]
    labels = [c for c in range(12) for _ in range(3)]
    realism = [float(c) + 0.1 * j for c in range(12) for j in range(3)]
    realism[3 * 11] = -5.0  # class 11 holds one awful row, but its median is still high
    rows = _rows(labels, realism, [0.5] * len(labels))
    assert gallery_classes(rows, limit=4) == [0, 1, 2, 3]
    real = _real(20)
    side = RealSide(real, RealImages(real.images[:0], real.labels[:0], None), SIZE, 1, "source", "real")
    report = {"schema": 2, "job": {"name": "t", "config_hash": "0" * 64}, "classes": names,
              "real": {"origin": "source", "train": 20, "holdout": 0}, "preprocessing": {"size": SIZE, "channels": 1,
                                                                                          "resize": "bicubic"},
              "sources": {"cgan": {"rows": 36, "analysed": 36, "class_counts": {}}}, "extractors": {}, "metrics": {},
              "verdicts": {}, "filter": {}, "notes": []}
    page = write_report(report, tmp_path, side, {"cgan": rows}, per_class=2).with_name("report.html").read_text()
    assert "Showing 10 of 12 classes" in page and "Rows to look at first" in page
    assert "Not shown, no row has the score: nearest" in page  # no features measured: no nearest pairs
    worst_ids = re.findall(r"<code>(cgan/r\d+)</code> -?\d", page)
    assert worst_ids[0] == "cgan/r000" and "cgan/r033" not in worst_ids  # class 11 is past the cap
    cells = re.findall(r'<td class="l ids">(.*?)</td>', page)
    grid_ids = {i for cell in cells for i in re.findall(r"<code>(.*?)</code>", cell)}
    assert {"src/0000", "src/0002", "cgan/r000", "cgan/r001"} <= grid_ids  # the sample grid's ids, as text


def test_unlabelled_colour_rows_get_one_gallery_row(tmp_path) -> None:
    rng = np.random.default_rng(3)
    real = RealImages(rng.integers(0, 256, size=(10, SIZE, SIZE, 3), dtype=np.uint8), np.full(10, -1), None, None)
    rows = SyntheticRows("spade", 5, rng.integers(0, 256, size=(5, SIZE, SIZE, 3), dtype=np.uint8), np.full(5, -1),
                         None, np.array([0.3, 0.1, 2.0, 0.2, 1.0]), np.full(5, np.nan),
                         nearest=NearestTrain(np.array([4.0, 3.0, 0.0, 2.0, 1.0]), np.array([0, 1, 2, 3, 4]), 0.5))
    gallery = gallery_pictures(real, {"spade": rows}, NAMES)["spade"]
    assert gallery["classes"] == ["unlabelled"] and set(gallery["criteria"]) == {"realism", "nearest"}
    assert [r["id"] for r in gallery["criteria"]["realism"]["rows"][0]] == ["#1", "#3", "#0", "#4"]
    assert gallery["criteria"]["nearest"]["rows"][0][0] == {"id": "#2", "score": 0.0, "train_id": "train #2"}
    side = RealSide(real, RealImages(real.images[:0], real.labels[:0], None), SIZE, 3, "source", None)
    report = {"schema": 2, "job": {"name": "t", "config_hash": "0" * 64}, "classes": NAMES,
              "real": {"origin": "source", "train": 10, "holdout": 0},
              "preprocessing": {"size": SIZE, "channels": 3, "resize": "bicubic"},
              "sources": {"spade": {"rows": 5, "analysed": 5, "class_counts": {}}}, "extractors": {}, "metrics": {},
              "verdicts": {}, "filter": {}, "notes": []}
    page = write_report(report, tmp_path, side, {"spade": rows}, per_class=2).with_name("report.html").read_text()
    assert "Not shown, no row has the score: confidence" in page and "<h3>spade</h3>" in page
    assert page.count("data:image/png;base64,") == 3  # the sample grid, realism, nearest
    stored = json.loads((tmp_path / "report.json").read_text())["gallery"]["spade"]  # the same rows, for scripts
    assert [r["id"] for r in stored["rows"]["realism"]["unlabelled"]] == ["#1", "#3", "#0", "#4"]
    assert stored["rows"]["nearest"]["unlabelled"][0] == {"id": "#2", "score": 0.0, "train_id": "train #2"}
    assert set(stored["rows"]) == {"realism", "nearest"} and stored["analysed"] == 5
