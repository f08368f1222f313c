"""Paint a street description into image, class mask, instance ids, depth and boxes.

The static world (sky, road, sidewalks, building facades) is ray-cast per pixel: with a
pinhole camera over a ground plane, the ground's depth depends on the row only and each
facade is a vertical plane x = const, so both have closed forms that numpy evaluates for
the whole frame at once. Objects (cars, people, street furniture) are then projected
polygons drawn back to front with a depth buffer (shapes.py); lighting and weather only
touch pixels (conditions.py), never the labels. No randomness beyond RNGs seeded from
numbers stored in the description.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from augment.sample import Box
from simulators.base import Frame
from simulators.street.conditions import ambient_light, apply_conditions
from simulators.street.shapes import BOXED_CLASSES, Canvas, draw_objects

SKY, BUILDING, ROAD, SIDEWALK = 0, 1, 3, 4
DEPTH_MAX_MM = 65534  # farther surfaces saturate here; 65535 is reserved for sky
LUT_START = -10  # the building lookup table starts 10 m behind the camera


class Camera:
    """Pinhole camera at (x, height, 0), pitched up by `pitch` and turned right by `yaw`.

    Pixel coordinates are continuous: pixel (r, c) covers [c, c+1) × [r, r+1).
    """

    def __init__(self, size: int, x: float, height: float, pitch: float, yaw: float, focal: float) -> None:
        self.size, self.x, self.height = size, x, height
        self.pitch, self.yaw, self.focal = pitch, yaw, focal  # radians, radians, pixels
        sp, cp, sy, cy = np.sin(pitch), np.cos(pitch), np.sin(yaw), np.cos(yaw)
        # Rows: the world directions of the camera's right, up and forward axes.
        self.rotation = np.array([[cy, 0.0, -sy], [-sy * sp, cp, -cy * sp], [sy * cp, sp, cy * cp]])
        self.origin = np.array([x, height, 0.0])

    @classmethod
    def from_description(cls, cam: dict[str, Any], size: int) -> Camera:
        focal = (size / 2.0) / np.tan(np.radians(float(cam["fov"])) / 2.0)
        return cls(size, float(cam["x"]), float(cam["height"]), float(np.radians(float(cam["pitch"]))),
                   float(np.radians(float(cam["yaw"]))), float(focal))

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """World points (N, 3) → pixel coordinates (N, 2) and camera depth (N,) in metres."""
        c = (points - self.origin) @ self.rotation.T
        depth = c[:, 2]
        scale = self.focal / np.maximum(depth, 1e-3)
        uv = c[:, :2] * scale[:, None]
        uv[:, 1] *= -1.0
        uv += self.size / 2.0
        return uv, depth

    def rays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-pixel ray directions scaled to unit forward component: dy (H,), dx, dz (H, W).

        Scaling by the forward component makes the ray parameter t equal camera depth.
        """
        n, c = self.size, self.size / 2.0
        a = ((np.arange(n, dtype=np.float32) + 0.5 - c) / self.focal)  # right, per column
        b = ((c - np.arange(n, dtype=np.float32) - 0.5) / self.focal)  # up, per row
        sp, cp, sy, cy = (np.float32(f(v)) for f, v in ((np.sin, self.pitch), (np.cos, self.pitch),
                                                         (np.sin, self.yaw), (np.cos, self.yaw)))
        dy = b * cp + sp
        dx = (a * cy)[None, :] + (sy * cp - b * sy * sp)[:, None]
        dz = (-a * sy)[None, :] + (cy * cp - b * cy * sp)[:, None]
        return dy, dx, dz


def _noise_tile(seed: int) -> np.ndarray:
    """A 64×64 smooth noise tile in [-0.5, 0.5] sampled by world coordinates (road, walls)."""
    tile = np.random.default_rng(seed).random((64, 64), dtype=np.float32) - 0.5
    return cv2.GaussianBlur(tile, (3, 3), 0, borderType=cv2.BORDER_REFLECT) * 1.6


def _building_tables(buildings: list[dict[str, Any]]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A per-metre lookup (side, z) → building index, and per-building parameter arrays."""
    length = int(max(b["z1"] for b in buildings)) - LUT_START
    lut = np.zeros((2, length), np.int32)  # row 0: left side, row 1: right side
    for i, b in enumerate(buildings):
        side = 0 if b["side"] < 0 else 1
        lut[side, int(b["z0"]) - LUT_START:int(b["z1"]) - LUT_START] = i
    cols = {
        "height": np.array([b["height"] for b in buildings], np.float32),
        "z0": np.array([b["z0"] for b in buildings], np.float32),
        "z1": np.array([b["z1"] for b in buildings], np.float32),
        "color": np.array([b["color"] for b in buildings], np.float32),
        "window_color": np.array([b["window_color"] for b in buildings], np.float32),
        "inv_spacing": np.array([1.0 / b["window_spacing"] for b in buildings], np.float32),
        "inv_floor": np.array([1.0 / b["floor_height"] for b in buildings], np.float32),
        "win_w": np.array([b["window_size"][0] / 2 for b in buildings], np.float32),
        "win_top": np.array([0.3 + b["window_size"][1] for b in buildings], np.float32),
        "lit": np.array([int(b["lit_fraction"] * 1024) for b in buildings], np.uint32),  # of 1024
        "key": np.array([b["lit_key"] for b in buildings], np.uint32),
    }
    return lut, cols


def _facades(desc: dict[str, Any], cam: Camera, canvas: Canvas, dy: np.ndarray, dx: np.ndarray,
             dz: np.ndarray, tex: np.ndarray | None) -> None:
    """Building facades: the planes x = ±(road half width + sidewalk), heights per building.

    A facade hit above the ground is nearer than the ground along that ray, so facades
    simply overwrite the ground painted before them.
    """
    road = desc["road"]
    x_left = np.float32(-(road["half_width"] + road["sidewalk"][0]) - cam.x)
    x_right = np.float32(road["half_width"] + road["sidewalk"][1] - cam.x)
    lut, b = _building_tables(desc["buildings"])
    length = lut.shape[1]
    right = dx > 0
    # 1. Ray parameter (= camera depth) where each pixel's ray meets its side's plane.
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(right, x_right, x_left) / dx
    y = t * dy[:, None]
    y += np.float32(cam.height)
    z = t * dz
    zi = np.clip(z, LUT_START, length + LUT_START - 1).astype(np.int32)
    zi += right * np.int32(length) - LUT_START
    idx = lut.ravel()[zi]
    hit = (y >= 0) & (y < b["height"][idx])
    # 2. Select facade pixels once; everything after works on these 1-D arrays.
    flat = np.flatnonzero(hit)
    ys, zs, ts, bi = y.ravel()[flat], z.ravel()[flat], t.ravel()[flat], idx.ravel()[flat]
    shade = np.where(right.ravel()[flat], np.float32(1.0), np.float32(0.82))  # sun from the right
    shade[ys > b["height"][bi] - 0.4] *= np.float32(0.7)  # cornice
    wall, glass = shade, None
    if desc["texture"]:
        # 3. Window grid in facade coordinates (distance along the street, height).
        lz = zs - b["z0"][bi]
        qx = lz * b["inv_spacing"][bi]
        qy = ys * b["inv_floor"][bi]
        fx, fy = qx - np.floor(qx), qy - np.floor(qy)
        win = ((np.abs(fx - 0.5) < b["win_w"][bi]) & (fy > 0.3) & (fy < b["win_top"][bi])
               & (ys > 0.8) & (ys < b["height"][bi] - 0.8) & (lz > 1.0) & (b["z1"][bi] - zs > 1.0))
        fade = np.clip((220.0 - ts) * np.float32(1 / 120), 0.0, 1.0)  # far windows alias: fade out
        w = win * fade
        shade = shade * (1.0 + 0.25 * tex[(ys * 3).astype(np.int32) & 63, (zs * 3).astype(np.int32) & 63])
        wall, glass = shade * (1 - w), shade * w
        if desc["conditions"]["time_of_day"] != "day":
            # 4. Lit windows: a hash of (window column, floor, building key) against its lit fraction.
            with np.errstate(over="ignore"):
                h = ((qx.astype(np.int32).view(np.uint32) * np.uint32(73856093))
                     ^ (qy.astype(np.int32).view(np.uint32) * np.uint32(19349663))
                     ^ b["key"][bi]) * np.uint32(2654435761)
            lit = win & ((h >> np.uint32(22)) < b["lit"][bi])
            canvas.emit = (flat[lit], np.array([255.0, 205.0, 130.0], np.float32) * fade[lit, None])
    colour = b["color"][bi] * wall[:, None]
    if glass is not None:
        colour += b["window_color"][bi] * glass[:, None]
    canvas.color.reshape(-1, 3)[flat] = colour
    canvas.mask.ravel()[flat] = BUILDING
    canvas.depth_bg.ravel()[flat] = ts


def _ground(desc: dict[str, Any], cam: Camera, canvas: Canvas, dy: np.ndarray, dx: np.ndarray,
            dz: np.ndarray, tex: np.ndarray | None) -> None:
    """Road (lanes, markings, crossing) and sidewalks: every pixel whose ray goes down."""
    below = np.flatnonzero(dy < 0)
    if below.size == 0:
        return
    r0 = int(below[0])
    road = desc["road"]
    half, lw, lanes = road["half_width"], road["lane_width"], road["lanes"]
    t = (np.float32(cam.height) / -dy[r0:])[:, None]
    x = t * dx[r0:]
    x += np.float32(cam.x)
    z = t * dz[r0:]
    ax = np.abs(x)
    on_road = ax < half
    # 1. Brightness: kerb stones lighter, noise texture.
    shade = np.ones_like(x)
    shade[(~on_road) & (ax < half + 0.25)] = 1.15
    colour = np.where(on_road[..., None], np.array(road["road_color"], np.float32),
                      np.array(road["sidewalk_color"], np.float32))
    if desc["texture"]:
        shade += 0.14 * tex[(x * 8).astype(np.int32) & 63, (z * 8).astype(np.int32) & 63]
        # 2. Lane markings, anti-aliased by the pixel's footprint on the ground.
        lane_pos = (x + half) * np.float32(1 / lw)
        k = np.rint(lane_pos)
        dist = np.abs(lane_pos - k) * np.float32(lw)
        solid = (k <= 0) | (k >= lanes) | ((k == lanes // 2) & (lanes > 1))  # edges, centre line
        q = z * np.float32(1 / 9.0)
        solid |= (q - np.floor(q)) < np.float32(3.5 / 9.0)  # the dashes: 3.5 m of every 9 m
        cover = np.clip((0.08 - dist) * (np.float32(cam.focal) / t) + 0.5, 0.0, 1.0)
        cover *= solid & on_road
        if road["crosswalk_z"] is not None:
            stripes = (np.abs(z - road["crosswalk_z"]) < 2.0) & ((x % 1.2) < 0.6) & on_road
            np.maximum(cover, stripes, out=cover)
        colour *= (shade * (1 - cover))[..., None]
        colour += np.array(road["marking_color"], np.float32) * cover[..., None]
    else:
        colour *= shade[..., None]
    canvas.color[r0:] = colour
    canvas.mask[r0:] = np.where(on_road, np.uint16(ROAD), np.uint16(SIDEWALK))
    canvas.depth_bg[r0:] = t


def _sky(desc: dict[str, Any], canvas: Canvas, dy: np.ndarray, ambient: np.ndarray) -> None:
    """Sky gradient from the horizon colour up to the zenith colour, by elevation.

    Divided by the ambient light that conditions.py multiplies every pixel by, so the sky
    keeps the colours the description gives it.
    """
    cond = desc["conditions"]
    g = np.clip(dy * 1.6, 0.0, 1.0)[:, None]
    top, hor = np.array(cond["sky_top"], np.float32), np.array(cond["sky_horizon"], np.float32)
    rows = int(np.count_nonzero(dy >= 0))  # the ground paints every row below the horizon
    canvas.color[:rows] = ((hor[None] + (top - hor) * g[:rows]) / ambient)[:, None, :]


def _boxes(canvas: Canvas, extents: dict[int, tuple[int, int, int, int, int]]) -> list[Box]:
    """One tight box per visible boxed instance, from its pixels after occlusion."""
    boxes = []
    for inst, (x0, y0, x1, y1, cls) in sorted(extents.items()):
        patch = canvas.instances[y0:y1, x0:x1] == inst
        cols = np.nonzero(patch.any(axis=0))[0]
        if cols.size == 0:
            continue
        rows = np.nonzero(patch.any(axis=1))[0]
        boxes.append(Box(float(x0 + cols[0]), float(y0 + rows[0]), float(cols[-1] - cols[0] + 1),
                         float(rows[-1] - rows[0] + 1), int(cls)))
    return boxes


def render_scene(desc: dict[str, Any]) -> Frame:
    """Render every layer of a street description; same description → same bytes."""
    size = int(desc["size"])
    cam = Camera.from_description(desc["camera"], size)
    canvas = Canvas(size)
    tex = _noise_tile(int(desc["texture_seed"])) if desc["texture"] else None
    # 1. Static world: sky, ground below the horizon, facades over both where they stand.
    dy, dx, dz = cam.rays()
    _sky(desc, canvas, dy, ambient_light(desc["conditions"]))
    _ground(desc, cam, canvas, dy, dx, dz, tex)
    _facades(desc, cam, canvas, dy, dx, dz, tex)
    # 2. Objects back to front with a depth buffer; lights that stay visible are returned.
    extents, lights = draw_objects(desc, cam, canvas)
    # 3. Boxes from the instance layer (after all occlusion).
    boxes = _boxes(canvas, {i: e for i, e in extents.items() if e[4] in BOXED_CLASSES})
    # 4. Depth: objects where drawn, else background; sky is infinitely far.
    depth_m = np.minimum(canvas.depth_bg, canvas.zbuf)
    # 5. Lighting and weather act on pixels only.
    image = apply_conditions(canvas.color, depth_m, canvas.emit, lights, desc["conditions"], size)
    depth = np.where(np.isinf(depth_m), 65535, np.minimum(np.rint(depth_m * 1000.0), DEPTH_MAX_MM))
    return Frame(image=image, mask=canvas.mask, instances=canvas.instances, depth=depth.astype(np.uint16),
                 boxes=boxes, label=None, depth_units="mm")
