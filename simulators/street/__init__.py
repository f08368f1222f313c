"""Street scenes: a procedural driving camera with perfect CamVid labels.

`StreetFamily.describe` draws a JSON-able scene (camera, road, buildings, objects with
world positions and instance ids, lighting and weather); `render` paints it into image,
class mask, instance ids, depth (mm) and boxes, deterministically.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from simulators.base import Frame
from simulators.street.controls import StreetControls
from simulators.street.describe import describe_scene
from simulators.street.render import render_scene

CAMVID_CLASSES = ["sky", "building", "pole", "road", "sidewalk", "tree", "sign", "fence", "car", "pedestrian",
                  "bicyclist", "void"]

__all__ = ["CAMVID_CLASSES", "StreetControls", "StreetFamily"]


class StreetFamily:
    """The `street` scene family (see simulators.base.SceneFamily)."""

    name = "street"
    class_names = CAMVID_CLASSES
    controls_model = StreetControls
    rectangular = True  # takes width and height, not only a square size

    def describe(self, seed: int, controls: BaseModel, size: int | None = None, *, width: int | None = None,
                 height: int | None = None) -> dict[str, Any]:
        """Draw one scene from `np.random.default_rng(seed)`; plain JSON types only.

        The frame is `size` × `size` pixels, or `width` × `height` (e.g. 320 × 240, 4:3).
        """
        if not isinstance(controls, StreetControls):
            controls = StreetControls.model_validate(controls.model_dump() if isinstance(controls, BaseModel)
                                                     else controls)
        return describe_scene(seed, controls, size, width=width, height=height)

    def render(self, description: dict[str, Any]) -> Frame:
        """Image, mask, instances, depth (mm) and boxes of a description; same bytes every time."""
        return render_scene(description)
