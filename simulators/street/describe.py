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
from simulators.street.styles import LOOKS, Look

DESCRIPTION_VERSION = 1
STREET_LENGTH = 320.0  # metres of buildings per side; farther facades are the last one
# Base colours (RGB, day light) that colour jitter moves around: see styles.py.


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

    def pick(self, palette: tuple[tuple[int, int, int], ...], amount: float | None = None) -> list[int]:
        """A palette entry chosen uniformly, then jittered."""
        if not self.uniforms:
            self.uniforms = self.rng.random(256).tolist()
        return self.jitter(palette[int(self.uniforms.pop() * len(palette))], amount)


def _count(rng: np.random.Generator, pair: tuple[int, int]) -> int:
    return int(rng.integers(pair[0], pair[1] + 1))


def _road(rng: np.random.Generator, c: StreetControls, col: _Colours, look: Look) -> dict[str, Any]:
    lanes = _count(rng, c.lanes)
    lane_width = _f(rng.uniform(3.0, 3.6))
    grey = int(rng.integers(*look.road_grey))
    return {
        "lanes": lanes,
        "lane_width": lane_width,
        "half_width": _f(lanes * lane_width / 2),
        "sidewalk": [_f(rng.uniform(*look.sidewalk_width)), _f(rng.uniform(*look.sidewalk_width))],  # left, right
        "crosswalk_z": _f(rng.uniform(12.0, 40.0)) if rng.random() < 0.35 else None,
        "road_color": col.jitter((grey, grey, grey + 4)),
        "sidewalk_color": col.jitter(look.sidewalk_colour),
        "marking_color": [235, 235, 225] if rng.random() < 0.7 else [235, 200, 60],
    }


def _buildings(rng: np.random.Generator, c: StreetControls, col: _Colours, look: Look) -> list[dict[str, Any]]:
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
            low, high = c.building_height
            out.append({
                "side": side, "z0": float(z0[i]), "z1": float(z1[i]),
                "height": _f(low + (high - low) * h),
                "color": col.pick(look.building_colours),
                "window_color": col.jitter(look.window_colour),
                "window_spacing": _f(2.4 + 1.6 * sp),
                "floor_height": _f(3.0 + 0.6 * fl),
                "window_size": [_f(0.35 + 0.3 * ww), _f(0.4 + 0.2 * wh)],
                "lit_fraction": _f(0.15 + 0.45 * lit),
                "lit_key": int(keys[i]),
            })
    return out


def _cars(rng: np.random.Generator, c: StreetControls, col: _Colours, road: dict[str, Any], cam_lane: int,
          look: Look) -> list[dict]:
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
            "color": col.pick(look.car_colours),
            "facing": "away" if lane >= lanes // 2 else "toward",
        })
    return cars


def _parked_cars(rng: np.random.Generator, c: StreetControls, col: _Colours, road: dict[str, Any], cam_lane: int,
                 objects: list[dict], look: Look) -> list[dict]:
    """Cars parked at the kerb in the outer lanes the camera does not drive in, clear of the
    cars driving in those lanes."""
    lanes, lw, half = road["lanes"], road["lane_width"], road["half_width"]
    kerbs = [(lane, side) for lane, side in ((0, -1), (lanes - 1, 1)) if lane != cam_lane]
    taken = [(int((o["x"] + half) // lw), o["z"]) for o in objects if o["kind"] == "car"]
    parked: list[dict] = []
    for _ in range(_count(rng, c.parked_cars) if kerbs else 0):
        for _try in range(8):
            lane, side = kerbs[int(rng.integers(len(kerbs)))]
            z = float(rng.uniform(3.0, 60.0))
            if all(pl != lane or abs(pz - z) > 6.5 for pl, pz in taken):
                break
        else:
            continue
        taken.append((lane, z))
        width = float(rng.uniform(1.7, 1.9))
        parked.append({
            "kind": "car", "x": _f(side * (half - 0.25 - width / 2)), "z": _f(z), "width": _f(width),
            "height": _f(rng.uniform(1.4, 1.6)), "length": _f(rng.uniform(4.0, 4.8)),
            "color": col.pick(look.car_colours), "facing": "away" if side > 0 else "toward",
        })
    return parked


def _people(rng: np.random.Generator, c: StreetControls, col: _Colours, road: dict[str, Any],
            look: Look) -> list[dict]:
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
            "stride": _f(rng.uniform(-0.25, 0.25)), "shirt": col.pick(look.shirt_colours),
            "pants": col.pick(look.pants_colours), "skin": col.pick(look.skin_colours, 0.3),
        })
    for _ in range(_count(rng, c.bicyclists)):
        side = 1 if rng.random() < 0.8 else -1
        out.append({
            "kind": "bicyclist", "x": _f(side * (half - rng.uniform(0.5, 0.9))), "z": _f(rng.uniform(5.0, 50.0)),
            "height": _f(rng.uniform(1.6, 1.85)), "shirt": col.pick(look.shirt_colours),
            "pants": col.pick(look.pants_colours), "skin": col.pick(look.skin_colours, 0.3),
            "bike": col.pick(look.car_colours),
        })
    return out


def _tree(rng: np.random.Generator, col: _Colours, half: float, look: Look) -> dict[str, Any]:
    side = -1 if rng.random() < 0.5 else 1
    tree = {
        "kind": "tree", "x": _f(side * (half + 0.9)), "z": _f(rng.uniform(4.0, 120.0)),
        "trunk": _f(rng.uniform(*look.trunk)), "radius": _f(rng.uniform(*look.tree_radius)),
        "color": col.jitter(look.tree_colour) if look.tree_colours is None else col.pick(look.tree_colours),
        "trunk_color": [85, 65, 45],
    }
    if look.bare_trees and rng.random() < look.bare_trees:
        # Leafless: grey twigs against the sky, one crown colour, and the seed of its branches.
        tree["bare"] = int(rng.integers(1, 2**31 - 1))
        tree["color"] = col.jitter((166, 167, 166), 0.3)
        tree["trunk_color"] = [70, 64, 58]
    return tree


def _sign(rng: np.random.Generator, col: _Colours, half: float, look: Look) -> dict[str, Any]:
    side = 1 if rng.random() < 0.75 else -1
    sign = {
        "kind": "sign", "x": _f(side * (half + 0.5)), "z": _f(rng.uniform(6.0, 45.0)),
        "post": _f(rng.uniform(2.0, 2.6)), "panel": _f(rng.uniform(0.6, 0.9)),
        "shape": look.sign_shapes[int(rng.integers(len(look.sign_shapes)))],
    }
    if sign["shape"] == "board":  # a shop board or banner: wider, on one or two posts, any height
        sign.update(post=_f(rng.uniform(0.3, 3.0)), panel=_f(rng.uniform(0.9, 2.2)), color=col.pick(look.board_colours))
    elif sign["shape"] == "light":  # a traffic light: a dark housing on a taller post
        sign.update(post=_f(rng.uniform(2.2, 3.2)), panel=_f(rng.uniform(0.35, 0.45)),
                    lit=int(rng.integers(3)))
    return sign


def _street_furniture(rng: np.random.Generator, c: StreetControls, col: _Colours, road: dict[str, Any],
                      look: Look) -> list[dict]:
    half = road["half_width"]
    out = [_tree(rng, col, half, look) for _ in range(_count(rng, c.trees))]
    for _ in range(_count(rng, c.poles)):
        side = -1 if rng.random() < 0.5 else 1
        out.append({
            "kind": "pole", "x": _f(side * (half + 0.4)), "z": _f(rng.uniform(4.0, 120.0)),
            "height": _f(rng.uniform(6.0, 9.0)), "arm": _f(rng.uniform(1.0, 2.0)), "color": list(look.pole_colour),
        })
    out += [_sign(rng, col, half, look) for _ in range(_count(rng, c.signs))]
    for _ in range(_count(rng, c.fences)):
        side = -1 if rng.random() < 0.5 else 1
        walk = road["sidewalk"][0 if side < 0 else 1]
        at_kerb = rng.random() < 0.5
        z0 = rng.uniform(3.0, 60.0)
        out.append({
            "kind": "fence", "x": _f(side * (half + (0.15 if at_kerb else walk - 0.2))), "z": _f(z0),
            "z1": _f(z0 + rng.uniform(*look.fence_length)), "height": _f(rng.uniform(*look.fence_height)),
            "color": col.pick(look.fence_colours),
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


def _conditions(rng: np.random.Generator, c: StreetControls, look: Look) -> dict[str, Any]:
    """Weather and time of day (own stream: they never move the scene's objects)."""
    col = _Colours(rng, c.color_jitter)
    weather = WEATHERS[int(rng.integers(len(WEATHERS)))] if c.weather == "random" else c.weather
    time = TIMES_OF_DAY[int(rng.integers(len(TIMES_OF_DAY)))] if c.time_of_day == "random" else c.time_of_day
    sky = look.sky[time]
    if look.overcast and rng.random() < look.overcast:
        sky = look.overcast_sky[time]
    return {
        "weather": weather,
        "intensity": _f(c.weather_intensity),
        "time_of_day": time,
        "sky_top": col.jitter(sky[0]), "sky_horizon": col.jitter(sky[1], 0.5 * c.color_jitter),
        "sun": _f(rng.uniform(*look.sun)),
        "wind": _f(rng.normal(0.0, 0.25)),  # slant of rain streaks, radians
        "particle_seed": int(rng.integers(0, 2**31 - 1)),
    }


MIN_SIDE = 16  # pixels
MAX_PORTRAIT = 2  # height / width at most: taller frames would see behind the camera at wide fov


def _whole(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def frame_fields(size: int | None, width: int | None, height: int | None) -> dict[str, int]:
    """The description's frame keys: {"size": n} for a square frame (as before there were
    other shapes, so square descriptions and their bytes stay what they were), else
    {"width": w, "height": h}. Errors name the argument and its value."""
    if size is not None and (width is not None or height is not None):
        raise ValueError(f"give size (a square frame) or width and height, not both: size {size}, "
                         f"width {width}, height {height}")
    if size is None:
        if width is None or height is None:
            missing = "height" if width is not None else "width" if height is not None else "size"
            raise ValueError(f"street frames need size, or width and height: {missing} is missing")
        for name, value in (("width", width), ("height", height)):
            if not _whole(value) or value < MIN_SIDE:
                raise ValueError(f"street frames need {name} >= {MIN_SIDE} pixels, got {name} {value!r}")
        if height > MAX_PORTRAIT * width:
            raise ValueError(f"street frames may be at most {MAX_PORTRAIT}× as high as wide, "
                             f"got width {width}, height {height}")
        if width != height:
            return {"width": int(width), "height": int(height)}
        size = width
    if not _whole(size) or size < MIN_SIDE:
        raise ValueError(f"street frames need size >= {MIN_SIDE} pixels, got size {size!r}")
    return {"size": int(size)}


def describe_scene(seed: int, controls: StreetControls, size: int | None = None, *, width: int | None = None,
                   height: int | None = None) -> dict[str, Any]:
    """One frame's scene: road, camera, buildings, objects with instance ids, conditions.

    The frame is `size` × `size` pixels, or `width` × `height`. The scene itself does not
    depend on the frame: a seed puts the same objects in the world at every frame shape,
    and the camera's horizontal field of view (`controls.fov`) spans the width.
    """
    frame = frame_fields(size, width, height)
    look = LOOKS[controls.style]
    scene_rng, camera_rng, cond_rng = np.random.default_rng(seed).spawn(3)
    col = _Colours(scene_rng, controls.color_jitter)
    road = _road(scene_rng, controls, col, look)
    buildings = _buildings(scene_rng, controls, col, look)
    cam_lane = int(scene_rng.integers(road["lanes"] // 2, road["lanes"]))
    objects = _cars(scene_rng, controls, col, road, cam_lane, look)
    objects += _people(scene_rng, controls, col, road, look)
    objects += _street_furniture(scene_rng, controls, col, road, look)
    if controls.parked_cars[1] > 0:
        objects += _parked_cars(scene_rng, controls, col, road, cam_lane, objects, look)
    for i, obj in enumerate(objects, start=1):
        obj["instance"] = i
    camera = _camera(camera_rng, controls, road, cam_lane)
    # Only a non-default style is recorded (for reading; render needs nothing but the scene).
    style = {} if controls.style == "default" else {"style": controls.style}
    return {
        "family": "street",
        "version": DESCRIPTION_VERSION,
        "seed": int(seed),
        **frame,
        "label": None,
        **style,
        "texture": bool(controls.texture),
        "texture_seed": int(scene_rng.integers(0, 2**31 - 1)),
        "camera": camera,
        "road": road,
        "buildings": buildings,
        "objects": objects,
        "conditions": _conditions(cond_rng, controls, look),
    }
