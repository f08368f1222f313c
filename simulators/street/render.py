"""Paint a street description into image, class mask, instance ids, depth and boxes.

The static world (sky, road, sidewalks, building facades) is ray-cast per pixel: with a
pinhole camera over a ground plane, the ground's depth depends on the row only and each
facade is a vertical plane x = const, so both have closed forms that numpy evaluates for
the whole frame at once. The static world is written as one palette index and one
brightness per pixel (a palette entry per sky row, per road-marking coverage level, per
building and window-coverage level), then turned into colour with a single gather.
Objects (cars, people, street furniture) are then projected polygons drawn back to front
with a depth buffer (shapes.py); lighting and weather only touch pixels (conditions.py),
never the labels. No randomness beyond RNGs seeded from numbers stored in the description.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from augment.sample import Box
from simulators.base import Frame
from simulators.street.conditions import apply_conditions, lighting
from simulators.street.shapes import BOXED_CLASSES, Canvas, draw_objects

SKY, BUILDING, ROAD, SIDEWALK = 0, 1, 3, 4
DEPTH_MAX_MM = 65534  # farther surfaces saturate here; 65535 is reserved for sky
LUT_START = -10  # the building lookup table starts 10 m behind the camera
LEVELS = 16  # coverage levels of anti-aliased road markings and fading windows (palette steps)
LIT_COLOURS = np.array([[255, 200, 120], [255, 214, 150], [250, 180, 100], [255, 232, 185], [215, 225, 255],
                        [255, 190, 135], [240, 238, 225], [190, 205, 255]], np.float32)  # of lit windows


class Camera:
    """Pinhole camera at (x, height, 0), pitched up by `pitch` and turned right by `yaw`.

    The frame is `width` × `height` pixels with square pixels and the principal point at
    its centre, so one focal length serves both axes: a landscape frame sees wider than it
    sees high, and nothing is stretched. Pixel coordinates are continuous: pixel (r, c)
    covers [c, c+1) × [r, r+1).
    """

    def __init__(self, width: int, height_px: int, x: float, height: float, pitch: float, yaw: float,
                 focal: float) -> None:
        self.width, self.height_px, self.x, self.height = width, height_px, x, height  # pixels, pixels, m, m
        self.pitch, self.yaw, self.focal = pitch, yaw, focal  # radians, radians, pixels
        self.short_side = min(width, height_px)
        sp, cp, sy, cy = np.sin(pitch), np.cos(pitch), np.sin(yaw), np.cos(yaw)
        # Rows: the world directions of the camera's right, up and forward axes.
        self.rotation = np.array([[cy, 0.0, -sy], [-sy * sp, cp, -cy * sp], [sy * cp, sp, cy * cp]])
        self.rot_t = np.ascontiguousarray(self.rotation.T)
        # The same with the up axis negated: its product gives (right, -up, forward), image rows
        # grow downwards. Negation is exact, so this is bit for bit `-(c_up)` of rot_t's product.
        self.rot_t_down = self.rot_t * np.array([1.0, -1.0, 1.0])
        self.origin = np.array([x, height, 0.0])
        self.centre = np.array([width / 2.0, height_px / 2.0])

    @classmethod
    def from_description(cls, cam: dict[str, Any], width: int, height_px: int) -> Camera:
        """`fov` is the horizontal field of view; the vertical one follows from the aspect."""
        focal = (width / 2.0) / np.tan(np.radians(float(cam["fov"])) / 2.0)
        return cls(width, height_px, float(cam["x"]), float(cam["height"]), float(np.radians(float(cam["pitch"]))),
                   float(np.radians(float(cam["yaw"]))), float(focal))

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """World points (N, 3) → pixel coordinates (N, 2) and camera depth (N,) in metres."""
        c = (points - self.origin) @ self.rot_t_down
        depth = c[:, 2]
        scale = self.focal / np.maximum(depth, 1e-3)
        uv = c[:, :2] * scale[:, None]
        uv += self.centre
        return uv, depth

    def rays(self, step: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-pixel ray directions scaled to unit forward component: dy (H,), dx, dz (H, W).

        Scaling by the forward component makes the ray parameter t equal camera depth.
        `step` > 1 samples every step-th pixel (centres of step × step blocks).
        """
        half = np.float32(step / 2 if step > 1 else 0.5)
        cols = np.arange(0, self.width, step, dtype=np.float32) + half
        rows = np.arange(0, self.height_px, step, dtype=np.float32) + half
        a = (cols - np.float32(self.width / 2.0)) * np.float32(1 / self.focal)  # right, per column
        b = (np.float32(self.height_px / 2.0) - rows) * np.float32(1 / self.focal)  # up, per row
        sp, cp = np.float32(np.sin(self.pitch)), np.float32(np.cos(self.pitch))
        sy, cy = np.float32(np.sin(self.yaw)), np.float32(np.cos(self.yaw))
        dy = b * cp + sp
        dx = np.add.outer(sy * cp - b * sy * sp, a * cy)
        dz = np.add.outer(cy * cp - b * cy * sp, -a * sy)
        return dy, dx, dz


def frame_shape(desc: dict[str, Any]) -> tuple[int, int]:
    """(height, width) of a description's frame: `size` for a square one, else both given."""
    if "width" in desc:
        return int(desc["height"]), int(desc["width"])
    return int(desc["size"]), int(desc["size"])


def _noise_tile(seed: int) -> np.ndarray:
    """A 64×64 smooth noise tile in [-0.5, 0.5] sampled by world coordinates (road, walls), flat."""
    tile = np.random.default_rng(seed).random((64, 64), dtype=np.float32) - 0.5
    return (cv2.GaussianBlur(tile, (3, 3), 0, borderType=cv2.BORDER_REFLECT) * 1.6).ravel()


def _tex(tex: np.ndarray, u: np.ndarray, v: np.ndarray, scale: float, out: np.ndarray, i: np.ndarray,
         j: np.ndarray) -> np.ndarray:
    """Noise at world coordinates (u, v) · scale tile cells (the tile repeats) into `out`.

    `i` and `j` are int32 work arrays of the same shape.
    """
    np.multiply(u, np.float32(scale), out=out)
    np.copyto(i, out, casting="unsafe")
    i &= 63
    i <<= 6
    np.multiply(v, np.float32(scale), out=out)
    np.copyto(j, out, casting="unsafe")
    j &= 63
    i |= j
    return np.take(tex, i, out=out)


def _building_tables(buildings: list[dict[str, Any]]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A per-metre lookup (side, z) → building index, and per-building parameter arrays."""
    rows = np.array([(b["side"], b["z0"], b["z1"], b["height"], b["window_spacing"], b["floor_height"],
                      b["window_size"][0], b["window_size"][1], b["lit_fraction"]) for b in buildings], np.float64)
    side, z0, z1, height, spacing, floor, ww, wh, lit = rows.T
    length = int(z1.max()) - LUT_START
    lut = np.zeros((2, length), np.int32)  # row 0: left side, row 1: right side
    for i, (s, a, b) in enumerate(zip(side.tolist(), z0.tolist(), z1.tolist())):
        lut[0 if s < 0 else 1, int(a) - LUT_START:int(b) - LUT_START] = i
    f32 = np.float32
    cols = {
        "right": (side > 0),
        "height": height.astype(f32),
        "z0": z0.astype(f32),
        "z1": z1.astype(f32),
        "color": np.array([b["color"] for b in buildings], f32),
        "window_color": np.array([b["window_color"] for b in buildings], f32),
        "inv_spacing": (1.0 / spacing).astype(f32),
        "inv_floor": (1.0 / floor).astype(f32),
        "win_w": (ww / 2).astype(f32),
        "win_top": (0.3 + wh).astype(f32),
        "lit": (lit * 1024).astype(np.uint32),  # of 1024
        "key": np.array([b["lit_key"] for b in buildings], np.uint32),
    }
    return lut, cols


class _Background:
    """Palette index and brightness per pixel of the static world, and its palette parts."""

    def __init__(self, canvas: Canvas) -> None:
        self.ids = canvas.buffers["ids"]
        self.shade = canvas.buffers["shade"]
        self.shade.fill(1.0)
        self.parts: list[np.ndarray] = []  # palette pieces, in id order
        self.next_id = 0

    def reserve(self, colours: np.ndarray) -> int:
        """Append palette entries (K, 3); return the id of the first."""
        base = self.next_id
        self.parts.append(colours.reshape(-1, 3).astype(np.float32, copy=False))
        self.next_id += len(self.parts[-1])
        return base


def _blend_levels(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(..., LEVELS + 1, 3): colour a blended towards b in LEVELS equal steps."""
    w = np.linspace(0.0, 1.0, LEVELS + 1, dtype=np.float32)[:, None]
    return a[..., None, :] * (1 - w) + b[..., None, :] * w


def _facades(desc: dict[str, Any], cam: Camera, canvas: Canvas, bg: _Background, dy: np.ndarray,
             dx: np.ndarray, dz: np.ndarray, tex: np.ndarray | None, light: np.ndarray) -> None:
    """Building facades: the planes x = ±(road half width + sidewalk), heights per building.

    A facade hit above the ground is nearer than the ground along that ray, so facades
    simply overwrite the ground painted before them.
    """
    road = desc["road"]
    x_left = np.float32(-(road["half_width"] + road["sidewalk"][0]) - cam.x)
    x_right = np.float32(road["half_width"] + road["sidewalk"][1] - cam.x)
    lut, b = _building_tables(desc["buildings"])
    length = lut.shape[1]
    # 1. Ray parameter (= camera depth) where each pixel's ray meets its side's plane: the
    # plane on the side the ray turns to is the one with positive t. Full-frame arrays
    # live in the per-thread work buffers (see shapes.scratch).
    buf = canvas.buffers
    t, y, z, tmp, zi, hit, tmpb = (buf[k] for k in ("f0", "f1", "f2", "tmp1", "ids2", "b0", "b1"))
    with np.errstate(divide="ignore", invalid="ignore"):
        np.multiply(dx, np.float32(1 / x_right), out=t)
        np.multiply(dx, np.float32(1 / x_left), out=tmp)
        np.maximum(t, tmp, out=t)
        np.reciprocal(t, out=t)
    np.multiply(t, dy[:, None], out=y)
    y += np.float32(cam.height)
    np.multiply(t, dz, out=z)
    np.minimum(z, np.float32(length + LUT_START - 1), out=z)
    np.maximum(z, np.float32(LUT_START), out=z)
    np.copyto(zi, z, casting="unsafe")  # truncation = floor: z >= LUT_START here
    np.greater(dx, 0, out=hit)
    np.add(zi, np.int32(-LUT_START), out=zi)
    np.add(zi, np.int32(length), out=zi, where=hit)
    idx = zi
    np.take(lut, zi, out=idx)
    np.take(b["height"], idx, out=tmp)
    np.less(y, tmp, out=hit)
    np.greater_equal(y, 0, out=tmpb)
    hit &= tmpb
    # 2. Select facade pixels once; everything after works on these 1-D arrays.
    flat = np.flatnonzero(hit)
    ys, zs, ts, bi = np.take(y, flat), np.take(z, flat), np.take(t, flat), np.take(idx, flat)
    hb = np.take(b["height"], bi)
    shade = np.where(np.take(b["right"], bi), np.float32(1.0), np.float32(0.82))  # sun from the right
    shade[ys > hb - 0.4] *= np.float32(0.7)  # cornice
    level = None
    if desc["texture"]:
        # 3. Window grid in facade coordinates (distance along the street, height).
        lz = zs - np.take(b["z0"], bi)
        qx = lz * np.take(b["inv_spacing"], bi)
        qy = ys * np.take(b["inv_floor"], bi)
        fx, fy = qx - np.floor(qx), qy - np.floor(qy)
        ax = np.abs(fx - 0.5)
        win_w = np.take(b["win_w"], bi)
        win = ax < win_w
        win &= fy > 0.3
        win &= fy < np.take(b["win_top"], bi)
        win &= ys > 0.8
        win &= ys < hb - 0.8
        win &= lz > 1.0
        win &= np.take(b["z1"], bi) - zs > 1.0
        fade = (220.0 - ts) * np.float32(1 / 120)  # far windows alias: fade out
        np.clip(fade, 0.0, 1.0, out=fade)
        level = np.rint(win * fade * LEVELS).astype(np.int32)
        noise = _tex(tex, ys, zs, 3.0, np.empty_like(ys), np.empty(ys.shape, np.int32),
                     np.empty(ys.shape, np.int32))
        noise *= np.float32(0.25)
        noise += np.float32(1.0)
        shade *= noise
        on = float(desc["conditions"].get("lights", 0.0))
        if on > 0.0:
            _lit_windows(canvas, b, flat, bi, win, qx, qy, ax, win_w, fy, fade, on)
    # 4. Palette: per building, wall colour blended towards window colour in LEVELS steps.
    pal = _blend_levels(b["color"], b["window_color"]) * light
    ids = bg.reserve(pal) + bi * (LEVELS + 1)
    if level is not None:
        ids += level
    bg.ids.ravel()[flat] = ids
    bg.shade.ravel()[flat] = shade
    canvas.mask.ravel()[flat] = BUILDING
    canvas.depth_bg.ravel()[flat] = ts


def _lit_windows(canvas: Canvas, b: dict[str, np.ndarray], flat: np.ndarray, bi: np.ndarray, win: np.ndarray,
                 qx: np.ndarray, qy: np.ndarray, ax: np.ndarray, win_w: np.ndarray, fy: np.ndarray,
                 fade: np.ndarray, on: float) -> None:
    """Lit windows as light sources: a hash of (column, floor, building) against its lit fraction.

    Each lit window gets its own colour and brightness, a lit pane smaller than the
    window (a drawn blind, a dark frame) and a glow that falls off towards its edges.
    """
    sel = np.flatnonzero(win)
    if sel.size == 0:
        return
    bs = bi[sel]
    with np.errstate(over="ignore"):
        h = ((qx[sel].astype(np.int32).view(np.uint32) * np.uint32(73856093))
             ^ (qy[sel].astype(np.int32).view(np.uint32) * np.uint32(19349663))
             ^ np.take(b["key"], bs)) * np.uint32(2654435761)
    lit = (h >> np.uint32(22)) < np.take(b["lit"], bs)
    ex = ax[sel] / win_w[sel]  # 0 at the window's centre line, 1 at its edges
    blind = (h >> np.uint32(8)) & np.uint32(3)  # 0: open, else the pane top lowered by a blind
    lit &= (fy[sel] - 0.3) < (np.take(b["win_top"], bs) - 0.3) * (1.0 - 0.25 * blind.astype(np.float32))
    lit &= ex < 0.92  # a dark frame
    if not lit.any():
        return
    k = np.flatnonzero(lit)
    hk = h[k]
    colour = np.take(LIT_COLOURS, (hk >> np.uint32(4)) & np.uint32(7), axis=0)
    bright = (0.35 + 0.5 * ((hk >> np.uint32(12)) & np.uint32(255)).astype(np.float32) / 255)
    bright *= 1.0 - 0.45 * ex[k] * ex[k]
    bright *= fade[sel[k]] * np.float32(0.8 * on)
    canvas.emit = (flat[sel[k]], colour * bright[:, None])


def _ground(desc: dict[str, Any], cam: Camera, canvas: Canvas, bg: _Background, dy: np.ndarray,
            dx: np.ndarray, dz: np.ndarray, tex: np.ndarray | None, light: np.ndarray) -> None:
    """Road (lanes, markings, crossing) and sidewalks: every pixel whose ray goes down."""
    road = desc["road"]
    road_c, side_c, mark_c = (np.array(road[k], np.float32) for k in ("road_color", "sidewalk_color",
                                                                        "marking_color"))
    base = bg.reserve(np.concatenate([_blend_levels(road_c, mark_c), _blend_levels(side_c, mark_c)]) * light)
    below = np.flatnonzero(dy < 0)
    if below.size == 0:
        return
    r0 = int(below[0])
    half, lw, lanes = road["half_width"], road["lane_width"], road["lanes"]
    buf = canvas.buffers  # full-frame work buffers (see shapes.scratch); rows r0: are the ground
    x, z, f, g, h = (buf[k][r0:] for k in ("f0", "f1", "f2", "f3", "tmp1"))
    off_road, m, m2 = (buf[k][r0:] for k in ("b0", "b1", "b2"))
    ids, shade = bg.ids[r0:], bg.shade[r0:]
    t = (np.float32(cam.height) / -dy[r0:])[:, None]
    np.multiply(t, dx[r0:], out=x)
    x += np.float32(cam.x)
    np.multiply(t, dz[r0:], out=z)
    np.abs(x, out=f)
    np.greater_equal(f, np.float32(half), out=off_road)
    # 1. Brightness: kerb stones lighter, noise texture.
    np.less(f, np.float32(half + 0.25), out=m)
    m &= off_road
    np.add(shade, np.float32(0.15), out=shade, where=m)
    np.multiply(off_road, np.int32(LEVELS + 1), out=ids)
    ids += np.int32(base)
    if desc["texture"]:
        _tex(tex, x, z, 8.0, h, buf["ids2"][r0:], buf["ids3"][r0:])
        h *= np.float32(0.14)
        shade += h
        # 2. Lane markings, anti-aliased by the pixel's footprint on the ground.
        np.add(x, np.float32(half), out=f)
        f *= np.float32(1 / lw)  # position in lanes
        np.rint(f, out=g)  # nearest lane line
        f -= g
        np.abs(f, out=f)
        f *= np.float32(lw)  # distance to it, metres
        np.less_equal(g, 0, out=m)  # solid lines: the edges and the centre line
        np.greater_equal(g, lanes, out=m2)
        m |= m2
        if lanes > 1:
            np.equal(g, lanes // 2, out=m2)
            m |= m2
        np.multiply(z, np.float32(1 / 9.0), out=g)
        np.floor(g, out=h)
        g -= h
        np.less(g, np.float32(3.5 / 9.0), out=m2)  # the dashes: 3.5 m of every 9 m
        m |= m2
        np.subtract(np.float32(0.08), f, out=f)
        f *= np.float32(cam.focal) / t
        f += np.float32(0.5)
        np.clip(f, 0.0, 1.0, out=f)  # coverage of the pixel's footprint
        np.logical_not(off_road, out=m2)
        m &= m2
        f *= m
        if road["crosswalk_z"] is not None:
            np.subtract(z, np.float32(road["crosswalk_z"]), out=g)
            np.abs(g, out=g)
            np.less(g, np.float32(2.0), out=m)
            np.remainder(x, np.float32(1.2), out=g)
            np.less(g, np.float32(0.6), out=m2)
            m &= m2
            m &= ~off_road
            np.maximum(f, m, out=f)
        f *= np.float32(LEVELS)
        np.rint(f, out=f)
        level = buf["ids2"][r0:]
        np.copyto(level, f, casting="unsafe")
        ids += level
    canvas.mask[r0:] = off_road
    canvas.mask[r0:] += np.uint16(ROAD)
    canvas.depth_bg[r0:] = t


def _sky(desc: dict[str, Any], bg: _Background, dy: np.ndarray) -> None:
    """Sky gradient from the horizon colour up to the zenith colour, by elevation (own light)."""
    cond = desc["conditions"]
    g = np.clip(dy * 1.6, 0.0, 1.0)[:, None]
    top, hor = np.array(cond["sky_top"], np.float32), np.array(cond["sky_horizon"], np.float32)
    rows = int(np.count_nonzero(dy >= 0))  # the ground paints every row below the horizon
    base = bg.reserve(hor[None] + (top - hor) * g[:max(rows, 1)])
    bg.ids[:rows] = (np.arange(rows, dtype=np.int32) + base)[:, None]


def _boxes(canvas: Canvas, extents: dict[int, tuple[int, int, int, int, int]]) -> list[Box]:
    """One tight box per visible boxed instance, from its pixels after occlusion."""
    boxes = []
    for inst, (x0, y0, x1, y1, cls) in sorted(extents.items()):
        patch = canvas.instances[y0:y1, x0:x1] == inst
        cols = np.flatnonzero(patch.any(axis=0))
        if cols.size == 0:
            continue
        rows = np.flatnonzero(patch.any(axis=1))
        boxes.append(Box(float(x0 + cols[0]), float(y0 + rows[0]), float(cols[-1] - cols[0] + 1),
                         float(rows[-1] - rows[0] + 1), int(cls)))
    return boxes


def render_scene(desc: dict[str, Any]) -> Frame:
    """Render every layer of a street description; same description → same bytes."""
    rows, cols = frame_shape(desc)
    cam = Camera.from_description(desc["camera"], cols, rows)
    cond = {**desc["conditions"]}
    light = lighting(cond)
    cond["lights"] = light["on"]
    canvas = Canvas(rows, cols, light["objects"])
    tex = _noise_tile(int(desc["texture_seed"])) if desc["texture"] else None
    # 1. Static world: sky, ground below the horizon, facades over both where they stand,
    # as palette ids and brightness, then coloured with one gather.
    dy, dx, dz = cam.rays()
    bg = _Background(canvas)
    _sky(desc, bg, dy)
    _ground(desc, cam, canvas, bg, dy, dx, dz, tex, light["ground"])
    _facades({**desc, "conditions": cond}, cam, canvas, bg, dy, dx, dz, tex, light["facades"])
    palette = np.concatenate(bg.parts)
    color = canvas.color
    np.take(palette, bg.ids.ravel(), axis=0, out=color.reshape(-1, 3))
    cv2.multiply(color, cv2.merge([bg.shade, bg.shade, bg.shade], dst=canvas.buffers["tmp3"]), dst=color)
    # 2. Objects back to front with a depth buffer; lights that stay visible are returned.
    extents, lights = draw_objects(desc, cam, canvas)
    # 3. Boxes from the instance layer (after all occlusion).
    boxes = _boxes(canvas, {i: e for i, e in extents.items() if e[4] in BOXED_CLASSES})
    # 4. Depth: objects where drawn, else background; sky is infinitely far.
    depth_m = np.minimum(canvas.depth_bg, canvas.zbuf)
    sky = np.isinf(depth_m)
    depth = depth_m * np.float32(1000.0)
    np.minimum(depth, np.float32(DEPTH_MAX_MM), out=depth)
    depth = np.rint(depth).astype(np.uint16)
    depth += sky
    # 5. Lighting and weather act on pixels only.
    image = apply_conditions(canvas, depth_m, sky, lights, cond, cam, desc, light)
    return Frame(image=image, mask=canvas.mask, instances=canvas.instances, depth=depth,
                 boxes=boxes, label=None, depth_units="mm")
