"""Simulator frames as a data source: frame i is drawn from seed derive_seed(seed, i).

Listing records draws each frame's scene description (cheap, no pixels) so that frames
with a class (digits) carry their label into the split and the quota; `load` renders.
The description travels with the frame in `generator.params_json`, so any frame can be
re-rendered exactly with `render_description`.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

from pydantic import BaseModel

from augment.errors import ConfigError
from augment.licences import PROJECT_LICENCE
from augment.sample import GeneratorInfo, Sample
from augment.seeding import derive_seed
from augment.sources.base import SourceRecord
from simulators.base import SceneFamily

FAMILY_NAMES = ("street", "digits")
LABELLED_FAMILIES = {"digits"}  # frames with one class each (the centre digit)
_FRAME_STREAM = 11  # keeps frame seeds apart from the job's other random streams


@lru_cache(maxsize=None)
def get_family(name: str) -> SceneFamily:
    if name == "street":
        from simulators.street import StreetFamily

        return StreetFamily()
    if name == "digits":
        from simulators.digits import DigitsFamily

        return DigitsFamily()
    raise ConfigError(f"simulator family {name!r} is not one of {', '.join(FAMILY_NAMES)}")


def frame_seed(seed: int, index: int) -> int:
    return derive_seed(seed, _FRAME_STREAM, index)


def description_label(description: dict[str, Any]) -> int | None:
    label = description.get("label")
    return None if label is None else int(label)


class SimulatorSource:
    """`frames` procedurally rendered frames of one scene family."""

    # Rendered frames cannot be corrupt: the job skips its decode-everything scan.
    trusted = True

    def __init__(self, family: str, *, frames: int, seed: int, controls: BaseModel, size: int | None = None,
                 width: int | None = None, height: int | None = None) -> None:
        """Frames are `size` × `size` pixels, or `width` × `height` for families that take
        both (`rectangular`, e.g. street); width == height is the same as that size."""
        self.family = get_family(family)
        self.frames = frames
        self.seed = seed
        self.controls = controls
        if size is not None and (width is not None or height is not None):
            raise ConfigError(f"simulator frames: give size or width and height, not both "
                              f"(size {size}, width {width}, height {height})")
        if size is None:
            if width is None or height is None:
                raise ConfigError(f"simulator frames need size, or both width and height "
                                  f"(width {width}, height {height})")
            if width == height:
                size = width
            elif not getattr(self.family, "rectangular", False):
                raise ConfigError(f"simulator family {self.family.name!r} renders square frames only; "
                                  f"got width {width}, height {height}")
        self.size = size
        self.width, self.height = (size, size) if size is not None else (width, height)

    @property
    def class_names(self) -> list[str]:
        return list(self.family.class_names)

    def describe(self, index: int) -> dict[str, Any]:
        seed = frame_seed(self.seed, index)
        if self.size is not None:
            return self.family.describe(seed, self.controls, self.size)
        return self.family.describe(seed, self.controls, width=self.width, height=self.height)

    def records(self) -> list[SourceRecord]:
        width = max(6, len(str(self.frames - 1)))
        # Only families whose frames have a class need their descriptions drawn to list them.
        labelled = self.family.name in LABELLED_FAMILIES
        return [
            SourceRecord(f"sim/{self.family.name}/{i:0{width}d}",
                         description_label(self.describe(i)) if labelled else None, str(i))
            for i in range(self.frames)
        ]

    def load(self, record: SourceRecord) -> Sample:
        index = int(record.ref)
        description = self.describe(index)
        frame = self.family.render(description)
        params = {"family": self.family.name, "description": description, "depth_units": frame.depth_units}
        return Sample(
            id=record.id,
            image=frame.image,
            label=frame.label,
            mask=frame.mask,
            boxes=list(frame.boxes),
            instances=frame.instances,
            depth=frame.depth,
            source="simulator",
            generator=GeneratorInfo(name=f"simulator/{self.family.name}",
                                    params_json=json.dumps(params, sort_keys=True, separators=(",", ":"))),
            seed=frame_seed(self.seed, index),
            licence=PROJECT_LICENCE,  # the project's own renders
        )


def render_description(params_json: str):
    """Re-render a frame from the `generator.params_json` of its shard row."""
    params = json.loads(params_json)
    return get_family(params["family"]).render(params["description"])
