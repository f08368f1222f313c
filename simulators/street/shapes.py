"""Objects of a street scene as projected polygons, drawn back to front with a depth buffer.

Every object is built from world-space polygons (boxes for cars, camera-facing
"billboards" for people, trees, poles and signs, vertical quads for fence pieces),
projected with the camera and rasterised by OpenCV. A part carries one depth, its
nearest vertex's, which is enough to order non-intersecting objects. Labels (class,
instance, depth) come from `fill`; `paint` only colours pixels the object already owns
(windows, lights, wheels), so details never change the labels.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from operator import itemgetter
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

if TYPE_CHECKING:
    from simulators.street.render import Camera

POLE, TREE, SIGN, FENCE, CAR, PEDESTRIAN, BICYCLIST = 2, 5, 6, 7, 8, 9, 10
BOXED_CLASSES = frozenset({SIGN, CAR, PEDESTRIAN, BICYCLIST})
FENCE_PIECE = 2.5  # metres: long fences are split so each piece has a fair single depth
DETAIL = 6.0  # pixels per metre below which objects are drawn without painted details
GLOW_MAX = 0.02  # largest radius of a car light's glow, of the frame's shorter side (near cars must not drown in it)
Light = tuple[float, float, float, tuple[float, float, float]]  # u, v, radius px, colour


_LOCAL = threading.local()


def scratch(height: int, width: int) -> dict[str, np.ndarray]:
    """Work buffers of one frame shape, kept per thread and reused frame after frame.

    Allocating and freeing a few MB of full-frame temporaries per frame makes the C
    allocator hand the pages back to the OS and fault them in again, every frame; the
    layers that are not returned to the caller live here instead.
    """
    cache = getattr(_LOCAL, "buffers", None)
    shape = (height, width)
    if cache is None or cache["shape"] != shape:
        if cache is None:
            # The temporaries of a frame still add up to a few MB, and in a fresh process
            # glibc trims its heap back to the OS after each frame (its trim threshold starts
            # low), so the next frame faults every page in again (~20% of the frame time).
            # glibc raises its mmap and trim thresholds to the size of the largest mmapped block
            # freed so far (as in any process that has handled a large array); freeing one 16 MB
            # block once does that here.
            np.empty(16 << 20, np.uint8)
        cache = {"shape": shape}
        for name in ("color", "tmp3"):
            cache[name] = np.empty((*shape, 3), np.float32)
        for name in ("depth_bg", "zbuf", "shade", "tmp1", "f0", "f1", "f2", "f3"):
            cache[name] = np.empty(shape, np.float32)
        for name in ("ids", "ids2", "ids3"):
            cache[name] = np.empty(shape, np.int32)
        for name in ("b0", "b1", "b2"):
            cache[name] = np.empty(shape, bool)
        _LOCAL.buffers = cache
    return cache


def _bounds(uv: np.ndarray) -> tuple[float, float, float, float]:
    """(min x, min y, max x, max y) of a few pixel points (N, 2): Python's min and max over
    the same floats give the same values as numpy's reductions, at half the cost for N ~ 10."""
    xs, ys = uv.T.tolist()
    return min(xs), min(ys), max(xs), max(ys)


class Canvas:
    """All layers being painted: colour (float RGB), class, instance, depths (metres)."""

    def __init__(self, height: int, width: int, light: np.ndarray | None = None) -> None:
        self.height, self.width = height, width
        self.light = np.ones(3, np.float32) if light is None else np.asarray(light, np.float32)
        self.buffers = scratch(height, width)
        self.color = self.buffers["color"]  # render fills it with the lit background
        self.mask = np.zeros((height, width), np.uint16)
        self.instances = np.zeros((height, width), np.uint16)
        self.depth_bg = self.buffers["depth_bg"]  # sky, road, facades
        self.depth_bg.fill(np.inf)
        self.zbuf = self.buffers["zbuf"]  # objects only
        self.zbuf.fill(np.inf)
        # Light sources (lit windows): flat pixel indices and their RGB, added after lighting.
        self.emit: tuple[np.ndarray, np.ndarray] | None = None
        self.extents: dict[int, tuple[int, int, int, int, int]] = {}
        self._ops: list[tuple] = []  # parts queued by fill / paint, drawn by flush
        self._depth_of: dict[int, float] = {}  # depth of each instance's latest part

    def _raster(self, uv: np.ndarray, thickness: int) -> tuple[int, int, np.ndarray] | None:
        """Polygon (or polyline, thickness > 0) → (x0, y0, local 0/1 patch) clipped to the frame."""
        lx, ly, hx, hy = _bounds(uv)
        x0, y0 = max(int(lx) - thickness - 1, 0), max(int(ly) - thickness - 1, 0)
        x1, y1 = min(int(hx) + thickness + 2, self.width), min(int(hy) + thickness + 2, self.height)
        if x1 <= x0 or y1 <= y0:
            return None
        if min(lx, ly) < -1e6 or max(hx, hy) > 1e6:  # keep cv2's fixed-point coordinates in range
            uv = np.clip(uv, -1e6, 1e6)
        pts = np.rint((uv - (x0 + 0.5, y0 + 0.5)) * 16).astype(np.int32)  # cv2: pixel centres at ints
        local = np.zeros((y1 - y0, x1 - x0), np.uint8)
        if thickness:
            cv2.polylines(local, [pts], False, 1, thickness, cv2.LINE_8, 4)
        else:
            cv2.fillPoly(local, [pts], 1, cv2.LINE_8, 4)
        return x0, y0, local

    def fill(self, uv: np.ndarray, depth: float, cls: int, inst: int, colour: np.ndarray,
             thickness: int = 0) -> None:
        """Label and colour the polygon's pixels where it is nearer than what is there (at `flush`)."""
        self._ops.append((depth, False, uv, cls, inst, colour, thickness))
        self._depth_of[inst] = depth

    def paint(self, uv: np.ndarray, colour: np.ndarray, inst: int, thickness: int = 0) -> None:
        """Colour only (no labels), only where instance `inst` is visible (right after its last fill)."""
        self._ops.append((self._depth_of.get(inst, np.inf), True, uv, 0, inst, colour, thickness))

    def flush(self) -> None:
        """Draw the queued parts far to near (painter's algorithm on the parts' own depths).

        Sorting parts by depth, stable for equal depths, and overwriting gives exactly
        what a depth buffer with a `<=` test gives in queue order, but lets OpenCV draw
        each part straight into the full-frame layers.
        """
        ops, self._ops = sorted(self._ops, key=itemgetter(0), reverse=True), []
        for depth, is_paint, uv, cls, inst, colour, thickness in ops:
            if is_paint:
                self._paint(uv, colour, inst, thickness)
                continue
            lx, ly, hx, hy = _bounds(uv)
            x0, y0 = max(int(lx) - thickness - 1, 0), max(int(ly) - thickness - 1, 0)
            x1, y1 = min(int(hx) + thickness + 2, self.width), min(int(hy) + thickness + 2, self.height)
            if x1 <= x0 or y1 <= y0:
                continue
            if min(lx, ly) < -1e6 or max(hx, hy) > 1e6:  # keep cv2's fixed-point coordinates in range
                uv = np.clip(uv, -1e6, 1e6)
            pts = [np.rint((uv - 0.5) * 16).astype(np.int32)]  # cv2: pixel centres at ints
            rgb = (colour * self.light).tolist()
            if thickness:
                for layer, value in ((self.zbuf, depth), (self.mask, cls), (self.instances, inst), (self.color, rgb)):
                    cv2.polylines(layer, pts, False, value, thickness, cv2.LINE_8, 4)
            else:
                for layer, value in ((self.zbuf, depth), (self.mask, cls), (self.instances, inst), (self.color, rgb)):
                    cv2.fillPoly(layer, pts, value, cv2.LINE_8, 4)
            if inst:
                e = self.extents.get(inst)
                self.extents[inst] = (x0, y0, x1, y1, cls) if e is None else (
                    min(e[0], x0), min(e[1], y0), max(e[2], x1), max(e[3], y1), cls)

    def _paint(self, uv: np.ndarray, colour: np.ndarray, inst: int, thickness: int) -> None:
        r = self._raster(uv, thickness)
        if r is None:
            return
        x0, y0, local = r
        h, w = local.shape
        sel = local.view(bool) & (self.instances[y0:y0 + h, x0:x0 + w] == inst)
        self.color[y0:y0 + h, x0:x0 + w][sel] = colour * self.light


def _hull(uv: np.ndarray) -> np.ndarray:
    return cv2.convexHull(uv.astype(np.float32))[:, 0, :]


def _box(x0: float, x1: float, y0: float, y1: float, z0: float, z1: float) -> np.ndarray:
    return np.array([[x, y, z] for x in (x0, x1) for y in (y0, y1) for z in (z0, z1)])


def _quad_x(x: float, y0: float, y1: float, z0: float, z1: float) -> np.ndarray:
    """A vertical quad in the plane x = const (car sides, fences)."""
    return np.array([[x, y0, z0], [x, y0, z1], [x, y1, z1], [x, y1, z0]])


def _quad_z(z: float, x0: float, x1: float, y0: float, y1: float) -> np.ndarray:
    """A vertical quad in the plane z = const (car faces, billboards)."""
    return np.array([[x0, y0, z], [x1, y0, z], [x1, y1, z], [x0, y1, z]])


def _bar(p0: tuple[float, float], p1: tuple[float, float], width: float) -> np.ndarray:
    """A 2-D rectangle of `width` along the segment p0 → p1 (limbs, arms, frames)."""
    a, b = np.array(p0), np.array(p1)
    d = b - a
    nrm = np.array([-d[1], d[0]]) / max(float(np.hypot(*d)), 1e-6) * width / 2
    return np.array([a + nrm, b + nrm, b - nrm, a - nrm])


_UNIT_CIRCLES = {n: np.stack([np.cos(t), np.sin(t)], axis=1)
                 for n in (8, 10, 12, 14, 16) for t in [np.linspace(0.0, 2 * np.pi, n, endpoint=False)]}


def _ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 12) -> np.ndarray:
    return _UNIT_CIRCLES[n] * (rx, ry) + (cx, cy)


def _billboard(cam: Camera, x: float, z: float, pts: np.ndarray) -> np.ndarray:
    """2-D points (dx, y) in metres on the plane z = const through x → pixel coordinates."""
    world = np.empty((len(pts), 3))
    world[:, 0] = pts[:, 0] + x
    world[:, 1] = pts[:, 1]
    world[:, 2] = z
    return cam.project(world)[0]


def _car(cv: Canvas, cam: Camera, o: dict[str, Any], lights: list) -> None:
    x, z, w, h, length, inst = o["x"], o["z"], o["width"], o["height"], o["length"], o["instance"]
    van, away = h > 1.8, o["facing"] == "away"
    hb = h * (0.6 if van else 0.5)
    x0, x1 = x - w / 2, x + w / 2
    body_uv, body_d = cam.project(_box(x0, x1, 0.0, hb, z, z + length))
    if body_d.min() < 0.5:
        return
    if van:
        cb, ct = (0.05, 0.97), (0.1, 0.92) if away else (0.18, 0.97)
    else:
        cb, ct = ((0.2, 0.85), (0.35, 0.7)) if away else ((0.15, 0.8), (0.3, 0.65))
    cab = np.array([[xx, hb, z + f * length] for xx in (x0 + 0.1, x1 - 0.1) for f in cb]
                   + [[xx, h, z + f * length] for xx in (x0 + 0.18, x1 - 0.18) for f in ct])
    cab_uv = cam.project(cab)[0]
    depth = float(body_d.min())
    col = np.array(o["color"], np.float32)
    # 1. Labels: silhouette of body and cabin.
    cv.fill(_hull(body_uv), depth, CAR, inst, col * 0.8)
    cv.fill(_hull(cab_uv), depth, CAR, inst, np.array([45, 55, 65], np.float32))
    lamp = np.array([200, 25, 25] if away else [240, 240, 220], np.float32)
    glow = (255, 60, 40) if away else (255, 245, 210)
    lamps = [(x0 + 0.08, x0 + 0.4), (x1 - 0.4, x1 - 0.08)]
    if cam.focal / depth < DETAIL:  # far: the lights still shine at night
        uv = cam.project(np.array([[(a + b) / 2, 0.73 * hb, z] for a, b in lamps]))[0]
        lights += [(u, v, inst, min(0.4 * cam.focal / depth, GLOW_MAX * cam.short_side), glow) for u, v in uv.tolist()]
        return
    # 2. Paint: roof, side, near face, tyres, lights, plate.
    if cam.height > h:
        cv.paint(cab_uv[4:][[0, 1, 3, 2]], col * 0.9, inst)
    side = x0 if cam.x < x0 else x1 if cam.x > x1 else None
    if side is not None:
        cv.paint(cam.project(_quad_x(side, 0.0, hb, z, z + length))[0], col * 0.62, inst)
        for wz in (z + 0.8, z + length - 0.8):
            wheel = _ellipse(wz, 0.32, 0.33, 0.33, 10)
            cv.paint(cam.project(np.column_stack([np.full(10, side), wheel[:, 1], wheel[:, 0]]))[0],
                     np.array([22, 22, 24], np.float32), inst)
    cv.paint(cam.project(_quad_z(z, x0, x1, 0.0, hb))[0], col, inst)
    cv.paint(cam.project(_quad_z(z, x0 + 0.05, x1 - 0.05, 0.0, 0.22))[0], np.array([25, 25, 28], np.float32), inst)
    cv.paint(cam.project(_quad_z(z, x - 0.26, x + 0.26, 0.3, 0.42))[0], np.array([220, 220, 210], np.float32), inst)
    for lx0, lx1 in lamps:
        uv = cam.project(_quad_z(z, lx0, lx1, 0.62 * hb, 0.85 * hb))[0]
        cv.paint(uv, lamp, inst)
        c = uv.mean(axis=0)
        lights.append((c[0], c[1], inst, min(0.4 * cam.focal / depth, GLOW_MAX * cam.short_side), glow))


def _person(cv: Canvas, cam: Camera, o: dict[str, Any], cls: int, depth: float, z: float,
            seated: bool) -> None:
    """A walking pedestrian, or a rider seated on a bicycle (hips at saddle height)."""
    x, hgt, inst = o["x"], o["height"], o["instance"]
    s = hgt / 1.75
    hip = 0.93 if seated else 0.5 * hgt
    top = hgt
    shoulder = top - 0.3 * s
    spread = 0.08 * s + 0.6 * abs(o.get("stride", 0.0))
    shirt, pants, skin = (np.array(o[k], np.float32) for k in ("shirt", "pants", "skin"))
    if cam.focal / depth < DETAIL / 2:  # far: a body and a head
        body = np.array([[-0.15 * s, 0.0], [0.15 * s, 0.0], [0.2 * s, shoulder], [-0.2 * s, shoulder]])
        cv.fill(_billboard(cam, x, z, body), depth, cls, inst, shirt)
        cv.fill(_billboard(cam, x, z, _ellipse(0.0, top - 0.13 * s, 0.1 * s, 0.12 * s, 8)), depth, cls, inst, skin)
        return
    feet = (0.45, 0.25) if seated else (0.0, 0.0)
    for sgn, fy in zip((-1, 1), feet):
        cv.fill(_billboard(cam, x, z, _bar((sgn * 0.08 * s, hip), (sgn * (spread if not seated else 0.12), fy),
                                               0.14 * s)), depth, cls, inst, pants)
    torso = np.array([[-0.16 * s, hip], [0.16 * s, hip], [0.21 * s, shoulder], [-0.21 * s, shoulder]])
    cv.fill(_billboard(cam, x, z, torso), depth, cls, inst, shirt)
    hand_y = 0.98 if seated else hip - 0.02
    for sgn in (-1, 1):
        arm = _bar((sgn * 0.2 * s, shoulder - 0.03), (sgn * 0.25 * s, hand_y), 0.09 * s)
        cv.fill(_billboard(cam, x, z, arm), depth, cls, inst, shirt * 0.85)
    head = _ellipse(0.0, top - 0.13 * s, 0.1 * s, 0.12 * s, 10)
    cv.fill(_billboard(cam, x, z, head), depth, cls, inst, skin)
    cv.paint(_billboard(cam, x, z, _ellipse(0.0, top - 0.08 * s, 0.1 * s, 0.07 * s, 8)),
             np.array([40, 30, 25], np.float32), inst)


def _pedestrian(cv: Canvas, cam: Camera, o: dict[str, Any], lights: list) -> None:
    depth = float(cam.project(np.array([[o["x"], 0.0, o["z"]]]))[1][0])
    if depth > 0.5:
        _person(cv, cam, o, PEDESTRIAN, depth, o["z"], seated=False)


def _bicyclist(cv: Canvas, cam: Camera, o: dict[str, Any], lights: list) -> None:
    x, z, inst = o["x"], o["z"], o["instance"]
    depth = float(cam.project(np.array([[x, 0.0, z]]))[1][0])
    if depth < 0.5:
        return
    px = max(1, round(0.05 * cam.focal / depth))
    bike = np.array(o["bike"], np.float32)
    for wz in (z, z + 1.05):
        ring = _ellipse(wz, 0.34, 0.34, 0.34, 12)
        uv = cam.project(np.column_stack([np.full(12, x), ring[:, 1], ring[:, 0]]))[0]
        cv.fill(np.vstack([uv, uv[:1]]), depth, BICYCLIST, inst, np.array([25, 25, 25], np.float32), px)
    frame = np.array([[x, 0.34, z], [x, 0.9, z + 0.3], [x, 0.34, z + 1.05], [x, 1.0, z + 0.95], [x, 0.9, z + 0.3]])
    cv.fill(cam.project(frame)[0], depth, BICYCLIST, inst, bike, px)
    _person(cv, cam, o, BICYCLIST, depth, z + 0.3, seated=True)
    uv = cam.project(np.array([[x, 0.8, z]]))[0][0]
    lights.append((uv[0], uv[1], inst, min(0.25 * cam.focal / depth, GLOW_MAX * cam.short_side), (255, 40, 30)))


def _tree(cv: Canvas, cam: Camera, o: dict[str, Any], lights: list) -> None:
    x, z, r, trunk, inst = o["x"], o["z"], o["radius"], o["trunk"], o["instance"]
    depth = float(cam.project(np.array([[x, 0.0, z]]))[1][0])
    if depth < 0.5:
        return
    col = np.array(o["color"], np.float32)
    stem = np.array([[-0.15, 0.0], [0.15, 0.0], [0.12, trunk + 0.5 * r], [-0.12, trunk + 0.5 * r]])
    cv.fill(_billboard(cam, x, z, stem), depth, TREE, inst, np.array(o["trunk_color"], np.float32))
    cv.fill(_billboard(cam, x, z, _ellipse(0.0, trunk + 0.95 * r, r, 1.1 * r, 14)), depth, TREE, inst, col)
    if o.get("bare"):
        _branches(cv, cam, o, col, depth)
        return
    if cam.focal / depth < DETAIL:
        return
    cv.paint(_billboard(cam, x, z, _ellipse(0.3 * r, trunk + 0.6 * r, 0.75 * r, 0.6 * r, 10)), col * 0.7, inst)
    cv.paint(_billboard(cam, x, z, _ellipse(-0.3 * r, trunk + 1.35 * r, 0.45 * r, 0.4 * r, 10)), col * 1.25, inst)


def _branches(cv: Canvas, cam: Camera, o: dict[str, Any], col: np.ndarray, depth: float) -> None:
    """A leafless crown: the crown's fill is the grey of fine twigs; over it, patches where the
    sky shows through, then dark limbs fanning out from the trunk with twigs at their ends
    (all drawn from an RNG seeded by the description's o["bare"])."""
    x, z, r, trunk, inst = o["x"], o["z"], o["radius"], o["trunk"], o["instance"]
    rng = np.random.default_rng(int(o["bare"]))
    bark = np.array(o["trunk_color"], np.float32)
    cy = trunk + 0.95 * r
    px_per_m = cam.focal / depth
    gaps, limbs = rng.uniform(-1.0, 1.0, (10, 2)), rng.uniform(0.0, 1.0, (9, 2))
    if px_per_m * r >= 6:  # the crown spans a dozen pixels: show its texture
        gap = np.minimum(col * 1.3, 235.0)
        for gx, gy in gaps.tolist():
            if gx * gx + gy * gy < 0.8:
                cv.paint(_billboard(cam, x, z, _ellipse(gx * r, cy + gy * 1.1 * r, 0.16 * r, 0.12 * r, 8)), gap, inst)
    base = (0.0, trunk + 0.4 * r)
    for a, k in limbs.tolist():
        a = np.pi / 2 + 2.4 * (a - 0.5)
        reach = 0.7 + 0.3 * k
        end = (np.cos(a) * r * reach, cy - 0.2 * r + np.sin(a) * 1.1 * r * reach)
        cv.paint(_billboard(cam, x, z, _bar(base, end, max(0.1, 0.8 / px_per_m))), bark, inst)
        if px_per_m < DETAIL:
            continue
        for t in (-0.5, 0.45):
            tip = (end[0] + np.cos(a + t) * 0.4 * r, end[1] + np.sin(a + t) * 0.4 * r)
            cv.paint(_billboard(cam, x, z, _bar(end, tip, max(0.04, 0.6 / px_per_m))), bark * 1.15, inst)


def _pole(cv: Canvas, cam: Camera, o: dict[str, Any], lights: list) -> None:
    x, z, hgt, arm, inst = o["x"], o["z"], o["height"], o["arm"], o["instance"]
    depth = float(cam.project(np.array([[x, 0.0, z]]))[1][0])
    if depth < 0.5:
        return
    col = np.array(o["color"], np.float32)
    d = -1.0 if x > 0 else 1.0  # the arm reaches over the road
    cv.fill(_billboard(cam, x, z, np.array([[-0.09, 0], [0.09, 0], [0.06, hgt], [-0.06, hgt]])), depth, POLE, inst, col)
    cv.fill(_billboard(cam, x, z, _bar((0.0, hgt - 0.3), (d * arm, hgt), 0.09)), depth, POLE, inst, col)
    lamp = np.array([[d * arm - 0.3, hgt - 0.14], [d * arm + 0.3, hgt - 0.14], [d * arm + 0.3, hgt + 0.02],
                     [d * arm - 0.3, hgt + 0.02]])
    cv.fill(_billboard(cam, x, z, lamp), depth, POLE, inst, np.array([230, 225, 200], np.float32))
    c = _billboard(cam, x, z, np.array([[d * arm, hgt - 0.1]]))[0]
    lights.append((c[0], c[1], inst, min(1.0 * cam.focal / depth, 2 * GLOW_MAX * cam.short_side), (255, 220, 160)))


def _board(cv: Canvas, cam: Camera, o: dict[str, Any], depth: float, grey: np.ndarray) -> None:
    """A shop board or banner: a wide panel of one colour with lines of lettering, on a post
    unless it stands on the ground."""
    x, z, post, p, inst = o["x"], o["z"] - 0.03, o["post"], o["panel"], o["instance"]
    top = post + 0.6 * p
    if post > 0.5:
        cv.fill(_billboard(cam, x, z + 0.03, np.array([[-0.05, 0], [0.05, 0], [0.05, top], [-0.05, top]])),
                depth, POLE, 0, grey)
    colour = np.array(o["color"], np.float32)
    cv.fill(_billboard(cam, x, z, np.array([[-p / 2, post], [p / 2, post], [p / 2, top], [-p / 2, top]])),
            depth - 0.03, SIGN, inst, colour)
    if cam.focal / depth < DETAIL / 2:
        return
    ink = np.array([235, 235, 225], np.float32) if colour.mean() < 128 else np.array([30, 30, 35], np.float32)
    for k in (0.2, 0.45):  # two lines of lettering
        y0 = post + (0.6 - k) * p - 0.08 * p
        cv.paint(_billboard(cam, x, z, np.array([[-0.38 * p, y0], [0.38 * p, y0], [0.38 * p, y0 + 0.1 * p],
                                                 [-0.38 * p, y0 + 0.1 * p]])), ink, inst)


def _traffic_light(cv: Canvas, cam: Camera, o: dict[str, Any], depth: float, grey: np.ndarray,
                   lights: list) -> None:
    """A dark housing with three lamps, one of them lit (o["lit"]: 0 red, 1 amber, 2 green)."""
    x, z, post, p, inst = o["x"], o["z"] - 0.03, o["post"], o["panel"], o["instance"]
    w, h = 0.7 * p, 2.2 * p
    cv.fill(_billboard(cam, x, z + 0.03, np.array([[-0.05, 0], [0.05, 0], [0.05, post], [-0.05, post]])),
            depth, POLE, 0, grey)
    cv.fill(_billboard(cam, x, z, np.array([[-w / 2, post], [w / 2, post], [w / 2, post + h], [-w / 2, post + h]])),
            depth - 0.03, SIGN, inst, np.array([38, 40, 38], np.float32))
    lamps = ((200, 30, 25), (230, 150, 20), (40, 200, 90))
    for k, rgb in enumerate(lamps):
        cy = post + h * (0.8 - 0.3 * k)
        on = k == int(o["lit"])
        colour = np.array(rgb, np.float32) if on else np.array([55, 55, 52], np.float32)
        if cam.focal / depth >= DETAIL / 2:
            cv.paint(_billboard(cam, x, z, _ellipse(0.0, cy, 0.3 * w, 0.3 * w, 8)), colour, inst)
        if on:
            c = _billboard(cam, x, z, np.array([[0.0, cy]]))[0]
            lights.append((c[0], c[1], inst, min(0.3 * cam.focal / depth, GLOW_MAX * cam.short_side), rgb))


def _sign(cv: Canvas, cam: Camera, o: dict[str, Any], lights: list) -> None:
    x, z, post, p, inst = o["x"], o["z"], o["post"], o["panel"], o["instance"]
    depth = float(cam.project(np.array([[x, 0.0, z]]))[1][0])
    if depth < 0.5:
        return
    grey = np.array([140, 140, 140], np.float32)
    if o["shape"] == "board":
        _board(cv, cam, o, depth, grey)
        return
    if o["shape"] == "light":
        _traffic_light(cv, cam, o, depth, grey, lights)
        return
    cv.fill(_billboard(cam, x, z, np.array([[-0.04, 0], [0.04, 0], [0.04, post + p / 2], [-0.04, post + p / 2]])),
            depth, POLE, 0, grey)  # the post is pole, without an instance of its own
    cy, r = post + p / 2, p / 2
    red, white, blue = (np.array(c, np.float32) for c in ((200, 30, 35), (240, 240, 235), (30, 80, 170)))
    shape = o["shape"]
    if shape == "circle":
        outer, inner, fill_c, paint_c = _ellipse(0, cy, r, r, 16), _ellipse(0, cy, 0.72 * r, 0.72 * r, 16), red, white
    elif shape == "octagon":
        outer, inner, fill_c, paint_c = _ellipse(0, cy, r, r, 8), _ellipse(0, cy, 0.85 * r, 0.85 * r, 8), white, red
    elif shape == "triangle":
        tri = np.array([[-r, cy - 0.8 * r], [r, cy - 0.8 * r], [0.0, cy + 0.95 * r]])
        outer, inner, fill_c, paint_c = tri, (tri - [0, cy - 0.1 * r]) * 0.6 + [0, cy - 0.1 * r], red, white
    else:
        outer = np.array([[-r, cy - 0.7 * r], [r, cy - 0.7 * r], [r, cy + 0.7 * r], [-r, cy + 0.7 * r]])
        inner, fill_c, paint_c = (outer - [0, cy]) * 0.85 + [0, cy], white, blue
    cv.fill(_billboard(cam, x, z - 0.03, outer), depth - 0.03, SIGN, inst, fill_c)
    if cam.focal / depth >= DETAIL / 2:
        cv.paint(_billboard(cam, x, z - 0.03, inner), paint_c, inst)


def _fence_piece(cv: Canvas, cam: Camera, o: dict[str, Any], lights: list) -> None:
    x, za, zb, hgt, inst = o["x"], o["z"], o["z1"], o["height"], o["instance"]
    uv, d = cam.project(_quad_x(x, 0.0, hgt, za, zb))
    if d.min() < 0.5:
        return
    col = np.array(o["color"], np.float32)
    cv.fill(uv, float(d.min()), FENCE, inst, col * 0.85)
    if cam.focal / float(d.min()) < DETAIL:
        return
    for y0, y1 in ((hgt - 0.08, hgt), (0.45 * hgt, 0.45 * hgt + 0.06), (0.0, 0.08)):
        cv.paint(cam.project(_quad_x(x, y0, y1, za, zb))[0], col * 1.15, inst)
    cv.paint(cam.project(_quad_x(x, 0.0, hgt, za, za + 0.1))[0], col * 0.55, inst)


DRAW: dict[str, Callable[[Canvas, Camera, dict[str, Any], list], None]] = {
    "car": _car, "pedestrian": _pedestrian, "bicyclist": _bicyclist, "tree": _tree, "pole": _pole,
    "sign": _sign, "fence": _fence_piece,
}


def _pieces(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Objects with long fences split into pieces of at most FENCE_PIECE metres."""
    out = []
    for o in objects:
        if o["kind"] != "fence":
            out.append(o)
            continue
        n = max(1, int(np.ceil((o["z1"] - o["z"]) / FENCE_PIECE)))
        edges = np.linspace(o["z"], o["z1"], n + 1)
        out += [{**o, "z": float(a), "z1": float(b)} for a, b in zip(edges[:-1], edges[1:])]
    return out


def draw_objects(desc: dict[str, Any], cam: Camera, cv: Canvas) -> tuple[dict, list[Light]]:
    """Draw every object far to near; return instance extents and the lights left visible."""
    objects = _pieces(desc["objects"])
    if not objects:
        return {}, []
    refs = np.array([[o["x"], 0.0, o["z"]] for o in objects], np.float64)
    order = np.argsort(-cam.project(refs)[1], kind="stable")
    lights: list = []
    for i in order:
        DRAW[objects[i]["kind"]](cv, cam, objects[i], lights)
    cv.flush()
    visible: list[Light] = []
    for u, v, inst, radius, colour in lights:
        if 0 <= u < cv.width and 0 <= v < cv.height and cv.instances[int(v), int(u)] == inst:
            visible.append((float(u), float(v), float(radius), colour))
    return cv.extents, visible
