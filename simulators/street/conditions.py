"""Time of day and weather as pixel operations on a rendered street frame.

Nothing here touches labels: fog blends towards a fog colour by depth (Koschmieder's law,
transmission exp(-density · depth)); rain darkens, hazes and adds streaks; snow whitens
and adds flakes; dusk and night scale the ambient light and switch on light sources
(lit windows, lamps, car lights) as additive glows. Particles come from an RNG seeded by
`particle_seed` in the description, so a description re-renders to the same bytes.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

# Per time of day: ambient RGB multiplier, light-source strength, fog colour.
AMBIENT = {"day": (1.0, 1.0, 1.0), "dusk": (0.78, 0.58, 0.5), "night": (0.22, 0.23, 0.3)}
LIGHTS_ON = {"day": 0.0, "dusk": 0.55, "night": 1.0}
FOG_COLOUR = {"day": (200, 204, 210), "dusk": (175, 140, 130), "night": (38, 40, 50)}
HAZE = {"clear": 0.002, "fog": 0.03, "rain": 0.006, "snow": 0.008}  # density per metre at intensity 0
HAZE_GAIN = {"clear": 0.0, "fog": 0.12, "rain": 0.03, "snow": 0.04}  # added at intensity 1
SKY_DEPTH = 50.0  # metres of haze the sky is seen through: clear stays blue, fog goes grey
SNOW_WHITE = {"day": 225.0, "dusk": 170.0, "night": 60.0}  # what snow whitens towards


def _glows(size: int, lights: list, strength: float) -> np.ndarray:
    """Light sources as soft discs: drawn at quarter resolution, blurred, scaled up."""
    s = max(size // 4, 4)
    buf = np.zeros((s, s, 3), np.float32)
    k = s / size
    for u, v, radius, colour in lights:
        r = max(round(radius * k), 1)
        cv2.circle(buf, (int(u * k), int(v * k)), r, tuple(float(c) for c in colour), -1, cv2.LINE_AA)
    buf = cv2.GaussianBlur(buf, (0, 0), 1.2)
    return cv2.resize(buf, (size, size), interpolation=cv2.INTER_LINEAR) * strength


def _rain(img: np.ndarray, rng: np.random.Generator, intensity: float, wind: float) -> None:
    """Streaks: short bright slanted segments, alpha-blended, vectorised over all points."""
    n = img.shape[0]
    count = int((80 + 500 * intensity) * (n / 256) ** 2)
    length = max(int(n * (0.03 + 0.04 * intensity)), 3)
    x0 = rng.uniform(-0.2 * n, 1.2 * n, count)
    y0 = rng.uniform(-length, n, count)
    steps = np.arange(length)
    xs = np.rint(x0[:, None] + np.sin(wind) * steps[None, :]).astype(np.int64).ravel()
    ys = np.rint(y0[:, None] + np.cos(wind) * steps[None, :]).astype(np.int64).ravel()
    ok = (xs >= 0) & (xs < n) & (ys >= 0) & (ys < n)
    xs, ys = xs[ok], ys[ok]
    img[ys, xs] = img[ys, xs] * 0.55 + np.float32(0.45 * 210)


def _snow(img: np.ndarray, rng: np.random.Generator, intensity: float, white: float) -> None:
    """Flakes: 1–3 pixel white squares, nearer (bigger) ones fewer."""
    n = img.shape[0]
    count = int((150 + 900 * intensity) * (n / 256) ** 2)
    xs = rng.integers(0, n, count)
    ys = rng.integers(0, n, count)
    big = rng.random(count)
    scale = max(n // 256, 1)
    for size, frac in ((1 * scale, 1.0), (2 * scale, 0.35), (3 * scale, 0.08)):
        sel = big < frac
        for dy in range(size):
            for dx in range(size):
                yy, xx = np.minimum(ys[sel] + dy, n - 1), np.minimum(xs[sel] + dx, n - 1)
                img[yy, xx] = img[yy, xx] * 0.15 + np.float32(0.85 * white)


def ambient_light(cond: dict[str, Any]) -> np.ndarray:
    """RGB multiplier of the time of day (render divides the sky by it beforehand)."""
    return np.array(AMBIENT[cond["time_of_day"]], np.float32) * np.float32(cond["sun"])


def apply_conditions(color: np.ndarray, depth_m: np.ndarray, emit: tuple[np.ndarray, np.ndarray] | None,
                     lights: list, cond: dict[str, Any], size: int) -> np.ndarray:
    """Lit, weathered uint8 image from the day-lit colour layer (modified in place)."""
    time, weather, i = cond["time_of_day"], cond["weather"], float(cond["intensity"])
    img = color
    # 1. Ambient light of the time of day.
    img *= ambient_light(cond)
    # 2. Light sources: lit windows, lamps and car lights, additive.
    on = LIGHTS_ON[time]
    if on > 0.0:
        if emit is not None:
            img.reshape(-1, 3)[emit[0]] += emit[1] * np.float32(on)
        if lights:
            img += _glows(size, lights, 0.9 * on)
    # 3. Fog / haze by depth (Koschmieder); the sky is seen through SKY_DEPTH metres of it.
    density = np.float32(HAZE[weather] + HAZE_GAIN[weather] * i)
    seen = np.minimum(depth_m, np.float32(1e4))
    seen[np.isinf(depth_m)] = SKY_DEPTH
    trans = np.exp(seen * -density)
    fog = np.array(FOG_COLOUR[time], np.float32)
    img -= fog
    img *= trans[..., None]
    img += fog
    rng = np.random.default_rng(int(cond["particle_seed"]))
    # 4. Rain: darker, greyer, softened, streaks. Snow: whiter, flakes.
    if weather == "rain":
        grey = img.mean(axis=2, keepdims=True)
        img[:] = (img * (1 - 0.4 * i) + grey * 0.4 * i) * np.float32(0.9 - 0.2 * i)
        img[:] = cv2.blur(img, (3, 3)) * 0.5 + img * 0.5
        _rain(img, rng, i, float(cond["wind"]))
    elif weather == "snow":
        white = SNOW_WHITE[time]
        img *= np.float32(1 - 0.3 * i)
        img += np.float32(white * 0.3 * i)
        _snow(img, rng, i, min(white + 25.0, 245.0))
    np.clip(img, 0, 255, out=img)
    return img.astype(np.uint8)
