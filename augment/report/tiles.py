"""A grid of separated, captioned image tiles as PNG bytes: the report's sample grids and its
gallery of worst rows.

Each tile is framed and set apart by a white gap, so neighbouring images never run
together whatever their content; the caption under it (the row's shard id, then e.g. a
score) lets a reader look the row up. Rows of tiles come in groups (real | synthetic, or a
row beside its nearest training image) with a wider gap between groups, and an optional
label (the class) on the left.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

BACKGROUND = (255, 255, 255)  # the gaps between tiles
FRAME = (150, 150, 150)  # a 1 px frame around each picture: visible on white and on dark images
INK = (36, 36, 36)  # grays, so that a gray canvas holds them exactly
TILE_GAP = 4  # px between tiles of a group
GROUP_GAP = 14  # px between groups (real | synthetic; one pair | the next)
ROW_GAP = 6  # px between rows of tiles
FONT_PX = 10
LINE_PX = FONT_PX + 2
CELL = 64  # px per tile: an id like "digits/0072~classical3" fits its caption in two lines
LABEL_WIDTH = 64  # px at most of the row label column, when there is one
ELLIPSIS = "…"
_BREAK_AFTER = "/~_-."  # an id wraps after one of these where it can


@dataclass(frozen=True)
class Tile:
    """One picture (H x W x C uint8, C 1 or 3) and the caption lines under it."""

    image: np.ndarray
    caption: tuple[str, ...] = ()


@lru_cache(maxsize=4)
def _font(size: int) -> Any:
    """Pillow's bundled font (a bitmap font of fixed size where Pillow lacks FreeType)."""
    return ImageFont.load_default(size=size)


def _width(text: str, font: Any) -> float:
    return float(font.getlength(text))


def _wrap(text: str, font: Any, width: int) -> list[str]:
    """Greedy wrap by characters, breaking after an id separator where one is on the line."""
    lines: list[str] = []
    rest = text
    while rest:
        end = 1
        while end < len(rest) and _width(rest[:end + 1], font) <= width:
            end += 1
        if end < len(rest):
            cut = max(rest.rfind(c, 0, end) for c in _BREAK_AFTER) + 1
            end = cut if cut > end // 2 else end  # only when it keeps most of the line
        lines.append(rest[:end])
        rest = rest[end:]
    return lines


def fit_lines(text: str, font: Any, width: int, lines: int) -> list[str]:
    """`text` wrapped into at most `lines` lines of `width` px; when it does not fit, its end
    (where ids differ) after an ellipsis."""
    wrapped = _wrap(text, font, width)
    if len(wrapped) <= lines:
        return wrapped
    for start in range(1, len(text)):
        wrapped = _wrap(ELLIPSIS + text[start:], font, width)
        if len(wrapped) <= lines:
            return wrapped
    return [ELLIPSIS]


def _picture(image: np.ndarray, cell: int, mode: str) -> Image.Image:
    if mode == "L":
        return Image.fromarray(image[..., 0]).resize((cell, cell), Image.Resampling.NEAREST)
    rgb = np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image[..., :3]
    return Image.fromarray(rgb).resize((cell, cell), Image.Resampling.NEAREST)


def _label_width(labels: Sequence[str] | None, font: Any) -> int:
    if labels is None:
        return 0
    return min(LABEL_WIDTH, int(max((_width(t, font) for t in labels), default=0)) + 8)


def tile_grid(rows: Sequence[Sequence[Sequence[Tile]]], groups: Sequence[int], *,
              row_labels: Sequence[str] | None = None, cell: int = CELL, caption_lines: int = 2) -> bytes:
    """PNG of `rows`, each a list of groups of tiles; group g has room for `groups[g]` tiles
    (a shorter group leaves its slots blank). Captions get `caption_lines` lines: the first
    caption entry takes the lines the others (one line each) leave."""
    if row_labels is not None and len(row_labels) != len(rows):
        raise ValueError(f"tile_grid: {len(row_labels)} row labels for {len(rows)} rows")
    for r, row in enumerate(rows):
        if len(row) != len(groups) or any(len(g) > n for g, n in zip(row, groups)):
            raise ValueError(f"tile_grid: row {r} has groups of {[len(g) for g in row]} tiles, room for {list(groups)}")
    font = _font(FONT_PX)
    label_width = _label_width(row_labels, font)
    # Gray pictures make a gray PNG (a third of the bytes): frame, ink and gaps are grays too.
    mode = "L" if all(t.image.shape[2] == 1 for row in rows for g in row for t in g) else "RGB"
    starts, x = [], label_width
    for n in groups:  # the left edge of every slot
        starts.append([x + j * (cell + TILE_GAP) for j in range(n)])
        x += n * cell + (n - 1) * TILE_GAP + GROUP_GAP
    row_height = cell + caption_lines * LINE_PX
    height = max(1, len(rows) * row_height + (len(rows) - 1) * ROW_GAP)
    canvas = Image.new(mode, (max(1, x - GROUP_GAP), height), _colour(BACKGROUND, mode))
    draw = ImageDraw.Draw(canvas)
    for r, row in enumerate(rows):
        top = r * (row_height + ROW_GAP)
        if row_labels is not None:
            for i, line in enumerate(fit_lines(row_labels[r], font, label_width - 6, 3)):
                draw.text((0, top + i * LINE_PX), line, fill=_colour(INK, mode), font=font)
        for group, lefts in zip(row, starts):
            for tile, left in zip(group, lefts):
                canvas.paste(_picture(tile.image, cell - 2, mode), (left + 1, top + 1))
                draw.rectangle((left, top, left + cell - 1, top + cell - 1), outline=_colour(FRAME, mode))
                for i, line in enumerate(_caption(tile.caption, font, cell, caption_lines)):
                    draw.text((left, top + cell + 1 + i * LINE_PX), line, fill=_colour(INK, mode), font=font)
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def _colour(rgb: tuple[int, int, int], mode: str) -> tuple[int, int, int] | int:
    return rgb if mode == "RGB" else rgb[0]


def _caption(parts: Sequence[str], font: Any, width: int, lines: int) -> list[str]:
    if not parts:
        return []
    rest = [fit_lines(p, font, width, 1)[0] for p in parts[1:]][: max(0, lines - 1)]
    return fit_lines(parts[0], font, width, max(1, lines - len(rest))) + rest
