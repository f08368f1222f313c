"""Draw one digit crop's description: every random choice, from one seeded RNG.

The draws happen in a fixed order whatever the controls say, and shape parameters are
drawn even when `shape_randomisation` is off (then zeroed), so the same seed gives the same
digit, font, colours and neighbours with and without shape randomisation: the two
settings differ only in glyph geometry. Per-pixel fields (elastic, texture and pixel
noise) are not stored; their integer seeds are.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from simulators.digits.controls import TEXTURES, DigitsControls

SEED_HIGH = 2**32  # per-pixel field seeds: plain ints, exact in JSON
COLOR_TRIES = 20  # rejection draws for a fg/bg pair with enough contrast


def _uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(rng.uniform(bounds[0], bounds[1]))


def _luminance(rgb: list[int]) -> float:
    if len(rgb) == 1:
        return rgb[0] / 255.0
    return (0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]) / 255.0


def _colours(rng: np.random.Generator, controls: DigitsControls) -> tuple[list[int], list[int]]:
    """Foreground (ink) and background colours at least `min_contrast` apart in luminance."""
    channels = 3 if controls.color == "rgb" else 1
    if not controls.random_colors:
        return [255] * channels, [0] * channels
    for _ in range(COLOR_TRIES):
        fg = [int(v) for v in rng.integers(0, 256, channels)]
        bg = [int(v) for v in rng.integers(0, 256, channels)]
        if abs(_luminance(fg) - _luminance(bg)) >= controls.min_contrast:
            return fg, bg
    # Unlucky draws: keep the background, put the ink at the far end of the grey axis.
    fg = [0] * channels if _luminance(bg) >= 0.5 else [255] * channels
    return fg, bg


def _texture(rng: np.random.Generator, controls: DigitsControls) -> dict[str, Any]:
    """Background pattern; `amplitude` is a fraction of the bg→fg contrast (ink stays extreme)."""
    chance, pick = float(rng.random()), int(rng.integers(len(TEXTURES)))
    setting = controls.background_texture
    if isinstance(setting, str):
        kind = setting
    else:
        kind = TEXTURES[pick] if chance < setting else "none"
    return {
        "kind": kind,
        "amplitude": _uniform(rng, (0.1, 0.35)),
        "angle": _uniform(rng, (0.0, np.pi)),
        "period": _uniform(rng, (0.12, 0.5)),  # stripes, fraction of the crop
        "phase": _uniform(rng, (0.0, 2 * np.pi)),
        "seed": int(rng.integers(SEED_HIGH)),
    }


def describe_digit(seed: int, controls: DigitsControls, size: int) -> dict[str, Any]:
    """A JSON-able description of one crop; `render_digit` paints it without randomness."""
    if size < 8:
        raise ValueError(f"size must be at least 8 pixels, got {size}")
    rng = np.random.default_rng(seed)
    digit = int(rng.integers(10))
    font = controls.fonts[int(rng.integers(len(controls.fonts)))]
    height = _uniform(rng, controls.scale)

    # Shape draws (always made, zeroed when shape randomisation is off).
    shape = {
        "rotation": _uniform(rng, controls.rotation),
        "stroke": _uniform(rng, controls.stroke_width),
        "slant": _uniform(rng, controls.slant),
        "aspect": _uniform(rng, controls.aspect),
        "shift": [_uniform(rng, (-controls.shift, controls.shift)) for _ in range(2)],
    }
    elastic = {"alpha": controls.elastic.alpha, "sigma": controls.elastic.sigma, "seed": int(rng.integers(SEED_HIGH))}
    if not controls.shape_randomisation:
        shape = {"rotation": 0.0, "stroke": 0.0, "slant": 0.0, "aspect": 1.0, "shift": [0.0, 0.0]}
        elastic["alpha"] = 0.0

    # Neighbours: same font and style as the centre (one house-number plate).
    neighbours = []
    for side in ("left", "right"):
        present, other = float(rng.random()) < controls.neighbours, int(rng.integers(10))
        if present:
            neighbours.append({"side": side, "digit": other})
    gap = _uniform(rng, (0.08, 0.25))  # ink-to-ink, fraction of the glyph height

    texture = _texture(rng, controls)
    blur = _uniform(rng, (0.0, controls.blur))
    noise = {"std": _uniform(rng, (0.0, controls.noise)), "seed": int(rng.integers(SEED_HIGH))}
    fg, bg = _colours(rng, controls)  # last: its rejection loop draws a variable count
    return {
        "seed": int(seed),
        "size": int(size),
        "color": controls.color,
        "with_mask": controls.with_mask,
        "digit": digit,
        "label": digit,  # the frame's class id (= digit); what generic sources read
        "font": font,
        "height": height,
        **shape,
        "elastic": elastic,
        "neighbours": neighbours,
        "gap": gap,
        "fg": fg,
        "bg": bg,
        "texture": texture,
        "blur": blur,
        "noise": noise,
    }
