"""The record every stage passes around (see ../shared/DESIGN.md, "Contracts")."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Where a row came from: "real", "simulator", "classical", or the name of the generator
# family that made it (diffusion, cgan, ... and families users register).
SourceKind = str


@dataclass(frozen=True)
class Box:
    """An axis-aligned box in pixels, COCO layout: top-left corner, width, height."""

    x: float
    y: float
    w: float
    h: float
    label: int


@dataclass(frozen=True)
class GeneratorInfo:
    """Which generator made a sample; `params_json` holds its sampling parameters."""

    name: str
    checkpoint_sha256: str | None = None
    params_json: str = "{}"


@dataclass(frozen=True)
class Scores:
    """A synthetic row's quality scores (None: not measured for this row).

    `label_preservation` is measured on rows made from a parent record whose labels the
    job carried over: how well the frozen source task model's prediction on the new image
    still agrees with those labels (`augment.metrics.preservation`). `label_consistency` is
    measured on rows painted from a label map: the pixel accuracy of a frozen segmenter,
    fitted on the job's real (image, mask) pairs, on the new image against that map."""

    realism: float | None = None
    confidence: float | None = None
    label_preservation: float | None = None
    label_consistency: float | None = None


@dataclass
class Sample:
    """One image with its annotations.

    `image` is uint8 HxWxC (C is 3 for RGB or 1 for grayscale), `mask` uint16 HxW class
    ids, `instances` uint16 HxW instance ids, `depth` uint16 HxW.
    """

    id: str
    image: np.ndarray
    label: int | None = None
    mask: np.ndarray | None = None
    boxes: list[Box] = field(default_factory=list)
    instances: np.ndarray | None = None
    depth: np.ndarray | None = None
    source: SourceKind = "real"
    generator: GeneratorInfo | None = None
    seed: int | None = None
    parent_id: str | None = None
    scores: Scores | None = None
    # The terms of the row and of its parent sample (see augment.licences); None: not recorded.
    licence: str | None = None
    parent_licence: str | None = None

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])
