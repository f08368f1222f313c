"""The VGG perceptual loss (Johnson et al. 2016; as SPADE uses it, Park et al. 2019, appendix A,
reference NVlabs/SPADE `models/networks/loss.py: VGGLoss`) from a local VGG19 weights file.

Nothing is downloaded: the user points `vgg_weights` at torchvision's VGG19 state dict (the
whole model's, keys `features.N.weight`, or its `features`' alone, keys `N.weight`) saved as
safetensors, or as a tensor-only `.pth`/`.pt` read with `torch.load(weights_only=True)`;
anything that needs the full unpickler is refused. The network is rebuilt from the file in
torchvision's numbering (conv at N, ReLU at N + 1, a 2×2 max-pool at N + 2 where the next
conv is at N + 3), so a tiny stand-in with the same naming loads and runs the same way.

L_VGG = Σ_i w_i ‖φ_i(G(m)) − φ_i(x)‖₁ over relu1_1, relu2_1, relu3_1, relu4_1, relu5_1 (the
first ReLU of each block), w = 1/32, 1/16, 1/8, 1/4, 1 (SPADE's weights; a stand-in with
fewer blocks uses the first ones). Images in [-1, 1] are mapped to [0, 1] and normalised
with the ImageNet mean and std the weights were trained with (SPADE's code skips this).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

TAP_WEIGHTS = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
TENSOR_SUFFIXES = (".pth", ".pt", ".bin")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors by name from safetensors or a tensor-only torch file; ValueError naming the file
    for anything else (pickled objects are refused, never unpickled)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"vgg_weights: {path} is not a file")
    if path.suffix == ".safetensors":
        return load_file(str(path))
    if path.suffix not in TENSOR_SUFFIXES:
        raise ValueError(f"vgg_weights: {path} must be .safetensors or a tensor-only state dict "
                         f"({', '.join(TENSOR_SUFFIXES)}); pickles are refused")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, AttributeError, ValueError) as error:
        raise ValueError(f"vgg_weights: {path} is not a tensor-only state dict ({type(error).__name__}); "
                         "pickled objects are refused: save the state dict as safetensors") from None
    if not isinstance(raw, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in raw.items()):
        raise ValueError(f"vgg_weights: {path} must hold a dict of tensors by name, got {type(raw).__name__}")
    return raw


def _convs(tensors: dict[str, torch.Tensor], path: Path) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Conv (weight, bias) by torchvision index; the classifier's keys are ignored."""
    parts: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("classifier."):
            continue
        index, _, kind = key.removeprefix("features.").partition(".")
        if not index.isdigit() or kind not in ("weight", "bias"):
            raise ValueError(f"vgg_weights: {path}: unexpected key {key!r}; expected torchvision VGG19 names "
                             "like 'features.0.weight'")
        parts.setdefault(int(index), {})[kind] = value
    convs = {}
    for index, part in sorted(parts.items()):
        weight, bias = part.get("weight"), part.get("bias")
        if weight is None or bias is None or weight.ndim != 4 or bias.shape != weight.shape[:1]:
            raise ValueError(f"vgg_weights: {path}: layer {index} needs a 4-d conv weight and its bias")
        convs[index] = (weight.float(), bias.float())
    if not convs:
        raise ValueError(f"vgg_weights: {path}: no VGG conv layers found")
    return convs


class VGGFeatures(nn.Module):
    """The VGG trunk up to its last tap: `slices[i]` maps tap i − 1's output (or the image) to
    tap i's, the first ReLU of block i. Frozen, in eval mode."""

    def __init__(self, convs: dict[int, tuple[torch.Tensor, torch.Tensor]], max_taps: int = len(TAP_WEIGHTS)) -> None:
        super().__init__()
        indices, channels = sorted(convs), 3
        if indices[0] != 0:
            raise ValueError(f"vgg_weights: the first conv must be layer 0, got {indices[0]}")
        slices: list[nn.Module] = []
        pending: list[nn.Module] = []  # layers since the last tap
        for k, index in enumerate(indices):
            weight, bias = convs[index]
            if weight.shape[1] != channels:
                raise ValueError(f"vgg_weights: layer {index} takes {weight.shape[1]} channels, the previous "
                                 f"layer gives {channels}")
            conv = nn.Conv2d(channels, weight.shape[0], tuple(weight.shape[2:]), padding=weight.shape[2] // 2)
            conv.weight.data.copy_(weight)
            conv.bias.data.copy_(bias)
            pending += [conv, nn.ReLU()]
            channels = weight.shape[0]
            if k == 0 or index - indices[k - 1] == 3:  # a block's first conv: its ReLU is a tap (reluB_1)
                slices.append(nn.Sequential(*pending))
                pending = []
                if len(slices) == max_taps:
                    break  # later layers are never used
            gap = indices[k + 1] - index if k + 1 < len(indices) else None
            if gap is not None and gap not in (2, 3):
                raise ValueError(f"vgg_weights: conv {index} is followed by conv {index + gap}; torchvision's "
                                 "numbering puts the next at +2 (same block) or +3 (after a max-pool)")
            if gap == 3:
                pending.append(nn.MaxPool2d(2))
        self.slices = nn.ModuleList(slices)
        self.pools = sum(isinstance(m, nn.MaxPool2d) for m in self.slices.modules())
        self.requires_grad_(False).eval()

    @property
    def min_size(self) -> int:
        """The smallest image side its max-pools can take."""
        return 2**self.pools

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for block in self.slices:
            x = block(x)
            features.append(x)
        return features


def load_vgg_features(path: Path) -> VGGFeatures:
    """VGG19's trunk up to relu5_1 (or a stand-in's last block) from a local file."""
    path = Path(path)
    return VGGFeatures(_convs(read_state_dict(path), path))


class VGGLoss(nn.Module):
    """Σ_i w_i ‖φ_i(fake) − φ_i(real)‖₁ for images in [-1, 1] (grey ones repeated to RGB)."""

    def __init__(self, features: VGGFeatures) -> None:
        super().__init__()
        self.features = features
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return ((x + 1) / 2 - self.mean) / self.std

    def forward(self, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        fake_features = self.features(self._normalise(fake))
        with torch.no_grad():
            real_features = self.features(self._normalise(real))
        terms = [w * F.l1_loss(f, r) for w, f, r in zip(TAP_WEIGHTS, fake_features, real_features, strict=False)]
        return torch.stack(terms).sum()


__all__ = ["TAP_WEIGHTS", "VGGFeatures", "VGGLoss", "load_vgg_features", "read_state_dict"]
