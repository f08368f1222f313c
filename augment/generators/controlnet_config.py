"""The hyperparameters of a ControlNet fit: the job config's `fit:` section for the
`controlnet` family and the constructor config of its modules, painter and training step.

A leaf module (pydantic only), so that config parsing does not import torch.

Two bases:

- own base (default, CPU-sized): a small diffusers `UNet2DConditionModel` in pixel space,
  fitted on the source images for `base_steps` (phase 1), then frozen; the ControlNet is
  trained on top for `steps` (phase 2). The "prompt" is made from the label map's classes
  (`controlnet_train.ClassPrompt`).
- `pretrained`: a local Stable Diffusion folder (diffusers layout, safetensors only,
  `controlnet_sd`); no phase 1: the ControlNet is trained on its VAE latents for `steps`,
  prompted by the fixed text `prompt` (the null prompt is the empty string).

Paper values next to the defaults. ControlNet (Zhang et al. 2023, "Adding Conditional
Control to Text-to-Image Diffusion Models", §3 and §4): the control branch is a trainable
copy of the base's encoder and middle block joined to the locked base by zero convolutions;
AdamW at lr 1e-5 on Stable Diffusion; 50% of the text prompts replaced by empty strings
while training the ControlNet (so it learns the map's semantics from the map alone);
classifier-free guidance at sampling with the control applied to both halves.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, model_validator

from augment.generators.base import PICKLE_SUFFIXES
from augment.generators.family import DataShape, Hyperparameters

Width = Annotated[int, Field(ge=1, le=4096)]


class ControlNetFit(Hyperparameters):
    """Every hyperparameter of a ControlNet fit (CPU-sized defaults for the own base).

    `block_out_channels` sets the base UNet's depth: the image is halved between levels, so
    both image sides must be divisible by 2 ** (levels - 1); each width must be divisible by
    `norm_num_groups`. `attention_levels`: cross-attention to the class prompt in that many
    lowest-resolution levels (the middle block always has it); self-attention at full
    resolution costs (H·W)² per head, so it stays at the small levels.
    `conditioning`: the ControlNet's conditioning image, `onehot` (one channel per class) or
    `palette` (3 channels, a fixed colour per class id, `controlnet_train.palette`).
    `conditioning_embedding_out_channels`: widths of the ControlNet's conditioning encoder;
    it halves the image len - 1 times, to the base's resolution: one entry in pixel space (own
    base), log2(VAE factor) + 1 on latents (four for SD); None: (16,) or (16, 32, 96, 256).
    `p_uncond`: prompt-drop probability while fitting the base (CFG, Ho & Salimans 2022);
    `p_uncond_control`: while fitting the ControlNet (the paper's 0.5).
    `ema_decay`: EMA of the base (phase 1; the frozen base is its EMA) and of the ControlNet
    (phase 2), which paints; 0: no averaging. The ControlNet's EMA restarts from its
    zero-convolution start at the phase change, and the trainer's EMA warm-up counts steps
    from the fit's start, so a weight ema_decay ** steps of that start stays in the average:
    keep (1 - ema_decay) · steps ≫ 1 (0.995 over 2000 steps leaves 4e-5).
    With `pretrained`, the base's fields (base_steps, base_lr, block_out_channels …
    prediction_type, p_uncond) are unused: the folder's UNet and noise schedule rule.
    """

    pretrained: Path | None = Field(None, description="local Stable Diffusion folder (unet/, vae/, text_encoder/, "
                                                      "tokenizer/, scheduler/; safetensors); none: own base")
    prompt: str = Field("", max_length=2000, description="pretrained: the text prompt of every sample")
    base_steps: int = Field(2000, ge=0, le=10_000_000, description="phase 1: base UNet steps (own base)")
    steps: int = Field(2000, ge=0, le=10_000_000, description="phase 2: ControlNet steps")
    batch_size: int = Field(8, ge=1, le=65_536)
    base_lr: float = Field(1e-3, gt=0.0, le=1.0, description="AdamW lr of the own base")
    lr: float = Field(1e-4, gt=0.0, le=1.0, description="AdamW lr of the ControlNet (paper: 1e-5 on SD)")
    warmup_steps: int = Field(100, ge=0, description="linear warm-up from 0 at the start of each phase")
    weight_decay: float = Field(0.0, ge=0.0, le=1.0)
    grad_clip: float = Field(1.0, gt=0.0, description="max global gradient norm")
    block_out_channels: tuple[Width, ...] = Field((32, 64, 64), min_length=1, max_length=6)
    layers_per_block: int = Field(1, ge=1, le=4)
    norm_num_groups: int = Field(8, ge=1, le=1024)
    attention_levels: int = Field(1, ge=0, le=6, description="levels with cross-attention, from the lowest")
    attention_heads: int = Field(4, ge=1, le=64)
    cross_attention_dim: int = Field(32, ge=1, le=4096, description="width of the class prompt tokens")
    conditioning: Literal["onehot", "palette"] = "onehot"
    conditioning_embedding_out_channels: tuple[Width, ...] | None = Field(None, min_length=1, max_length=6)
    num_train_timesteps: int = Field(1000, ge=2, le=100_000)
    beta_schedule: Literal["squaredcos_cap_v2", "linear", "scaled_linear"] = "squaredcos_cap_v2"
    prediction_type: Literal["epsilon", "v_prediction"] = "epsilon"
    p_uncond: float = Field(0.1, ge=0.0, lt=1.0)
    p_uncond_control: float = Field(0.5, ge=0.0, le=1.0)
    flip: bool = Field(True, description="random horizontal flips of (image, map) pairs")
    ema_decay: float = Field(0.995, ge=0.0, lt=1.0)
    bf16: bool = Field(False, description="bf16 autocast on CUDA")

    @model_validator(mode="after")
    def _consistent(self) -> ControlNetFit:
        uneven = [c for c in self.block_out_channels if c % self.norm_num_groups]
        if uneven:
            raise ValueError(f"block_out_channels {list(self.block_out_channels)}: {uneven} not divisible by "
                             f"norm_num_groups={self.norm_num_groups}")
        if self.attention_levels > len(self.block_out_channels):
            raise ValueError(f"attention_levels {self.attention_levels} exceeds the {len(self.block_out_channels)} "
                             f"levels of block_out_channels {list(self.block_out_channels)}")
        attended = self.block_out_channels[len(self.block_out_channels) - max(self.attention_levels, 1):]
        odd = [c for c in attended if c % self.attention_heads]
        if odd:
            raise ValueError(f"attention_heads {self.attention_heads} must divide the widths of the levels with "
                             f"attention {list(attended)}")
        widths = self.conditioning_embedding_out_channels
        if self.pretrained is None and widths is not None and len(widths) != 1:
            raise ValueError(f"conditioning_embedding_out_channels {list(widths)}: the own base works in pixel space, "
                             "so the conditioning encoder must not downsample: give one width, e.g. [16]")
        if self.pretrained is not None and self.pretrained.suffix in PICKLE_SUFFIXES:
            raise ValueError(f"pretrained must be a diffusers folder with safetensors weights, got "
                             f"{str(self.pretrained)!r}: pickled checkpoints are refused")
        return self

    @property
    def embedding_widths(self) -> tuple[int, ...]:
        """The ControlNet's conditioning encoder widths (the base's default when unset)."""
        if self.conditioning_embedding_out_channels is not None:
            return tuple(self.conditioning_embedding_out_channels)
        return (16,) if self.pretrained is None else (16, 32, 96, 256)

    @property
    def base_phase_steps(self) -> int:
        """Phase 1's steps: `base_steps` for the own base, none for a pretrained one."""
        return 0 if self.pretrained is not None else self.base_steps

    def multiple(self) -> int:
        """What both sides of an image (and label map) must be divisible by (own base; a
        pretrained base is checked when loaded, `controlnet_sd.load_base`)."""
        return 1 if self.pretrained is not None else 2 ** (len(self.block_out_channels) - 1)

    def check_shape(self, shape: DataShape) -> None:
        height, width = shape.height, shape.image_width
        if shape.channels not in (1, 3):
            raise ValueError(f"controlnet: channels must be 1 or 3, got {shape.channels}")
        if self.pretrained is not None and shape.channels != 3:
            raise ValueError(f"controlnet: a pretrained Stable Diffusion base paints RGB images, got "
                             f"{shape.channels} channel(s); give the source RGB images")
        if shape.num_classes < 1:
            raise ValueError(f"controlnet: needs at least one class, got class_names={list(shape.class_names)}")
        m = self.multiple()
        if height % m or width % m:
            raise ValueError(f"controlnet: image sides must be divisible by {m} (block_out_channels="
                             f"{list(self.block_out_channels)}), got {width}x{height} "
                             "(WxH); change the source's image size")
