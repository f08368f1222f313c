"""The report's judged labels (`augment.metrics.judges`): label preservation (rows made from a
parent record, against the labels the job carried over) and label consistency (rows painted
from a label map, against that map).

Per source and per class: the mean score (`label_preservation` / `label_consistency`) of
every scored row the step made (published or dropped by the gate, so the gate does not
flatter the generator), the mean of the published ones, and how many rows the gate dropped
for it (`low_<score>`). With a segmentation task model also per *mask* class (street frames
have no row label): the pixel accuracy and IoU of each class and the mIoU over the
published rows, which say what content a translator changed or a painter got wrong. The
pictures: the worst published rows beside their parent frames (the parent's real row in the
same shards; it is there unless `output.include_real` is off), their mask, and what the
segmenter read in them.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from augment.images import decode_png
from augment.report.inputs import class_name
from augment.seeding import derive_seed

WORST_ROWS = 8
STRIP_HEIGHT = 96  # px of each picture in a worst-row strip (small frames are enlarged, nearest neighbour)
STRIP_GAP = 6
MASK_CLASS_STREAM = 84  # derive_seed(job seed, stream, source number): the rows per-mask-class accuracy reads


def read_scored(shards: Path, score: str = "label_preservation") -> list[dict[str, Any]]:
    """id, label, source, parent_id and `score` of every published row that has the score. Each
    file is read on its own, so a shard written before the score existed (its `scores` struct
    lacks the field) reads as unscored instead of hiding the field of the rest."""
    rows: list[dict[str, Any]] = []
    for path in sorted(Path(shards).glob("*.parquet")):
        table = pq.read_table(path, columns=["id", "label", "source", "parent_id", "scores"])
        for row in table.to_pylist():
            value = (row.pop("scores") or {}).get(score)
            if value is not None:
                rows.append({**row, score: float(value)})
    return rows


def _block(scores: list[float], published: list[float], dropped: int) -> dict[str, Any]:
    return {"rows": len(published), "mean": float(np.mean(scores)) if scores else None,
            "published_mean": float(np.mean(published)) if published else None, "dropped": dropped}


def preservation_summary(scored: list[dict[str, Any]], filtered: list[dict[str, Any]], class_names: list[str],
                         worst: int = WORST_ROWS, score: str = "label_preservation") -> dict[str, Any] | None:
    """{source: {rows, mean, published_mean, dropped, per_class: {class: same keys}, worst: [...]}}
    of `score` from the published scored rows (`read_scored`) and the filter's records (shard
    metadata); None when no row was scored or dropped for it."""
    reason = f"low_{score}"  # the quality filter's reason (augment.metrics.scoring.filter_reasons)
    dropped = [r for r in filtered if reason in r.get("reasons", [])]
    made = scored + [r for r in filtered if r.get(score) is not None]
    tags = sorted({r["source"] for r in made} | {r["source"] for r in dropped})
    if not tags:
        return None
    out: dict[str, Any] = {}
    for tag in tags:
        mine = [r for r in scored if r["source"] == tag]
        every = [r[score] for r in made if r["source"] == tag]
        gone = [r for r in dropped if r["source"] == tag]
        block = _block(every, [r[score] for r in mine], len(gone))
        names = sorted({class_name(r["label"], class_names) for r in [*mine, *gone]},
                       key=lambda n: (n not in class_names, class_names.index(n) if n in class_names else 0))
        block["per_class"] = {
            name: _block([r[score] for r in made if r["source"] == tag and class_name(r["label"], class_names) == name],
                         [r[score] for r in mine if class_name(r["label"], class_names) == name],
                         sum(class_name(r["label"], class_names) == name for r in gone))
            for name in names}
        lowest = sorted(mine, key=lambda r: (r[score], r["id"]))[:worst]
        block["worst"] = [{"id": r["id"], "parent_id": r["parent_id"], "class": class_name(r["label"], class_names),
                           score: r[score]} for r in lowest]
        out[tag] = block
    return out


def mask_class_accuracy(model: Any, shards: Path, summary: dict[str, Any] | None, class_names: list[str],
                        limit: int, seed: int) -> None:
    """Add `per_mask_class` ({class: {"pixel_accuracy", "iou", "pixels"}}) and `agreement` (mIoU,
    pixel accuracy) to each source of `summary`, from at most `limit` published rows (a seeded
    choice) and the segmentation `model`."""
    from augment.metrics.preservation import agreement, segmentation_confusion

    if not summary or model is None or model.task != "segmentation":
        return
    files = sorted(Path(shards).glob("*.parquet"))
    for number, (tag, block) in enumerate(sorted(summary.items())):
        parts = [pq.read_table(f, columns=["image", "mask"], filters=[("source", "=", tag)]) for f in files]
        rows = [r for part in parts for r in part.to_pylist() if r["mask"] is not None]
        if len(rows) > limit:
            keep = np.random.default_rng(derive_seed(seed, MASK_CLASS_STREAM, number)).choice(
                len(rows), size=limit, replace=False)
            rows = [rows[int(i)] for i in np.sort(keep)]
        if not rows:
            block["per_mask_class"] = {}
            continue
        masks = [_plane(decode_png(r["mask"]["bytes"])) for r in rows]
        confusion = segmentation_confusion(model, [decode_png(r["image"]["bytes"]) for r in rows], masks)
        measured = agreement(confusion, model.void_id)
        totals, hits = confusion.sum(axis=1), np.diag(confusion)
        names = [class_names[c] if c < len(class_names) else str(c) for c in range(len(totals))]
        block["per_mask_class"] = {names[c]: {"pixel_accuracy": float(hits[c] / totals[c]), "pixels": int(totals[c]),
                                              "iou": measured["per_class_iou"][c]}
                                   for c in range(len(totals)) if totals[c]}
        block["agreement"] = {"rows": len(rows), "miou": measured["miou"],
                              "pixel_accuracy": measured["pixel_accuracy"]}


def _plane(array: np.ndarray) -> np.ndarray:
    return array[..., 0] if array.ndim == 3 else array


def _rows_by_id(shards: Path, ids: set[str]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    if not ids:
        return found
    for path in sorted(Path(shards).glob("*.parquet")):
        table = pq.read_table(path, columns=["id", "image", "mask"], filters=[("id", "in", sorted(ids))])
        found.update({row["id"]: row for row in table.to_pylist()})
    return found


def _palette(class_names: Sequence[str], ids: int) -> np.ndarray:
    """A fixed colour per class id (void black), so masks read the same in every report."""
    base = np.array([[128, 128, 128], [128, 0, 0], [192, 192, 128], [128, 64, 128], [0, 0, 192], [128, 128, 0],
                     [192, 128, 128], [64, 64, 128], [64, 0, 128], [64, 64, 0], [0, 128, 192], [0, 128, 0],
                     [192, 0, 192], [0, 192, 192], [255, 160, 0], [90, 40, 200]], np.uint8)
    colours = base[np.arange(ids) % len(base)]
    for i, name in enumerate(class_names[:ids]):
        if name.strip().lower() == "void":
            colours[i] = 0
    return colours


def _tile(array: np.ndarray, class_names: Sequence[str], is_mask: bool) -> np.ndarray:
    if is_mask:
        plane = array[..., 0] if array.ndim == 3 else array
        rgb = _palette(class_names, int(plane.max()) + 1)[plane.astype(np.int64)]
    else:
        rgb = np.repeat(array, 3, axis=2) if array.shape[2] == 1 else array
    width = max(1, round(rgb.shape[1] * STRIP_HEIGHT / rgb.shape[0]))
    return np.asarray(Image.fromarray(rgb).resize((width, STRIP_HEIGHT), Image.Resampling.NEAREST))


def strip(parts: Sequence[np.ndarray | None], class_names: Sequence[str], masks: Sequence[bool]) -> bytes:
    """PNG of pictures side by side at one height (None: a grey placeholder of the next one's width)."""
    tiles = [None if p is None else _tile(p, class_names, m) for p, m in zip(parts, masks, strict=True)]
    width = next((t.shape[1] for t in tiles if t is not None), STRIP_HEIGHT)
    tiles = [np.full((STRIP_HEIGHT, width, 3), 220, np.uint8) if t is None else t for t in tiles]
    canvas = np.full((STRIP_HEIGHT, sum(t.shape[1] for t in tiles) + STRIP_GAP * (len(tiles) - 1), 3), 255, np.uint8)
    x = 0
    for t in tiles:
        canvas[:, x:x + t.shape[1]] = t
        x += t.shape[1] + STRIP_GAP
    buffer = io.BytesIO()
    Image.fromarray(canvas).save(buffer, format="PNG")
    return buffer.getvalue()


def worst_pictures(shards: Path, summary: dict[str, Any] | None, class_names: list[str],
                   model: Any = None) -> dict[str, list[dict]]:
    """{source: [{"png", "id", "parent_id", "class", <score>, "parent_found"}]}: per worst row a
    strip of parent | row | its mask | the segmenter's reading of the row (the last with a
    segmentation `model`; no mask: parent | row)."""
    if not summary:
        return {}
    wanted = {w["id"] for block in summary.values() for w in block["worst"]}
    wanted |= {w["parent_id"] for block in summary.values() for w in block["worst"] if w["parent_id"]}
    rows = _rows_by_id(shards, wanted)
    reads = model is not None and model.task == "segmentation"
    out: dict[str, list[dict]] = {}
    for tag, block in summary.items():
        shown = []
        for worst in block["worst"]:
            row = rows.get(worst["id"])
            if row is None:
                continue
            parent = rows.get(worst["parent_id"] or "")
            image = decode_png(row["image"]["bytes"])
            parts: list[np.ndarray | None] = [None if parent is None else decode_png(parent["image"]["bytes"]), image]
            if row["mask"] is not None:
                parts.append(decode_png(row["mask"]["bytes"]))
                if reads:
                    parts.append(model.logits(model.images([image])).argmax(dim=1)[0].numpy().astype(np.uint16))
            png = strip(parts, class_names, [False, False, True, True][:len(parts)])
            shown.append({**worst, "png": png, "parent_found": parent is not None})
        out[tag] = shown
    return out
