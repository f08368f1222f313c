"""Draw one street scene as a JSON-able description (no pixels).

World frame: x to the right of the road centre, y up, z forward along the road, metres.
The camera stands in one of the lanes that run away from it (right-hand traffic) at
z = 0. Everything random comes from `np.random.default_rng(seed)`, split into three
streams (scene, camera, conditions) so that changing the weather, the time of day or the
camera leaves the objects of a seed where they were: only pixels change, not labels.
"""

from __future__ import annotations

import colorsys
from typing import Any

import numpy as np

from simulators.street.controls import TIMES_OF_DAY, WEATHERS, StreetControls

DESCRIPTION_VERSION = 1
STREET_LENGTH = 320.0  # metres of buildings per side; farther facades are the last one

# Base colours (RGB, day light) that colour jitter moves around.
BUILDING_COLOURS = [(190, 170, 140), (150, 80, 60), (160, 160, 165), (215, 210, 195), (120, 95, 75), (200, 185, 160)]
CAR_COLOURS = [(200, 200, 205), (30, 30, 35), (150, 20, 25), (40, 60, 120), (120, 125, 130), (230, 230, 225),
               (60, 90, 60), (190, 150, 40)]
SHIRT_COLOURS = [(40, 50, 90), (170, 40, 40), (220, 220, 210), (60, 60, 60), (50, 110, 70), (200, 150, 40)]
PANTS_COLOURS = [(30, 35, 60), (40, 40, 40), (90, 80, 70), (60, 70, 90)]
SKIN_COLOURS = [(230, 190, 160), (190, 140, 110), (120, 80, 60), (210, 170, 130)]
FENCE_COLOURS = [(90, 100, 95), (130, 100, 70), (170, 170, 170)]
SIGN_SHAPES = ["circle", "triangle", "octagon", "rect"]


def _f(value: float, digits: int = 3) -> float:
    return round(float(value), digits)


class _Colours:
    """Colour jitter from random numbers drawn in blocks (one RNG call per block, not per colour)."""

    def __init__(self, rng: np.random.Generator, amount: float) -> None:
        self.rng, self.amount = rng, amount
        self.normals: list[list[float]] = []
        self.uniforms: list[float] = []

    def jitter(self, base: tuple[int, int, int] | list[int], amount: float | None = None) -> list[int]:
        """Move a colour in hue, saturation and value by up to `amount` (0..1) of the full range."""
        amount = self.amount if amount is None else amount
        if not self.normals:
            self.normals = self.rng.normal(0.0, 1.0, (256, 3)).tolist()
        dh, ds, dv = self.normals.pop()
        h, s, v = colorsys.rgb_to_hsv(base[0] / 255.0, base[1] / 255.0, base[2] / 255.0)
        h = (h + 0.08 * amount * dh) % 1.0
        s = min(max(s * (1.0 + 0.5 * amount * ds), 0.0), 1.0)
        v = min(max(v * (1.0 + 0.25 * amount * dv), 0.0), 1.0)
        return [round(255 * c) for c in colorsys.hsv_to_rgb(h, s, v)]

    def pick(self, palette: list[tuple[int, int, int]], amount: float | None = None) -> list[int]:
        """A palette entry chosen uniformly, then jittered."""
        if not self.uniforms:
            self.uniforms = self.rng.random(256).tolist()
        return self.jitter(palette[int(self.uniforms.pop() * len(palette))], amount)


def _count(rng: np.random.Generator, pair: tuple[int, int]) -> int:
    return int(rng.integers(pair[0], pair[1] + 1))


def _road(rng: np.random.Generator, c: StreetControls, col: _Colours) -> dict[str, Any]:
    lanes = _count(rng, c.lanes)
    lane_width = _f(rng.uniform(3.0, 3.6))
    grey = int(rng.integers(70, 100))
    return {
        "lanes": lanes,
        "lane_width": lane_width,
        "half_width": _f(lanes * lane_width / 2),
        "sidewalk": [_f(rng.uniform(2.0, 5.0)), _f(rng.uniform(2.0, 5.0))],  # left, right
        "crosswalk_z": _f(rng.uniform(12.0, 40.0)) if rng.random() < 0.35 else None,
        "road_color": col.jitter((grey, grey, grey + 4)),
        "sidewalk_color": col.jitter((165, 160, 150)),
        "marking_color": [235, 235, 225] if rng.random() < 0.7 else [235, 200, 60],
    }


def _buildings(rng: np.random.Generator, col: _Colours) -> list[dict[str, Any]]:
    """Contiguous buildings along both facades, from 10 m behind the camera to STREET_LENGTH."""
    out: list[dict[str, Any]] = []
    n = int(STREET_LENGTH // 8) + 2  # enough lots of at least 8 m
    for side in (-1, 1):
        # Whole metres: the renderer's building lookup is per metre.
        z1 = (-10 + np.cumsum(rng.integers(8, 31, n))).tolist()
        z0 = [-10] + z1[:-1]
        u = np.round(rng.uniform(0.0, 1.0, (n, 7)), 3).tolist()
        keys = rng.integers(1, 2**31 - 1, n).tolist()
        for i in range(n):
            if z0[i] >= STREET_LENGTH:
                break
            h, sp, fl, ww, wh, lit, _ = u[i]
            out.append({
                "side": side, "z0": float(z0[i]), "z1": float(z1[i]),
                "height": _f(6.0 + 24.0 * h),
                "color": col.pick(BUILDING_COLOURS),
                "window_color": col.jitter((60, 75, 95)),
                "window_spacing": _f(2.4 + 1.6 * sp),
                "floor_height": _f(3.0 + 0.6 * fl),
                "window_size": [_f(0.35 + 0.3 * ww), _f(0.4 + 0.2 * wh)],
                "lit_fraction": _f(0.15 + 0.45 * lit),
                "lit_key": int(keys[i]),
            })
    return out


def _cars(rng: np.random.Generator, c: StreetControls, col: _Colours, road: dict[str, Any], cam_lane: int) -> list[dict]:
    lanes, lw, half = road["lanes"], road["lane_width"], road["half_width"]
    placed: list[tuple[int, float]] = []
    cars = []
    for _ in range(_count(rng, c.cars)):
        for _try in range(8):
            lane = int(rng.integers(lanes))
            z = float(rng.uniform(7.0 if lane == cam_lane else 4.0, 70.0))
            if all(pl != lane or abs(pz - z) > 7.0 for pl, pz in placed):
                break
        else:
            continue
        placed.append((lane, z))
        van = rng.random() < 0.15
        x = -half + (lane + 0.5) * lw + rng.normal(0.0, 0.15)
        cars.append({
            "kind": "car", "x": _f(x), "z": _f(z),
            "width": _f(rng.uniform(1.7, 1.95)),
            "height": _f(rng.uniform(1.9, 2.3) if van else rng.uniform(1.4, 1.6)),
            "length": _f(rng.uniform(4.8, 5.5) if van else rng.uniform(4.0, 4.8)),
            "color": col.pick(CAR_COLOURS),
            "facing": "away" if lane >= lanes // 2 else "toward",
        })
    return cars


def _people(rng: np.random.Generator, c: StreetControls, col: _Colours, road: dict[str, Any]) -> list[dict]:
    half = road["half_width"]
    out = []
    for _ in range(_count(rng, c.pedestrians)):
        side = -1 if rng.random() < 0.5 else 1
        walk = road["sidewalk"][0 if side < 0 else 1]
        on_crossing = road["crosswalk_z"] is not None and rng.random() < 0.3
        x = rng.uniform(-half, half) if on_crossing else side * (half + rng.uniform(0.5, max(walk - 0.4, 0.6)))
        z = road["crosswalk_z"] + rng.uniform(-1.0, 1.0) if on_crossing else rng.uniform(4.0, 50.0)
        out.append({
            "kind": "pedestrian", "x": _f(x), "z": _f(z), "height": _f(rng.uniform(1.55, 1.9)),
            "stride": _f(rng.uniform(-0.25, 0.25)), "shirt": col.pick(SHIRT_COLOURS),
            "pants": col.pick(PANTS_COLOURS), "skin": col.pick(SKIN_COLOURS, 0.3),
        })
    for _ in range(_count(rng, c.bicyclists)):
        side = 1 if rng.random() < 0.8 else -1
        out.append({
            "kind": "bicyclist", "x": _f(side * (half - rng.uniform(0.5, 0.9))), "z": _f(rng.uniform(5.0, 50.0)),
            "height": _f(rng.uniform(1.6, 1.85)), "shirt": col.pick(SHIRT_COLOURS),
            "pants": col.pick(PANTS_COLOURS), "skin": col.pick(SKIN_COLOURS, 0.3),
            "bike": col.pick(CAR_COLOURS),
        })
    return out


def _street_furniture(rng: np.random.Generator, c: StreetControls, col: _Colours, road: dict[str, Any]) -> list[dict]:
    half = road["half_width"]
    out = []
    for _ in range(_count(rng, c.trees)):
        side = -1 if rng.random() < 0.5 else 1
        out.append({
            "kind": "tree", "x": _f(side * (half + 0.9)), "z": _f(rng.uniform(4.0, 120.0)),
            "trunk": _f(rng.uniform(2.0, 3.2)), "radius": _f(rng.uniform(1.2, 2.4)),
            "color": col.jitter((60, 110, 45)), "trunk_color": [85, 65, 45],
        })
    for _ in range(_count(rng, c.poles)):
        side = -1 if rng.random() < 0.5 else 1
        out.append({
            "kind": "pole", "x": _f(side * (half + 0.4)), "z": _f(rng.uniform(4.0, 120.0)),
            "height": _f(rng.uniform(6.0, 9.0)), "arm": _f(rng.uniform(1.0, 2.0)), "color": [120, 122, 125],
        })
    for _ in range(_count(rng, c.signs)):
        side = 1 if rng.random() < 0.75 else -1
        out.append({
            "kind": "sign", "x": _f(side * (half + 0.5)), "z": _f(rng.uniform(6.0, 45.0)),
            "post": _f(rng.uniform(2.0, 2.6)), "panel": _f(rng.uniform(0.6, 0.9)),
            "shape": SIGN_SHAPES[int(rng.integers(len(SIGN_SHAPES)))],
        })
    for _ in range(_count(rng, c.fences)):
        side = -1 if rng.random() < 0.5 else 1
        walk = road["sidewalk"][0 if side < 0 else 1]
        at_kerb = rng.random() < 0.5
        z0 = rng.uniform(3.0, 60.0)
        out.append({
            "kind": "fence", "x": _f(side * (half + (0.15 if at_kerb else walk - 0.2))), "z": _f(z0),
            "z1": _f(z0 + rng.uniform(6.0, 30.0)), "height": _f(rng.uniform(0.9, 1.3)),
            "color": col.pick(FENCE_COLOURS),
        })
    return out


def _camera(rng: np.random.Generator, c: StreetControls, road: dict[str, Any], cam_lane: int) -> dict[str, Any]:
    """Camera in lane `cam_lane`; jitter perturbs height, pitch and yaw (its own stream)."""
    j = c.camera_jitter
    dh, dp, dyaw = rng.normal(0.0, 1.0, 3)
    return {
        "x": _f(-road["half_width"] + (cam_lane + 0.5) * road["lane_width"]),
        "height": _f(min(max(c.camera_height + 0.05 * j * dh, 1.0), 3.5)),
        "pitch": _f(c.camera_pitch + j * dp),
        "yaw": _f(j * dyaw),
        "fov": _f(c.fov),
    }


def _conditions(rng: np.random.Generator, c: StreetControls) -> dict[str, Any]:
    """Weather and time of day (own stream: they never move the scene's objects)."""
    col = _Colours(rng, c.color_jitter)
    weather = WEATHERS[int(rng.integers(len(WEATHERS)))] if c.weather == "random" else c.weather
    time = TIMES_OF_DAY[int(rng.integers(len(TIMES_OF_DAY)))] if c.time_of_day == "random" else c.time_of_day
    sky = {"day": ((80, 135, 215), (185, 210, 235)), "dusk": ((60, 55, 115), (245, 150, 90)),
           "night": ((4, 6, 18), (22, 26, 45))}[time]
    return {
        "weather": weather,
        "intensity": _f(c.weather_intensity),
        "time_of_day": time,
        "sky_top": col.jitter(sky[0]), "sky_horizon": col.jitter(sky[1], 0.5 * c.color_jitter),
        "sun": _f(rng.uniform(0.9, 1.1)),
        "wind": _f(rng.normal(0.0, 0.25)),  # slant of rain streaks, radians
        "particle_seed": int(rng.integers(0, 2**31 - 1)),
    }


def describe_scene(seed: int, controls: StreetControls, size: int) -> dict[str, Any]:
    """One frame's scene: road, camera, buildings, objects with instance ids, conditions."""
    if size < 16:
        raise ValueError(f"street frames need size >= 16 pixels, got {size}")
    scene_rng, camera_rng, cond_rng = np.random.default_rng(seed).spawn(3)
    col = _Colours(scene_rng, controls.color_jitter)
    road = _road(scene_rng, controls, col)
    buildings = _buildings(scene_rng, col)
    cam_lane = int(scene_rng.integers(road["lanes"] // 2, road["lanes"]))
    objects = _cars(scene_rng, controls, col, road, cam_lane)
    objects += _people(scene_rng, controls, col, road)
    objects += _street_furniture(scene_rng, controls, col, road)
    for i, obj in enumerate(objects, start=1):
        obj["instance"] = i
    camera = _camera(camera_rng, controls, road, cam_lane)
    return {
        "family": "street",
        "version": DESCRIPTION_VERSION,
        "seed": int(seed),
        "size": int(size),
        "label": None,
        "texture": bool(controls.texture),
        "texture_seed": int(scene_rng.integers(0, 2**31 - 1)),
        "camera": camera,
        "road": road,
        "buildings": buildings,
        "objects": objects,
        "conditions": _conditions(cond_rng, controls),
    }
