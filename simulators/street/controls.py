"""What a user can turn in the street simulator, validated by pydantic.

Distances are metres and angles degrees, in the world of the scene (not pixels), so one
set of controls means the same thing at every frame size. Object counts are (min, max)
ranges drawn uniformly per frame; (0, 0) removes a class, (n, n) fixes its count.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

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


Count = Annotated[tuple[int, int], AfterValidator(_ordered_count)]
Lanes = Annotated[tuple[int, int], AfterValidator(_ordered_lanes)]


class StreetControls(BaseModel):
    """Scene, camera and condition knobs of the street family.

    `weather` / `time_of_day`: "random" draws one of the values uniformly per frame.
    `weather_intensity`: 0 (trace) .. 1 (dense fog, downpour, blizzard).
    `camera_height` metres above the road; `camera_pitch` degrees, positive looks up (the
    horizon moves down, more sky); `fov` horizontal = vertical field of view, degrees.
    `camera_jitter`: std of the per-frame pitch and yaw perturbation in degrees (height
    gets 0.05 m std per unit).
    `lanes`: (min, max) lanes of the road. Counts: cars on the lanes, pedestrians on sidewalks and crossings, bicyclists near the
    kerb, trees / poles (street lights) / signs along the kerb, fence segments along the
    sidewalks.
    `color_jitter`: 0 keeps the base palette, 1 lets hues and brightness of buildings,
    cars, road and sky vary widely. `texture`: window grids, brick shading, road noise.
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

    color_jitter: float = Field(0.5, ge=0.0, le=1.0)
    texture: bool = True

