"""The street simulator: labels agree with each other and with the pixels they claim."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
from pydantic import ValidationError

from simulators.street import CAMVID_CLASSES, StreetControls, StreetFamily

SIZE = 96
CAR, PEDESTRIAN, BICYCLIST, SIGN = (CAMVID_CLASSES.index(n) for n in ("car", "pedestrian", "bicyclist", "sign"))
BOXED = (SIGN, CAR, PEDESTRIAN, BICYCLIST)
FAMILY = StreetFamily()
BUSY = StreetControls(cars=(6, 8), pedestrians=(4, 6), bicyclists=(1, 2), signs=(2, 3), fences=(1, 2))
EMPTY = StreetControls(cars=(0, 0), pedestrians=(0, 0), bicyclists=(0, 0), trees=(0, 0), poles=(0, 0),
                       signs=(0, 0), fences=(0, 0), camera_jitter=0.0)


def render(seed: int, controls: StreetControls = BUSY, size: int = SIZE):
    return FAMILY.render(FAMILY.describe(seed, controls, size))


def luminance(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def test_layers_have_the_contract_types():
    frame = render(0)
    assert frame.image.shape == (SIZE, SIZE, 3) and frame.image.dtype == np.uint8
    assert frame.mask.dtype == np.uint16 and frame.instances.dtype == np.uint16 and frame.depth.dtype == np.uint16
    assert frame.depth_units == "mm" and frame.label is None
    assert int(frame.mask.max()) < len(CAMVID_CLASSES)
    sky = frame.mask == CAMVID_CLASSES.index("sky")
    assert sky.any() and (frame.depth[sky] == 65535).all() and (frame.depth[~sky] < 65535).all()
    assert FAMILY.name == "street" and FAMILY.class_names == CAMVID_CLASSES
    assert FAMILY.controls_model is StreetControls


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_every_instance_has_one_class(seed):
    frame = render(seed)
    ids = np.unique(frame.instances)
    assert len(ids) > 5
    for inst in ids[ids > 0]:
        assert len(np.unique(frame.mask[frame.instances == inst])) == 1


@pytest.mark.parametrize("seed", [4, 5, 6])
def test_boxes_are_tight_around_visible_instance_pixels(seed):
    frame = render(seed)
    expected = set()
    for inst in np.unique(frame.instances):
        pix = frame.instances == inst
        cls = int(frame.mask[pix][0])
        if inst == 0 or cls not in BOXED:
            continue
        ys, xs = np.nonzero(pix)
        expected.add((xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1, cls))
    got = {(b.x, b.y, b.w, b.h, b.label) for b in frame.boxes}
    assert got == expected and len(frame.boxes) == len(expected) > 0


def test_objects_are_nearer_than_the_background_behind_them():
    description = FAMILY.describe(7, BUSY, SIZE)
    frame = FAMILY.render(description)
    background = FAMILY.render({**description, "objects": []})
    objects = background.mask != frame.mask
    objects |= frame.instances > 0
    import cv2  # interior pixels only: a rasterised edge pixel may straddle the contact line

    inner = cv2.erode(objects.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    inner &= background.depth < 65534  # beyond 65.5 m both saturate
    assert inner.sum() > 50
    assert (frame.depth[inner] < background.depth[inner]).all()


def test_the_nearer_of_two_overlapping_cars_wins():
    description = FAMILY.describe(8, EMPTY, SIZE)
    cam_x = description["camera"]["x"]
    car = {"kind": "car", "width": 1.8, "height": 1.5, "length": 4.5, "color": [200, 30, 30], "facing": "away"}
    front = {**car, "x": cam_x + 1.0, "z": 8.0, "instance": 1}
    back = {**car, "x": cam_x, "z": 13.0, "instance": 2, "color": [30, 30, 200]}
    alone = [FAMILY.render({**description, "objects": [o]}).instances for o in (front, back)]
    overlap = (alone[0] == 1) & (alone[1] == 2)
    assert overlap.sum() > 20 and (alone[1] == 2).sum() > overlap.sum()  # the back car shows elsewhere
    for objects in ([front, back], [back, front]):  # the description's order must not matter
        frame = FAMILY.render({**description, "objects": objects})
        assert (frame.instances[overlap] == 1).all()
        assert (frame.instances[(alone[1] == 2) & ~overlap] == 2).all()
        assert frame.depth[overlap].max() < frame.depth[(alone[1] == 2) & ~overlap].min()
        assert {b.label for b in frame.boxes} == {CAR} and len(frame.boxes) == 2


def test_same_seed_same_bytes_different_seed_differs():
    a, b, c = render(9), render(9), render(10)
    for layer in ("image", "mask", "instances", "depth"):
        assert getattr(a, layer).tobytes() == getattr(b, layer).tobytes()
    assert a.boxes == b.boxes
    assert a.image.tobytes() != c.image.tobytes() and a.mask.tobytes() != c.mask.tobytes()


def test_json_round_trip_renders_identically_and_leaves_global_rng_alone():
    np.random.seed(123)
    state = np.random.get_state()[1].copy()
    for weather, time in (("rain", "night"), ("snow", "dusk"), ("fog", "day")):
        description = FAMILY.describe(11, BUSY.model_copy(update={"weather": weather, "time_of_day": time}), SIZE)
        again = json.loads(json.dumps(description))
        a, b = FAMILY.render(description), FAMILY.render(again)
        for layer in ("image", "mask", "instances", "depth"):
            assert getattr(a, layer).tobytes() == getattr(b, layer).tobytes()
        assert a.boxes == b.boxes
    assert (np.random.get_state()[1] == state).all()


def test_render_does_not_modify_the_description():
    description = FAMILY.describe(12, BUSY, SIZE)
    before = copy.deepcopy(description)
    FAMILY.render(description)
    assert description == before


def _with(**update) -> StreetControls:
    return BUSY.model_copy(update=update)


def test_fog_lowers_contrast_and_night_lowers_brightness():
    clear = render(13, _with(weather="clear"))
    fog = render(13, _with(weather="fog", weather_intensity=0.7))
    night = render(13, _with(time_of_day="night"))
    assert luminance(fog.image).std() < 0.85 * luminance(clear.image).std()
    assert luminance(night.image).mean() < 0.5 * luminance(clear.image).mean()
    assert fog.mask.tobytes() == clear.mask.tobytes() == night.mask.tobytes()


@pytest.mark.parametrize("weather", ["rain", "snow", "fog"])
def test_weather_changes_pixels_not_labels(weather):
    clear = render(14, _with(weather="clear"))
    wet = render(14, _with(weather=weather, weather_intensity=0.8))
    assert np.abs(wet.image.astype(int) - clear.image.astype(int)).mean() > 5
    for layer in ("mask", "instances", "depth"):
        assert getattr(wet, layer).tobytes() == getattr(clear, layer).tobytes()
    assert wet.boxes == clear.boxes


def test_pitching_up_shows_more_sky():
    sky = CAMVID_CLASSES.index("sky")
    fractions = [(render(15, _with(camera_pitch=p, camera_jitter=0.0)).mask == sky).mean() for p in (-10, 0, 10)]
    assert fractions[0] < fractions[1] < fractions[2]


def test_object_counts_follow_the_controls():
    none = render(16, _with(cars=(0, 0), pedestrians=(0, 0)))
    assert not (none.mask == CAR).any() and not (none.mask == PEDESTRIAN).any()
    many = render(16, _with(cars=(8, 8)))
    assert (many.mask == CAR).sum() > 100
    cars = {int(i) for i in np.unique(many.instances[many.mask == CAR])}
    assert 3 <= len(cars) <= 8
    kinds = [o["kind"] for o in FAMILY.describe(16, _with(cars=(8, 8)), SIZE)["objects"]]
    assert kinds.count("car") == 8


@pytest.mark.parametrize("bad", [{"fov": 500}, {"cars": (5, 2)}, {"weather": "hail"}, {"camera_pitch": -40},
                                 {"lanes": (0, 2)}, {"weather_intensity": 1.5}, {"colour": 1}])
def test_controls_reject_bad_values(bad):
    with pytest.raises(ValidationError):
        StreetControls(**bad)


def test_random_conditions_are_drawn_per_frame():
    controls = StreetControls(weather="random", time_of_day="random")
    seen = {(FAMILY.describe(s, controls, 32)["conditions"]["weather"],
             FAMILY.describe(s, controls, 32)["conditions"]["time_of_day"]) for s in range(40)}
    assert len({w for w, _ in seen}) == 4 and len({t for _, t in seen}) == 3
