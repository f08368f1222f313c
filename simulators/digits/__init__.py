"""House-number-like digit crops with perfect labels (SVHN-style source domain).

`DigitsFamily().describe(seed, DigitsControls(), 32)` draws a crop's description;
`render(description)` paints it: image, centre-digit label, mask (0 background,
1 centre digit) and one box around the centre digit.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from simulators.base import Frame
from simulators.digits.controls import DigitsControls, ElasticControls, available_fonts
from simulators.digits.describe import describe_digit
from simulators.digits.render import render_digit

__all__ = ["DigitsControls", "DigitsFamily", "ElasticControls", "available_fonts"]


class DigitsFamily:
    """The `SceneFamily` for digit crops; class id = digit value."""

    def __init__(self) -> None:
        self.name = "digits"
        self.class_names = [str(d) for d in range(10)]
        self.controls_model: type[BaseModel] = DigitsControls
        self.rectangular = False  # square crops only

    def describe(self, seed: int, controls: BaseModel, size: int) -> dict[str, Any]:
        """Draw one crop from `np.random.default_rng(seed)`; JSON-able."""
        if not isinstance(controls, DigitsControls):
            raise TypeError(f"controls must be DigitsControls, got {type(controls).__name__}")
        return describe_digit(seed, controls, size)

    def render(self, description: dict[str, Any]) -> Frame:
        """Paint a description; same description → same bytes."""
        return render_digit(description)
