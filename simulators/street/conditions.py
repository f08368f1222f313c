"""Time of day and weather as pixel operations on a rendered street frame.

Nothing here touches labels. The time of day sets the ambient light (render multiplies
every surface colour by it while painting: facades get less than the street at night,
the sky keeps its own colours) and switches on light sources: pools of light on the
ground under street lamps, lit windows, and lamps and car lights as small additive
glows. Fog blends towards a fog colour by depth (Koschmieder's law, transmission
exp(-density · depth)); rain darkens, hazes and adds streaks; snow whitens and adds
flakes. Particles come from an RNG seeded by `particle_seed` in the description, so a
description re-renders to the same bytes.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

# Per time of day: ambient RGB multiplier of the street and objects, of the facades, light-source
# strength, fog colour.
AMBIENT = {"day": (1.0, 1.0, 1.0), "dusk": (0.78, 0.6, 0.52), "night": (0.27, 0.29, 0.36)}
FACADE_LIGHT = {"day": 1.0, "dusk": 0.9, "night": 0.7}  # facades are lit less than the street at night
LIGHTS_ON = {"day": 0.0, "dusk": 0.55, "night": 1.0}
FOG_COLOUR = {"day": (200, 204, 210), "dusk": (175, 140, 130), "night": (34, 35, 42)}
HAZE = {"clear": 0.002, "fog": 0.03, "rain": 0.006, "snow": 0.008}  # density per metre at intensity 0
HAZE_GAIN = {"clear": 0.0, "fog": 0.12, "rain": 0.03, "snow": 0.04}  # added at intensity 1
SKY_DEPTH = 50.0  # metres of haze the sky is seen through: clear stays blue, fog goes grey
SNOW_WHITE = {"day": 225.0, "dusk": 170.0, "night": 70.0}  # what snow whitens towards
POOL_LIGHT = np.array([1.0, 0.8, 0.55], np.float32)  # sodium-warm street lamps, relative to day light
POOL_PEAK = 0.95  # light under a lamp, relative to day light


def lighting(cond: dict[str, Any]) -> dict[str, Any]:
    """Ambient RGB multipliers of objects / ground / facades, and how far lights are on."""
    time = cond["time_of_day"]
    amb = np.array(AMBIENT[time], np.float32) * np.float32(cond["sun"])
    return {"objects": amb, "ground": amb, "facades": amb * np.float32(FACADE_LIGHT[time]), "on": LIGHTS_ON[time]}


def _glows(height: int, width: int, lights: list, strength: float) -> np.ndarray:
    """Light sources as soft discs: drawn at quarter resolution, blurred, scaled up."""
    sh, sw = max(height // 4, 4), max(width // 4, 4)
    buf = np.zeros((sh, sw, 3), np.float32)
    ky, kx = sh / height, sw / width
    for u, v, radius, colour in lights:
        r = max(round(radius * ky), 1)
        cv2.circle(buf, (int(u * kx), int(v * ky)), r, tuple(float(c) for c in colour), -1, cv2.LINE_AA)
    buf = cv2.GaussianBlur(buf, (0, 0), 1.0)
    if strength != 1.0:
        buf *= np.float32(strength)
    return cv2.resize(buf, (width, height), interpolation=cv2.INTER_LINEAR)


def _pools(desc: dict[str, Any], cam: Any, height: int, width: int) -> np.ndarray | None:
    """Light on the ground under the street lamps (0..~1 of day light), (height, width) or None.

    Evaluated on the ground point each pixel sees, at a quarter of the resolution (the
    pools are smooth), then scaled up.
    """
    lamps = [(o["x"] + (-1.0 if o["x"] > 0 else 1.0) * o["arm"], o["z"], o["height"])
             for o in desc["objects"] if o["kind"] == "pole" and o["z"] > -12.0]
    if not lamps:
        return None
    step = max(min(height, width) // 64, 1)
    dy, dx, dz = cam.rays(step)
    below = np.flatnonzero(dy < 0)
    if below.size == 0:
        return None
    r0 = int(below[0])
    low = np.zeros(dx.shape, np.float32)
    t = (np.float32(cam.height) / -dy[r0:])[:, None]
    gx = t * dx[r0:]
    gx += np.float32(cam.x)
    gz = t * dz[r0:]
    acc = low[r0:]
    for lx, lz, lh in lamps:
        inv = np.float32(-1.0 / (2.0 * (0.42 * lh) ** 2))
        d2 = np.square(gx - np.float32(lx))
        d2 += np.square(gz - np.float32(lz))
        d2 *= inv
        acc += cv2.exp(d2)
    np.minimum(acc, np.float32(1.4), out=acc)
    return cv2.resize(low, (width, height), interpolation=cv2.INTER_LINEAR)


def _rain(img: np.ndarray, rng: np.random.Generator, intensity: float, wind: float, bright: float) -> None:
    """Streaks: short bright slanted segments, alpha-blended, vectorised over all points."""
    h, w = img.shape[:2]
    count = int((80 + 500 * intensity) * (h / 256) * (w / 256))
    length = max(int(h * (0.03 + 0.04 * intensity)), 3)
    x0 = rng.uniform(-0.2 * w, 1.2 * w, count)
    y0 = rng.uniform(-length, h, count)
    steps = np.arange(length)
    xs = np.rint(x0[:, None] + np.sin(wind) * steps[None, :]).astype(np.int64).ravel()
    ys = np.rint(y0[:, None] + np.cos(wind) * steps[None, :]).astype(np.int64).ravel()
    ok = (xs >= 0) & (xs < w) & (ys >= 0) & (ys < h)
    flat = ys[ok] * w + xs[ok]
    pix = img.reshape(-1, 3)
    pix[flat] = pix[flat] * np.float32(0.6) + np.float32(0.4 * bright)


def _snow(img: np.ndarray, rng: np.random.Generator, intensity: float, white: float) -> None:
    """Flakes: 1–3 pixel white squares, nearer (bigger) ones fewer."""
    h, w = img.shape[:2]
    count = int((150 + 900 * intensity) * (h / 256) * (w / 256))
    xs = rng.integers(0, w, count)
    ys = rng.integers(0, h, count)
    big = rng.random(count)
    scale = max(min(h, w) // 256, 1)
    pix = img.reshape(-1, 3)
    for size, frac in ((1 * scale, 1.0), (2 * scale, 0.35), (3 * scale, 0.08)):
        sel = big < frac
        for dy in range(size):
            for dx in range(size):
                flat = np.minimum(ys[sel] + dy, h - 1) * w + np.minimum(xs[sel] + dx, w - 1)
                pix[flat] = pix[flat] * np.float32(0.15) + np.float32(0.85 * white)


def apply_conditions(canvas: Any, depth_m: np.ndarray, sky: np.ndarray, lights: list, cond: dict[str, Any],
                     cam: Any, desc: dict[str, Any], light: dict[str, Any]) -> np.ndarray:
    """Lit, weathered uint8 image from the ambient-lit colour layer (modified in place)."""
    time, weather, i = cond["time_of_day"], cond["weather"], float(cond["intensity"])
    img = canvas.color
    height, width = img.shape[:2]
    rows = img.reshape(height, width * 3)  # row-wise view: per-channel constants as one long row
    # 1. Light sources: pools under street lamps (multiply the lit surfaces), lit windows,
    # lamps and car lights (additive).
    on = float(light["on"])
    if on > 0.0:
        pool = _pools(desc, cam, height, width)
        if pool is not None:
            gain = POOL_LIGHT * np.float32(POOL_PEAK * on) / np.maximum(light["ground"], np.float32(0.05))
            chans = [pool * g for g in gain.tolist()]
            for c in chans:
                c += np.float32(1.0)
            cv2.multiply(img, cv2.merge(chans, dst=canvas.buffers["tmp3"]), dst=img)
        if canvas.emit is not None:
            idx, add = canvas.emit
            keep = canvas.mask.ravel()[idx] == 1  # still the building: not hidden by an object
            img.reshape(-1, 3)[idx[keep]] += add[keep]
        if lights:
            img += _glows(height, width, lights, 0.9 * on)
    # 2. Fog / haze by depth (Koschmieder); the sky is seen through SKY_DEPTH metres of it.
    density = np.float32(HAZE[weather] + HAZE_GAIN[weather] * i)
    trans = canvas.buffers["tmp1"]
    np.multiply(depth_m, -density, out=trans)
    cv2.exp(trans, dst=trans)  # exp(-inf) = 0 at the sky, set next
    trans[sky] = np.exp(-density * SKY_DEPTH)
    fog_row = np.tile(np.array(FOG_COLOUR[time], np.float32), width)
    rows -= fog_row
    cv2.multiply(img, cv2.merge([trans, trans, trans], dst=canvas.buffers["tmp3"]), dst=img)
    rows += fog_row
    rng = np.random.default_rng(int(cond["particle_seed"]))
    # 3. Rain: darker, greyer, softened, streaks. Snow: whiter, flakes.
    if weather == "rain":
        # Overcast by day; at night the wet street mostly keeps its (lamp) light.
        keep = np.float32(1 - 0.4 * i)
        dark = np.float32(0.9 - 0.2 * i if time == "day" else 1.0 - 0.1 * i)
        grey = np.float32(0.4 * i / 3)
        m = (np.eye(3, dtype=np.float32) * keep + grey) * dark
        tmp = canvas.buffers["tmp3"]
        cv2.transform(img, m, dst=tmp)
        cv2.addWeighted(cv2.blur(tmp, (3, 3), dst=img), 0.5, tmp, 0.5, 0.0, dst=img)
        _rain(img, rng, i, float(cond["wind"]), 210.0 if time == "day" else 150.0 if time == "dusk" else 110.0)
    elif weather == "snow":
        white = SNOW_WHITE[time]
        rows = img.reshape(height, width * 3)
        rows *= np.float32(1 - 0.3 * i)
        rows += np.float32(white * 0.3 * i)
        _snow(img, rng, i, min(white + 25.0, 245.0))
    return cv2.convertScaleAbs(img)
