"""Paint a digit description: glyphs → shape warp → neighbours → colours → blur → noise.

Glyph coverage is drawn at `SUPERSAMPLE`× the output size and area-downsampled, so edges
are anti-aliased. Font glyphs are rendered once per (font, pixel size, digit, stroke) and
kept in module-level caches (read-only after creation). Labels are geometric: the mask is
the centre glyph's coverage ≥ 0.5 before blur and noise, so they do not depend on the look.

Mask values: 0 = background (and neighbour digits), 1 = the centre digit.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from augment.sample import Box
from simulators.base import Frame
from simulators.digits.controls import font_dir

FONT_PX = (32, 64, 128, 256, 512)  # glyph cache sizes; the smallest that is sharp enough is used
INK_PER_PX = 0.73  # DejaVu digit ink height / font pixel size (measured)
PAD = 2  # empty border around cached glyphs, pixels
FIT = 0.9  # the centre digit's ink box stays within this fraction of the crop
FIT_ELASTIC = 0.96  # ... and after the elastic field, within this one

_FONTS: dict[tuple[str, int], ImageFont.FreeTypeFont] = {}
_GLYPHS: dict[tuple[str, int, int, int], Glyph] = {}
_GRIDS: dict[int, tuple[np.ndarray, np.ndarray]] = {}


@dataclass(frozen=True)
class Glyph:
    """One digit's coverage (float32 0..1) and where it sits in its own array."""

    alpha: np.ndarray
    anchor: tuple[float, float]  # baseline-left text anchor (x, y)
    ink: tuple[float, float, float, float]  # coverage ≥ 0.5 box: x0, y0, x1, y1 (exclusive)

    @property
    def width(self) -> float:
        return self.ink[2] - self.ink[0]

    @property
    def height(self) -> float:
        return self.ink[3] - self.ink[1]


def supersample(size: int) -> int:
    """Internal resolution factor: ≥ 64 internal pixels for small crops, 1 for large ones."""
    return max(1, min(4, math.ceil(64 / size)))


def load_font(file: str, px: int) -> ImageFont.FreeTypeFont:
    """A cached FreeType font (fonts are read-only, so one object serves every frame)."""
    key = (file, px)
    if key not in _FONTS:
        _FONTS[key] = ImageFont.truetype(os.path.join(font_dir(), file), px)
    return _FONTS[key]


def _ink_box(alpha: np.ndarray) -> tuple[float, float, float, float]:
    rows = np.flatnonzero((alpha >= 0.5).any(axis=1))
    cols = np.flatnonzero((alpha >= 0.5).any(axis=0))
    return float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)


def glyph(file: str, px: int, digit: int, stroke_px: int) -> Glyph:
    """A digit rendered at font size `px`, thickened (stroke_px > 0) or thinned (< 0).

    Stroke change is a grey-level dilation/erosion by an ellipse of radius |stroke_px|,
    which moves every edge outwards/inwards and so changes stroke thickness by 2·stroke_px.
    """
    key = (file, px, digit, stroke_px)
    cached = _GLYPHS.get(key)
    if cached is not None:
        return cached
    if stroke_px == 0:
        font = load_font(file, px)
        x0, y0, x1, y1 = font.getbbox(str(digit), anchor="ls")
        canvas = Image.new("L", (x1 - x0 + 2 * PAD, y1 - y0 + 2 * PAD), 0)
        anchor = (PAD - x0, PAD - y0)
        ImageDraw.Draw(canvas).text(anchor, str(digit), font=font, fill=255, anchor="ls")
        alpha = np.asarray(canvas, dtype=np.float32) / 255.0
        made = Glyph(alpha, (float(anchor[0]), float(anchor[1])), _ink_box(alpha))
    else:
        base = glyph(file, px, digit, 0)
        r = abs(stroke_px)
        padded = cv2.copyMakeBorder(base.alpha, r, r, r, r, cv2.BORDER_CONSTANT, value=0.0)
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
        op = cv2.dilate if stroke_px > 0 else cv2.erode
        alpha = op(padded, kernel)
        ink = _ink_box(alpha) if (alpha >= 0.5).any() else base.ink
        made = Glyph(alpha, (base.anchor[0] + r, base.anchor[1] + r), ink)
    _GLYPHS[key] = made
    return made


def _font_px(target_height: float) -> int:
    """The smallest cached font size whose digits are at least `target_height` tall."""
    for px in FONT_PX:
        if INK_PER_PX * px >= target_height:
            return px
    return FONT_PX[-1]


def _plate_matrix(d: dict[str, Any], scale: float) -> np.ndarray:
    """2×2 linear part: glyph pixels → internal pixels (aspect, slant, then rotation)."""
    theta = math.radians(d["rotation"])
    c, s = math.cos(theta), math.sin(theta)
    rot = np.array([[c, s], [-s, c]])
    shear = np.array([[1.0, -d["slant"]], [0.0, 1.0]])
    stretch = np.diag([scale * d["aspect"], scale])
    return rot @ shear @ stretch


def _warp(g: Glyph, linear: np.ndarray, origin: tuple[float, float], offset: np.ndarray, side: int) -> np.ndarray:
    """Place a glyph: its point `origin` (array coords) goes to internal pixel `offset`."""
    matrix = np.empty((2, 3), dtype=np.float64)
    matrix[:, :2] = linear
    matrix[:, 2] = offset - linear @ np.asarray(origin)
    return cv2.warpAffine(g.alpha, matrix, (side, side), flags=cv2.INTER_LINEAR, borderValue=0.0)


def _fit_inside(g: Glyph, linear: np.ndarray, shift: np.ndarray, side: int) -> tuple[np.ndarray, np.ndarray]:
    """Shrink and re-centre the plate so the centre digit's ink box stays in the crop.

    Thick strokes, wide aspect and rotation can make a digit wider than `height` says;
    the digit is then scaled down (never up) and its jitter clamped, so it is never cut.
    """
    half = np.array([g.width, g.height]) / 2
    corners = np.array([[-1, -1], [1, -1], [-1, 1], [1, 1]]) * half
    extent = np.abs(corners @ linear.T).max(axis=0)  # half-extent in internal pixels
    room = FIT * side / 2
    linear = linear * min(1.0, float(room / extent.max()))
    extent = np.abs(corners @ linear.T).max(axis=0)
    slack = np.maximum(room - extent, 0.0)
    return linear, (side - 1) / 2 + np.clip(shift, -slack, slack)


def _pull_inside(alpha: np.ndarray, side: int) -> np.ndarray | None:
    """A scale-and-shift (2×3) that brings the coverage ≥ 0.5 box into the crop, or None."""
    if not (alpha >= 0.5).any():
        return None
    x0, y0, x1, y1 = _ink_box(alpha)
    lo, hi = (1 - FIT_ELASTIC) / 2 * side, (1 + FIT_ELASTIC) / 2 * side
    if x0 >= lo and y0 >= lo and x1 <= hi and y1 <= hi:
        return None
    k = min(1.0, (hi - lo) / (x1 - x0), (hi - lo) / (y1 - y0))
    centre = np.array([(x0 + x1) / 2, (y0 + y1) / 2])
    half = k * np.array([x1 - x0, y1 - y0]) / 2
    target = np.clip(centre, lo + half, hi - half)
    return np.hstack([np.eye(2) * k, (target - k * centre)[:, None]])


def _grid(side: int) -> tuple[np.ndarray, np.ndarray]:
    if side not in _GRIDS:
        ys, xs = np.mgrid[0:side, 0:side].astype(np.float32)
        _GRIDS[side] = (xs, ys)
    return _GRIDS[side]


def _elastic(alpha: np.ndarray, elastic: dict[str, Any], glyph_height: float) -> np.ndarray:
    """Simard-style elastic warp: Gaussian-smoothed white noise, rescaled to unit std."""
    side = alpha.shape[0]
    sigma = max(elastic["sigma"] * glyph_height, 0.5)
    gain = elastic["alpha"] * glyph_height * 2.0 * math.sqrt(math.pi) * sigma
    field = np.random.default_rng(elastic["seed"]).standard_normal((2, side, side), dtype=np.float32)
    dx = cv2.GaussianBlur(field[0], (0, 0), sigma) * gain
    dy = cv2.GaussianBlur(field[1], (0, 0), sigma) * gain
    xs, ys = _grid(side)
    return cv2.remap(alpha, xs + dx, ys + dy, cv2.INTER_LINEAR, borderValue=0.0)


def glyph_layers(d: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Coverage of the centre digit and of its neighbours at output size (float32 0..1)."""
    size = d["size"]
    factor = supersample(size)
    side = size * factor
    target = d["height"] * side
    px = _font_px(target)
    base = glyph(d["font"], px, d["digit"], 0)
    stroke_px = round(d["stroke"] / 2 * base.height)
    centre = glyph(d["font"], px, d["digit"], stroke_px)
    linear = _plate_matrix(d, target / base.height)
    # Plate frame: origin at the centre glyph's ink-box centre, y grows downwards.
    cx, cy = (centre.ink[0] + centre.ink[2]) / 2, (centre.ink[1] + centre.ink[3]) / 2
    linear, middle = _fit_inside(centre, linear, np.asarray(d["shift"]) * side, side)
    centre_alpha = _warp(centre, linear, (cx, cy), middle, side)
    if d["elastic"]["alpha"] > 0:
        centre_alpha = _elastic(centre_alpha, d["elastic"], target)
        correction = _pull_inside(centre_alpha, side)
        if correction is not None:  # the field pushed ink out: shrink/move the whole plate
            centre_alpha = cv2.warpAffine(centre_alpha, correction, (side, side), flags=cv2.INTER_LINEAR)
            linear = correction[:, :2] @ linear
            middle = correction[:, :2] @ middle + correction[:, 2]
    others = np.zeros((side, side), dtype=np.float32)
    baseline = centre.anchor[1] - cy  # baseline in plate coordinates
    for n in d["neighbours"]:
        g = glyph(d["font"], px, n["digit"], stroke_px)
        step = centre.width / 2 + d["gap"] * base.height + g.width / 2
        plate_x = -step if n["side"] == "left" else step
        ncx = (g.ink[0] + g.ink[2]) / 2
        # The neighbour's ink centre sits at plate (plate_x, baseline - (anchor_y - ink_cy)).
        origin = (ncx, g.anchor[1] - baseline)
        np.maximum(others, _warp(g, linear, origin, middle + linear @ np.array([plate_x, 0.0]), side), out=others)
    if factor > 1:
        centre_alpha = cv2.resize(centre_alpha, (size, size), interpolation=cv2.INTER_AREA)
        others = cv2.resize(others, (size, size), interpolation=cv2.INTER_AREA)
    return centre_alpha, others


def _texture(t: dict[str, Any], size: int) -> np.ndarray:
    """Background pattern in [0, 1] (size×size), or zeros for kind "none"."""
    if t["kind"] == "none":
        return np.zeros((size, size), dtype=np.float32)
    if t["kind"] == "noise":
        coarse = np.random.default_rng(t["seed"]).random((size // 4 + 2, size // 4 + 2), dtype=np.float32)
        return np.clip(cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC), 0.0, 1.0)
    xs, ys = _grid(size)
    proj = (xs * math.cos(t["angle"]) + ys * math.sin(t["angle"])) / size
    if t["kind"] == "gradient":
        return (proj - proj.min()) / max(float(proj.max() - proj.min()), 1e-6)
    if t["kind"] == "stripes":
        return 0.5 + 0.5 * np.sin(2 * math.pi * proj / t["period"] + t["phase"])
    raise ValueError(f"unknown background texture {t['kind']!r}")


def _centre_box(mask: np.ndarray, digit: int) -> Box:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return Box(float(cols[0]), float(rows[0]), float(cols[-1] - cols[0] + 1), float(rows[-1] - rows[0] + 1), digit)


def render_digit(d: dict[str, Any]) -> Frame:
    """Paint a description from `describe_digit`; pure function of `d`."""
    size = d["size"]
    centre, others = glyph_layers(d)
    ink = 1.0 - (1.0 - centre) * (1.0 - others)
    fg = np.asarray(d["fg"], dtype=np.float32)
    bg = np.asarray(d["bg"], dtype=np.float32)
    t = d["texture"]
    background = bg + (t["amplitude"] * _texture(t, size))[..., None] * (fg - bg)
    image = background + ink[..., None] * (fg - background)
    if d["blur"] > 0.05:
        image = cv2.GaussianBlur(image, (0, 0), d["blur"])
        if image.ndim == 2:
            image = image[..., None]
    if d["noise"]["std"] > 0:
        rng = np.random.default_rng(d["noise"]["seed"])
        image = image + rng.standard_normal(image.shape, dtype=np.float32) * np.float32(d["noise"]["std"])
    image = (np.clip(image, 0.0, 255.0) + 0.5).astype(np.uint8)

    body = centre >= 0.5
    if not body.any():  # a tiny glyph: keep its strongest pixel so the label has a box
        body = np.zeros_like(body)
        body[np.unravel_index(int(np.argmax(centre)), centre.shape)] = True
    mask = body.astype(np.uint16) if d["with_mask"] else None
    return Frame(image=image, mask=mask, boxes=[_centre_box(body, d["digit"])], label=d["digit"])
