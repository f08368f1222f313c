"""What a user can turn in the street simulator, validated by pydantic.

Distances are metres and angles degrees, in the world of the scene (not pixels), so one
set of controls means the same thing at every frame size. Object counts are (min, max)
ranges drawn uniformly per frame; (0, 0) removes a class, (n, n) fixes its count.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
    model_validator,
)

Weather = Literal["clear", "fog", "rain", "snow"]
TimeOfDay = Literal["day", "dusk", "night"]
WEATHERS: tuple[str, ...] = ("clear", "fog", "rain", "snow")
TIMES_OF_DAY: tuple[str, ...] = ("day", "dusk", "night")

MAX_COUNT = 64  # per class and frame; more would only clutter a 256-pixel frame


def _ordered_count(pair: tuple[int, int]) -> tuple[int, int]:
    low, high = pair
    if low < 0 or high > MAX_COUNT or low > high:
        raise ValueError(f"count range must be (min, max) with 0 <= min <= max <= {MAX_COUNT}, got {pair}")
    return pair


def _ordered_lanes(pair: tuple[int, int]) -> tuple[int, int]:
    low, high = pair
    if not 1 <= low <= high <= 6:
        raise ValueError(f"lanes must be (min, max) with 1 <= min <= max <= 6, got {pair}")
    return pair


def _ordered_heights(pair: tuple[float, float]) -> tuple[float, float]:
    low, high = pair
    if not 3.0 <= low <= high <= 100.0:
        raise ValueError(f"building_height must be (min, max) metres with 3 <= min <= max <= 100, got {pair}")
    return pair


Count = Annotated[tuple[int, int], AfterValidator(_ordered_count)]
Lanes = Annotated[tuple[int, int], AfterValidator(_ordered_lanes)]
Heights = Annotated[tuple[float, float], AfterValidator(_ordered_heights)]
Style = Literal["default", "camvid"]
STYLES: tuple[str, ...] = ("default", "camvid")

# What `style` sets besides the look: defaults of these controls where the user gives none.
# "camvid": counts and building heights measured against CamVid's train/ masks with
# benchmarks/street_stats.py (more trees, signs, parked cars and people; lower buildings).
STYLE_CONTROLS: dict[str, dict[str, Any]] = {
    "default": {},
    "camvid": {
        "cars": (3, 10), "parked_cars": (2, 8), "pedestrians": (3, 12), "bicyclists": (0, 5),
        "trees": (3, 10), "poles": (3, 8), "signs": (4, 10), "fences": (1, 3), "building_height": (4.0, 13.0),
    },
}
# Controls added after configs were first written: left out of a default-style dump at their
# defaults, so that a config written before them dumps (and hashes) as it did. (A "camvid"
# dump keeps them all: its style's defaults differ, and the dump must validate back to it.)
_LATER = {"style": "default", "building_height": (6.0, 30.0), "parked_cars": (0, 0)}


class StreetControls(BaseModel):
    """Scene, camera and condition knobs of the street family.

    `weather` / `time_of_day`: "random" draws one of the values uniformly per frame.
    `weather_intensity`: 0 (trace) .. 1 (dense fog, downpour, blizzard).
    `camera_height` metres above the road; `camera_pitch` degrees, positive looks up (the
    horizon moves down, more sky); `fov` the horizontal field of view, degrees (square
    pixels: a square frame sees as high as wide, a 4:3 frame's vertical view is narrower).
    `camera_jitter`: std of the per-frame pitch and yaw perturbation in degrees (height
    gets 0.05 m std per unit).
    `lanes`: (min, max) lanes of the road. Counts: cars on the lanes, pedestrians on
    sidewalks and crossings, bicyclists near the kerb, trees / poles (street lights) /
    signs along the kerb, fence segments along the sidewalks.
    `parked_cars`: cars parked at the kerb in the outer lanes. `building_height`: (min,
    max) metres of the facades.
    `color_jitter`: 0 keeps the base palette, 1 lets hues and brightness of buildings,
    cars, road and sky vary widely. `texture`: window grids, brick shading, road noise.
    `style`: the look the palettes and sizes come from. "default" is the simulator's own
    (bright, saturated, clear blue sky). "camvid" moves towards CamVid's real frames
    (overcast bright sky over a darker street, muted buildings, winter trees, darker
    clothes, shop boards and traffic lights among the signs) and also sets the defaults
    of the counts and building heights in STYLE_CONTROLS; controls given explicitly win.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    weather: Weather | Literal["random"] = "clear"
    weather_intensity: float = Field(0.5, ge=0.0, le=1.0)
    time_of_day: TimeOfDay | Literal["random"] = "day"

    camera_height: float = Field(1.5, ge=1.2, le=3.0)
    camera_pitch: float = Field(0.0, ge=-15.0, le=15.0)
    fov: float = Field(70.0, ge=40.0, le=110.0)
    camera_jitter: float = Field(1.0, ge=0.0, le=5.0)

    lanes: Lanes = (2, 4)
    cars: Count = (2, 8)
    pedestrians: Count = (0, 6)
    bicyclists: Count = (0, 2)
    trees: Count = (2, 8)
    poles: Count = (2, 6)
    signs: Count = (1, 3)
    fences: Count = (0, 2)

    parked_cars: Count = (0, 0)
    building_height: Heights = (6.0, 30.0)

    color_jitter: float = Field(0.5, ge=0.0, le=1.0)
    texture: bool = True
    style: Style = "default"

    @model_validator(mode="before")
    @classmethod
    def _style_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("style"), str):
            return {**STYLE_CONTROLS.get(data["style"], {}), **data}
        return data

    @model_serializer(mode="wrap")
    def _omit_later_defaults(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        if self.style == "default":
            for key, default in _LATER.items():
                if getattr(self, key) == default:
                    data.pop(key, None)
        return data

