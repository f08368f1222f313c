"""A contact sheet: frames beside their colourised masks with boxes drawn, as one PNG.

It is what a person looks at first to tell whether frames look like what they claim.
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from augment.sample import Sample

# CamVid's customary colours, so street masks look as people know them.
CAMVID_COLOURS = {
    "sky": (128, 128, 128), "building": (128, 0, 0), "pole": (192, 192, 128), "road": (128, 64, 128),
    "sidewalk": (0, 0, 192), "tree": (128, 128, 0), "sign": (192, 128, 128), "fence": (64, 64, 128),
    "car": (64, 0, 128), "pedestrian": (64, 64, 0), "bicyclist": (0, 128, 192), "void": (0, 0, 0),
}


def class_palette(class_names: Sequence[str]) -> np.ndarray:
    """(K+1)×3 uint8 colours: CamVid's where the name is known, else evenly spaced hues."""
    colours = np.zeros((max(len(class_names), 1) + 1, 3), np.uint8)
    for i, name in enumerate(class_names):
        if name in CAMVID_COLOURS:
            colours[i] = CAMVID_COLOURS[name]
        else:
            hue = (i * 0.618034) % 1.0  # golden-ratio steps keep neighbours apart
            colours[i] = [int(255 * c) for c in colorsys.hsv_to_rgb(hue, 0.65, 0.95)]
    return colours


def _tile(sample: Sample, palette: np.ndarray, scale: int) -> Image.Image:
    image = sample.image if sample.image.shape[2] == 3 else np.repeat(sample.image, 3, axis=2)
    left = Image.fromarray(image)
    if sample.mask is not None:
        ids = np.minimum(sample.mask, len(palette) - 1)
        right = Image.fromarray((0.35 * image + 0.65 * palette[ids]).astype(np.uint8))
    else:
        right = left.copy()
    tile = Image.new("RGB", (left.width * 2 + 2, left.height), (255, 255, 255))
    tile.paste(left, (0, 0))
    tile.paste(right, (left.width + 2, 0))
    tile = tile.resize((tile.width * scale, tile.height * scale), Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(tile)
    offset = (left.width + 2) * scale
    for box in sample.boxes:
        colour = tuple(int(c) for c in palette[min(box.label, len(palette) - 1)])
        x0, y0 = offset + box.x * scale, box.y * scale
        draw.rectangle([x0, y0, x0 + box.w * scale - 1, y0 + box.h * scale - 1], outline=colour, width=2)
        draw.rectangle([x0, y0, x0 + box.w * scale - 1, y0 + box.h * scale - 1], outline=(255, 255, 255), width=1)
    return tile


def write_contact_sheet(samples: Sequence[Sample], class_names: Sequence[str], path: Path,
                        *, columns: int = 4, min_tile: int = 192) -> Path:
    """Write a grid of (frame | mask overlay + boxes) tiles; small frames are scaled up."""
    if not samples:
        raise ValueError("a contact sheet needs at least one sample")
    palette = class_palette(class_names)
    scale = max(1, min_tile // max(samples[0].width, 1))
    tiles = [_tile(s, palette, scale) for s in samples]
    w = max(t.width for t in tiles)
    h = max(t.height for t in tiles)
    rows = (len(tiles) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * (w + 8) + 8, rows * (h + 8) + 8), (40, 40, 40))
    for i, tile in enumerate(tiles):
        sheet.paste(tile, (8 + (i % columns) * (w + 8), 8 + (i // columns) * (h + 8)))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    sheet.save(tmp, format="PNG")
    tmp.replace(path)
    return path
