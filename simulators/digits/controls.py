"""What a user can turn in the digits simulator, validated by pydantic.

Lengths (scale, stroke width, elastic displacement) are fractions of the crop or of the
glyph height, so one set of controls means the same thing at every frame size.
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

TEXTURES = ("noise", "gradient", "stripes")


@lru_cache(maxsize=1)
def font_dir() -> str:
    """matplotlib's bundled TrueType folder (no pyplot import, no display needed)."""
    import matplotlib

    return os.path.join(matplotlib.get_data_path(), "fonts", "ttf")


@lru_cache(maxsize=1)
def available_fonts() -> tuple[str, ...]:
    """DejaVu files that hold digit glyphs (the *Display* subsets have none)."""
    names = sorted(os.listdir(font_dir()))
    return tuple(n for n in names if n.startswith("DejaVu") and n.endswith(".ttf") and "Display" not in n)


DEFAULT_FONTS = (
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSans-Oblique.ttf",
    "DejaVuSans-BoldOblique.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSerif-Bold.ttf",
    "DejaVuSerif-Italic.ttf",
    "DejaVuSansMono.ttf",
    "DejaVuSansMono-Bold.ttf",
)


def _ordered(pair: tuple[float, float]) -> tuple[float, float]:
    if pair[0] > pair[1]:
        raise ValueError(f"range must be (low, high) with low <= high, got {pair}")
    return pair


Range = Annotated[tuple[float, float], AfterValidator(_ordered)]


class ElasticControls(BaseModel):
    """Elastic deformation (Simard et al. 2003): a smooth random displacement field.

    `alpha`: displacement std as a fraction of the glyph height; `sigma`: smoothness
    (Gaussian std of the field) as a fraction of the glyph height. alpha=0 turns it off.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    alpha: float = Field(0.08, ge=0.0, le=0.5)
    sigma: float = Field(0.3, gt=0.0, le=2.0)


class DigitsControls(BaseModel):
    """Randomisation of house-number-like digit crops (SVHN-style source domain).

    Nuisance controls (colours, texture, blur, noise, neighbours, rotation, scale) change
    the look; shape controls (stroke width, slant, aspect, elastic, position jitter)
    change the glyph's geometry and are applied only when `shape_randomisation` is True.
    With it False, every digit is a plain font render: centred, upright, default weight,
    no elastic field (rotation is forced to 0 too); only `scale` still varies its size.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    fonts: list[str] = Field(default_factory=lambda: list(DEFAULT_FONTS), min_length=1)
    neighbours: float = Field(0.5, ge=0.0, le=1.0, description="probability of a digit on each side")
    random_colors: bool = Field(True, description="False: white ink on black")
    min_contrast: float = Field(0.35, ge=0.0, le=1.0, description="min luminance gap fg/bg, in [0, 1]")
    background_texture: Literal["none", "noise", "gradient", "stripes"] | Annotated[
        float, Field(ge=0.0, le=1.0)
    ] = Field(0.5, description="a kind, or the probability of a random kind")
    blur: float = Field(0.8, ge=0.0, le=5.0, description="max Gaussian sigma, output pixels")
    noise: float = Field(8.0, ge=0.0, le=100.0, description="max Gaussian noise std, 0..255 levels")
    rotation: Range = Field((-8.0, 8.0), description="degrees")
    scale: Range = Field((0.55, 0.8), description="centre digit height / crop height")
    shape_randomisation: bool = True
    stroke_width: Range = Field((-0.02, 0.14), description="added stroke thickness / glyph height")
    slant: Range = Field((-0.3, 0.3), description="horizontal shear dx/dy")
    aspect: Range = Field((0.65, 1.2), description="width stretch of the glyph")
    shift: float = Field(0.06, ge=0.0, le=0.3, description="max centre jitter / crop size")
    elastic: ElasticControls = Field(default_factory=ElasticControls)
    with_mask: bool = True
    color: Literal["rgb", "gray"] = "rgb"

    @field_validator("fonts")
    @classmethod
    def _known_fonts(cls, fonts: list[str]) -> list[str]:
        known = available_fonts()
        unknown = [f for f in fonts if f not in known]
        if unknown:
            raise ValueError(f"unknown font file(s) {unknown}; choose from {list(known)}")
        return fonts

    @field_validator("scale")
    @classmethod
    def _scale_positive(cls, scale: tuple[float, float]) -> tuple[float, float]:
        if scale[0] <= 0.05 or scale[1] > 1.5:
            raise ValueError(f"scale must lie in (0.05, 1.5], got {scale}")
        return scale

    @field_validator("stroke_width")
    @classmethod
    def _stroke_bounds(cls, stroke: tuple[float, float]) -> tuple[float, float]:
        if stroke[0] < -0.06 or stroke[1] > 0.4:
            raise ValueError(f"stroke_width must lie in [-0.06, 0.4] (thinner erases strokes), got {stroke}")
        return stroke

    @field_validator("aspect")
    @classmethod
    def _aspect_positive(cls, aspect: tuple[float, float]) -> tuple[float, float]:
        if aspect[0] <= 0.2 or aspect[1] > 3.0:
            raise ValueError(f"aspect must lie in (0.2, 3.0], got {aspect}")
        return aspect
