"""What every scene family provides: draw a description, then render it.

A scene is drawn first, as a backend-free JSON-able description (every random choice
made from an explicit RNG seeded per frame), then rendered deterministically into layers.
The description is stored with the frame, so any frame can be re-rendered exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from pydantic import BaseModel

from augment.sample import Box


@dataclass
class Frame:
    """A rendered frame and its perfect labels.

    `image` uint8 HxWx3 (or HxWx1); `mask` uint16 HxW class ids; `instances` uint16 HxW
    (0 = no instance); `depth` uint16 HxW in `depth_units` (e.g. "mm"); `label` the
    frame's class when the family has one (digits: the centre digit).
    """

    image: np.ndarray
    mask: np.ndarray | None = None
    instances: np.ndarray | None = None
    depth: np.ndarray | None = None
    boxes: list[Box] = field(default_factory=list)
    label: int | None = None
    depth_units: str | None = None


class SceneFamily(Protocol):
    """A procedural simulator: `describe` draws, `render` paints (no randomness in it)."""

    name: str
    class_names: list[str]
    controls_model: type[BaseModel]
    # True when `describe` also takes keyword `width` and `height` (frames of any shape);
    # otherwise frames are `size` × `size`.
    rectangular: bool

    def describe(self, seed: int, controls: BaseModel, size: int) -> dict[str, Any]:
        """Draw one scene description from `np.random.default_rng(seed)`; JSON-able."""
        ...

    def render(self, description: dict[str, Any]) -> Frame:
        """Paint the layers of a description; same description → same bytes."""
        ...
