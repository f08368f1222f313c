"""The report's gallery of worst rows: per synthetic source and class, the rows a person should
look at first, by three criteria, among the rows the report analysed:

- realism: the lowest stored realism score (Kynkäänniemi et al. 2019; < 1: outside every
  real k-NN ball), i.e. the least real-looking rows;
- confidence: the lowest stored probability the domain classifier gives the row's own
  class, i.e. rows that may not show their label;
- nearest: the smallest distance to a real training image (the report's first feature
  space), each shown beside that training image, so a near copy is seen as one.

Each tile is captioned with the row's shard id and its score. The page stays bounded: at
most `GALLERY_ROWS` rows per class and criterion, and `GALLERY_CLASSES` classes per source
(those with the lowest median realism when there are more, said on the page).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from augment.report.inputs import RealImages, SyntheticRows, class_name
from augment.report.tiles import Tile, tile_grid

Criterion = Literal["realism", "confidence", "nearest"]
CRITERIA: tuple[Criterion, ...] = ("realism", "confidence", "nearest")
GALLERY_ROWS = 4  # rows per class and criterion
GALLERY_CLASSES = 10  # classes per source
GALLERY_CAPTION_LINES = 3  # an id in two lines, its score in the third
_SAID = {"realism": "realism", "confidence": "conf.", "nearest": "d"}  # a score's name under its tile


@dataclass(frozen=True)
class Pick:
    """One row of the gallery: its position in the `SyntheticRows`, its score under the
    criterion, and (nearest) the position of its nearest image in the real training split."""

    row: int
    score: float
    train: int | None = None


def _row_id(rows: SyntheticRows, i: int) -> str:
    return f"#{i}" if rows.ids is None else str(rows.ids[i])  # rows made in memory have no shard id


def _scores(rows: SyntheticRows, criterion: Criterion) -> np.ndarray | None:
    """Per row the value whose smallest are worst (nan: not measured); None: not measured at all."""
    if criterion == "nearest":
        return None if rows.nearest is None else np.asarray(rows.nearest.distances, np.float64)
    values = np.asarray(rows.realism if criterion == "realism" else rows.confidence, np.float64)
    return None if np.isnan(values).all() else values


def worst(rows: SyntheticRows, label: int, criterion: Criterion, count: int = GALLERY_ROWS) -> list[Pick]:
    """The `count` rows of class `label` (-1: unlabelled) with the smallest score under
    `criterion`, smallest first (ties: by id); rows without the score are left out."""
    values = _scores(rows, criterion)
    if values is None:
        return []
    mine = [int(i) for i in np.flatnonzero((rows.labels == label) & ~np.isnan(values))]
    mine.sort(key=lambda i: (values[i], _row_id(rows, i)))
    train = None if criterion != "nearest" or rows.nearest is None else rows.nearest.indices
    return [Pick(i, float(values[i]), None if train is None else int(train[i])) for i in mine[:count]]


def gallery_classes(rows: SyntheticRows, limit: int = GALLERY_CLASSES) -> list[int]:
    """The labels (-1 last) shown for a source: all, or the `limit` with the lowest median realism."""
    labels = sorted({int(c) for c in rows.labels}, key=lambda c: (c < 0, c))
    if len(labels) <= limit:
        return labels
    realism = np.asarray(rows.realism, np.float64)

    def median(label: int) -> float:
        known = realism[(rows.labels == label) & ~np.isnan(realism)]
        return float(np.median(known)) if len(known) else np.inf

    chosen = set(sorted(labels, key=lambda c: (median(c), c))[:limit])
    return [c for c in labels if c in chosen]


def _train_id(real: RealImages, index: int) -> str:
    return f"train #{index}" if real.ids is None else str(real.ids[index])


def _caption(rows: SyntheticRows, pick: Pick, criterion: Criterion) -> tuple[str, str]:
    said = f"{_SAID[criterion]} {pick.score:.2f}"
    threshold = None if rows.nearest is None else rows.nearest.near_copy_threshold
    if criterion == "nearest" and threshold is not None and pick.score <= threshold:
        said += " copy"
    return _row_id(rows, pick.row), said


def _groups(rows: SyntheticRows, real: RealImages, picks: list[Pick], criterion: Criterion) -> list[list[Tile]]:
    """One class's tiles: one group of rows, or (nearest) a group per row with its training image."""
    tiles = [Tile(rows.images[p.row], _caption(rows, p, criterion)) for p in picks]
    if criterion != "nearest":
        return [tiles]
    return [[tile, Tile(real.images[p.train], (_train_id(real, p.train), "training"))]
            for tile, p in zip(tiles, picks) if p.train is not None]


def source_gallery(rows: SyntheticRows, real: RealImages, class_names: list[str],
                   per_class: int = GALLERY_ROWS, limit: int = GALLERY_CLASSES) -> dict[str, Any]:
    """One source's gallery: {"classes": shown class names, "class_count": classes with rows,
    "analysed": rows looked at, "criteria": {criterion: {"png", "rows": per shown class
    [{"id", "score", "train_id"}]}}}; a criterion no row has a score for is left out."""
    labels = gallery_classes(rows, limit)
    names = [class_name(c, class_names) for c in labels]
    criteria: dict[str, Any] = {}
    for criterion in CRITERIA:
        picks = [worst(rows, c, criterion, per_class) for c in labels]
        if not any(picks):
            continue
        slots = [2] * per_class if criterion == "nearest" else [per_class]
        grid = []
        for ps in picks:
            groups = _groups(rows, real, ps, criterion)
            grid.append(groups + [[] for _ in range(len(slots) - len(groups))])
        listed = [[{"id": _row_id(rows, p.row), "score": p.score,
                    "train_id": None if p.train is None else _train_id(real, p.train)} for p in ps] for ps in picks]
        criteria[criterion] = {"png": tile_grid(grid, slots, row_labels=names,
                                                     caption_lines=GALLERY_CAPTION_LINES), "rows": listed}
    return {"classes": names, "class_count": len({int(c) for c in rows.labels}), "analysed": len(rows.labels),
            "criteria": criteria}


def gallery_pictures(real: RealImages, synthetic: dict[str, SyntheticRows], class_names: list[str],
                     per_class: int = GALLERY_ROWS, limit: int = GALLERY_CLASSES) -> dict[str, dict[str, Any]]:
    """{source: `source_gallery`} for every source with analysed rows."""
    return {tag: source_gallery(rows, real, class_names, per_class, limit)
            for tag, rows in synthetic.items() if len(rows.labels)}


def gallery_summary(gallery: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """report.json's `gallery` block: the picked rows without their pictures, {source:
    {"classes", "class_count", "analysed", "rows": {criterion: {class name: [{"id", "score",
    "train_id"}]}}}}, so a script finds the rows a person would look at first."""
    return {tag: {"classes": block["classes"], "class_count": block["class_count"], "analysed": block["analysed"],
                  "rows": {criterion: dict(zip(block["classes"], shown["rows"]))
                           for criterion, shown in block["criteria"].items()}}
            for tag, block in gallery.items()}
