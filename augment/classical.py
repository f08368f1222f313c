"""Classical augmentation: albumentations 2.0.x pipelines declared as data.

A pipeline is a list of transform specs, plain dicts that fit in a YAML config:

    {"name": "HorizontalFlip", "p": 0.5, "params": {}}
    {"name": "Rotate", "params": {"limit": 20}}          # p omitted: albumentations' default

`name` is looked up in the `albumentations` namespace only (never an import path) and must
be a `BasicTransform` that works on one image with its own annotations. `p` defaults to the
transform's own albumentations default; the resolved value is recorded in the output's
`GeneratorInfo.params_json`, so the record is always explicit.

One `A.Compose` draws the random parameters once per call and applies them to image, mask,
instances, depth and boxes together (albumentations' "sample parameters, then apply"), so
annotations stay aligned with pixels. Masks use nearest interpolation: uint16 ids survive.
"""

from __future__ import annotations

import inspect
import json
import os
import warnings
from dataclasses import replace
from typing import Any

import cv2
import numpy as np
import pydantic

from augment.sample import Box, GeneratorInfo, Sample

# Importing albumentations 2.0 asks pypi.org for a newer release (albumentations.check_version,
# up to 2 s) unless this is set. A job makes no network calls, and each Ray worker that
# augments imports this module. An explicit setting of the variable is left as it is.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
import albumentations as A  # noqa: E402

# Transforms that are BasicTransforms but cannot be declared as data or break the Sample
# contract: abstract bases, user callables, tensor/float outputs, font files.
_DENIED: dict[str, str] = {
    "BasicTransform": "an abstract base class",
    "DualTransform": "an abstract base class",
    "ImageOnlyTransform": "an abstract base class",
    "Transform3D": "an abstract base class",
    "Lambda": "it runs arbitrary Python callables",
    "ToTensorV2": "it outputs tensors, not uint8 images",
    "ToTensor3D": "it outputs tensors, not uint8 images",
    "Normalize": "it outputs float images; samples are uint8",
    "ToFloat": "it outputs float images; samples are uint8",
    "FromFloat": "it expects float input images; samples are uint8",
    "TextImage": "it needs a font file and text metadata",
}
_COMPOSITIONS = {"Compose", "OneOf", "SomeOf", "Sequential", "OneOrOther", "SelectiveChannelTransform",
                 "RandomOrder", "ReplayCompose"}
# Inputs every call provides; a transform may ask for these as parameters.
_PROVIDED_TARGETS = {"image", "mask", "bboxes", "box_labels"}

BBOX_PARAMS = dict(
    format="coco", label_fields=["box_labels"], clip=True, min_visibility=0.0, min_area=1.0,
    filter_invalid_bboxes=True,
)
"""Boxes are clipped to the image; boxes left with under 1 px² (or invalid) are dropped."""


def _transform_class(name: str) -> type[A.BasicTransform]:
    """Find `name` in the albumentations namespace, or raise ValueError saying why not."""
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"transform name {name!r} is not a plain albumentations class name")
    if name in _COMPOSITIONS:
        raise ValueError(f"{name}: composition wrappers are not allowed; list transforms flat "
                         "and use each transform's p")
    cls = getattr(A, name, None)
    if not (inspect.isclass(cls) and issubclass(cls, A.BasicTransform)):
        if inspect.isclass(cls) and issubclass(cls, A.BaseCompose):
            raise ValueError(f"{name}: composition wrappers are not allowed; list transforms flat")
        raise ValueError(f"unknown transform {name!r}: not an albumentations transform")
    if name in _DENIED:
        raise ValueError(f"{name}: not allowed because {_DENIED[name]}")
    if A.core.type_definitions.Targets.IMAGE not in getattr(cls, "_targets", ()):
        raise ValueError(f"{name}: not allowed because it does not transform 2-D images")
    return cls


def _param_error(name: str, exc: Exception) -> ValueError:
    """Turn albumentations' init error (pydantic underneath) into one line naming the parameter."""
    cause = exc.__cause__ if isinstance(exc.__cause__, pydantic.ValidationError) else exc
    if isinstance(cause, pydantic.ValidationError) and cause.errors():
        first = cause.errors()[0]
        loc = first.get("loc", ())
        where = f"{name}.{loc[0]}" if loc else name  # loc[1:] are pydantic's union branches
        got = f" (got {first['input']!r})" if loc else ""
        return ValueError(f"{where}: {first.get('msg', 'invalid value')}{got}")
    return ValueError(f"{name}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")


def _build(name: str, params: dict, p: float | None) -> A.BasicTransform:
    """Validate and instantiate one transform (shared by validation and the augmenter)."""
    cls = _transform_class(name)
    if not isinstance(params, dict):
        raise ValueError(f"{name}.params: expected a mapping, got {params!r}")
    if p is not None and (isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0):
        raise ValueError(f"{name}.p: must be a number in [0, 1], got {p!r}")
    if "p" in params:
        raise ValueError(f"{name}.params.p: give p next to params, not inside them")
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "args", "kwargs", "p"}
    for key in params:
        if key not in accepted:
            raise ValueError(f"{name}.{key}: unknown parameter (accepted: {', '.join(sorted(accepted))})")
    try:
        json.dumps(params, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}.params: must be plain JSON data ({exc})") from None
    kwargs = dict(params, **({} if p is None else {"p": float(p)}))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # deprecation chatter; bad input raises below
            transform = cls(**kwargs)
    except (ValueError, TypeError) as exc:
        raise _param_error(name, exc) from None
    needs = set(transform.targets_as_params) - _PROVIDED_TARGETS
    if needs:
        raise ValueError(f"{name}: not allowed because it needs extra inputs {sorted(needs)}")
    return transform


def validate_transform(name: str, params: dict, p: float | None) -> None:
    """Raise ValueError (naming the parameter and value) if this transform spec is unusable."""
    _build(name, params, p)


def check_geometric(name: str) -> None:
    """Raise ValueError unless `name` moves pixels (a DualTransform: masks follow it); label-map
    steps augment masks by such transforms alone, since a colour change means nothing to a map."""
    if not issubclass(_transform_class(name), A.DualTransform):
        raise ValueError(f"{name}: changes pixel values only; a label map is augmented by geometric transforms "
                         "(Affine, HorizontalFlip, RandomResizedCrop, ...)")


def _spec_parts(spec: Any, index: int) -> tuple[str, dict, float | None]:
    if not isinstance(spec, dict):
        raise ValueError(f"transforms[{index}]: expected a mapping with 'name', got {spec!r}")
    unknown = set(spec) - {"name", "p", "params"}
    if unknown:
        raise ValueError(f"transforms[{index}]: unknown keys {sorted(unknown)} (use name, p, params)")
    if "name" not in spec:
        raise ValueError(f"transforms[{index}]: missing 'name'")
    return spec["name"], spec.get("params") or {}, spec.get("p")


class ClassicalAugmenter:
    """Apply one albumentations pipeline to a Sample; output depends only on (parent, seed).

    Not thread-safe: each call re-seeds the pipeline's own RNGs, then draws from them.
    """

    def __init__(self, specs: list[dict], *, generator_name: str = "albumentations") -> None:
        if not isinstance(specs, list) or not specs:
            raise ValueError(f"transforms: expected a non-empty list of specs, got {specs!r}")
        transforms, resolved = [], []
        for i, spec in enumerate(specs):
            name, params, p = _spec_parts(spec, i)
            transform = _build(name, params, p)
            transforms.append(transform)
            resolved.append({"name": name, "p": float(transform.p), "params": params})
        self.specs = resolved
        self.generator_name = generator_name
        self.params_json = json.dumps(
            {"albumentations": A.__version__, "transforms": resolved},
            sort_keys=True, separators=(",", ":"),
        )
        self._compose = A.Compose(
            transforms,
            bbox_params=A.BboxParams(**BBOX_PARAMS),
            additional_targets={"instances": "mask", "depth": "mask"},
            mask_interpolation=cv2.INTER_NEAREST,  # overrides every transform: ids stay ids
            seed=0,
        )

    def __call__(self, parent: Sample, *, child_id: str, seed: int) -> Sample:
        """Return the augmented child of `parent`; same (parent, seed) → same pixels."""
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        # 1. Gather targets; a missing mask is stood in by zeros so mask-driven transforms
        #    (MaskDropout) still work, and dropped again afterwards.
        h, w = parent.image.shape[:2]
        inputs: dict[str, Any] = {
            "image": parent.image,
            "mask": parent.mask if parent.mask is not None else np.zeros((h, w), np.uint16),
            "bboxes": np.array([[b.x, b.y, b.w, b.h] for b in parent.boxes], np.float32).reshape(-1, 4),
            "box_labels": list(range(len(parent.boxes))),  # indices: labels come back as floats
        }
        for key in ("instances", "depth"):
            if getattr(parent, key) is not None:
                inputs[key] = getattr(parent, key)
        # 2. Re-seed every transform's RNG, then draw once and apply to all targets.
        self._compose.set_random_seed(int(seed))
        out = self._compose(**inputs)
        # 3. Check the contract and rebuild boxes from surviving indices.
        image = out["image"]
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in (1, 3):
            raise ValueError(f"pipeline produced an image of dtype {image.dtype} and shape {image.shape}; "
                             "expected uint8 HxWx1 or HxWx3")
        boxes = [
            Box(float(x), float(y), float(bw), float(bh), parent.boxes[int(round(i))].label)
            for (x, y, bw, bh), i in zip(np.asarray(out["bboxes"]).reshape(-1, 4), out["box_labels"])
        ]
        return replace(
            parent,
            id=child_id,
            image=image,
            mask=out["mask"] if parent.mask is not None else None,
            instances=out.get("instances"),
            depth=out.get("depth"),
            boxes=boxes,
            source="classical",
            generator=GeneratorInfo(name=self.generator_name, params_json=self.params_json),
            seed=int(seed),
            parent_id=parent.id,
            scores=None,
            # A transform of the parent is under the parent's terms (`licence` is kept); the
            # library's own licence (albumentations: MIT) covers its code, not the images.
            parent_licence=parent.licence,
        )
