"""A pretrained Stable Diffusion base for the `controlnet` family (`fit.pretrained`): loading
its components from a local diffusers folder, the fixed text prompt, latents, and painting
through diffusers' `StableDiffusionControlNetPipeline`.

The folder has the diffusers layout (`unet/`, `vae/`, `text_encoder/`, `tokenizer/`,
`scheduler/`); weights are read with `use_safetensors=True` and a part holding only pickles
is refused before anything is loaded. The text encoder runs once, at load: the prompt's and
the empty string's embeddings are kept (`TextPrompt`), so painting needs neither it nor
`transformers` (the optional `sd` extra, imported here only when a base is loaded).

The ControlNet learns on the VAE's latents (z = scaling_factor · a draw of q(z | x)); its
conditioning encoder halves the pixel-space conditioning image down to the latents.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from diffusers import (AutoencoderKL, ControlNetModel, DDPMScheduler, StableDiffusionControlNetPipeline,
                       UNet2DConditionModel)
from torch import nn

from augment.generators.base import refuse_pickles
from augment.generators.controlnet_config import ControlNetFit
from augment.generators.family import DataShape
from augment.generators.tensors import to_uint8

PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


class TextPrompt(nn.Module):
    """The fixed text prompt's embeddings and the empty string's (the null prompt ∅), with
    `ClassPrompt`'s call: the map's classes are not used, `drop` picks ∅ (B × L × D)."""

    def __init__(self, length: int, dim: int) -> None:
        super().__init__()
        self.register_buffer("cond", torch.zeros(1, length, dim))
        self.register_buffer("uncond", torch.zeros(1, length, dim))

    def forward(self, present: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
        return torch.where(drop.view(-1, 1, 1), self.uncond, self.cond)


def vae_factor(vae: AutoencoderKL) -> int:
    """How many pixels a latent spans per side (8 for Stable Diffusion)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def check_folder(folder: Path) -> None:
    """ValueError naming the folder or part: missing parts, pickled weights."""
    if not folder.is_dir():
        raise ValueError(f"controlnet: pretrained {str(folder)!r} is not a folder")
    missing = [part for part in PARTS if not (folder / part).is_dir()]
    if missing:
        raise ValueError(f"controlnet: pretrained {str(folder)!r} lacks {', '.join(missing)}/ (a diffusers Stable "
                         f"Diffusion folder has {', '.join(PARTS)})")
    for part in ("unet", "vae", "text_encoder"):
        refuse_pickles(folder / part)


def encode_prompt(folder: Path, text: str) -> TextPrompt:
    """The text encoder's last hidden states for `text` and for "" (padded to the tokenizer's
    length, as Stable Diffusion's pipelines do)."""
    try:
        from transformers import CLIPTextModel, CLIPTokenizer
    except ImportError:
        raise ValueError("controlnet: a pretrained Stable Diffusion base needs transformers: "
                         "pip install 'synthaug[sd]'") from None
    with torch.random.fork_rng(devices=[]):  # constructors draw weights that the load replaces
        encoder = CLIPTextModel.from_pretrained(folder / "text_encoder", use_safetensors=True).eval()
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    ids = tokenizer([text, ""], padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    with torch.no_grad():
        hidden = encoder(ids)[0]
    prompt = TextPrompt(hidden.shape[1], hidden.shape[2])
    prompt.cond.copy_(hidden[:1])
    prompt.uncond.copy_(hidden[1:])
    return prompt


def load_base(fit: ControlNetFit, shape: DataShape) -> dict[str, nn.Module]:
    """The frozen parts (`unet`, `vae`, `prompt`) from `fit.pretrained`, size checks done."""
    folder = Path(str(fit.pretrained))
    check_folder(folder)
    with torch.random.fork_rng(devices=[]):  # constructors draw weights that the loads replace
        unet = UNet2DConditionModel.from_pretrained(folder / "unet", use_safetensors=True, low_cpu_mem_usage=False)
        vae = AutoencoderKL.from_pretrained(folder / "vae", use_safetensors=True, low_cpu_mem_usage=False)
    check_sizes(fit, shape, unet, vae)
    return {"unet": unet, "vae": vae, "prompt": encode_prompt(folder, fit.prompt)}


def check_sizes(fit: ControlNetFit, shape: DataShape, unet: UNet2DConditionModel, vae: AutoencoderKL) -> None:
    """The conditioning encoder must halve down to the latents; the UNet must halve those."""
    factor = vae_factor(vae)
    widths = fit.embedding_widths
    if 2 ** (len(widths) - 1) != factor:
        raise ValueError(f"controlnet: conditioning_embedding_out_channels {list(widths)} halves the image "
                         f"{len(widths) - 1} times, but the VAE's latents are {factor}x smaller: give "
                         f"{int(math.log2(factor)) + 1} widths")
    multiple = factor * 2 ** (len(unet.config.block_out_channels) - 1)
    if shape.height % multiple or shape.image_width % multiple:
        raise ValueError(f"controlnet: with this Stable Diffusion base image sides must be divisible by {multiple} "
                         f"(VAE {factor}x, then the UNet's halvings), got {shape.image_width}x{shape.height} (WxH)")


def train_scheduler(folder: Path) -> DDPMScheduler:
    """The base's noise schedule as the DDPM training scheduler (its `scheduler/` config)."""
    return DDPMScheduler.from_pretrained(folder / "scheduler")


@torch.no_grad()
def encode(vae: AutoencoderKL, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """z = scaling_factor · a draw of q(z | x), for images in [-1, 1]."""
    return vae.encode(images).latent_dist.sample(generator=generator) * vae.config.scaling_factor


def paint(*, unet: UNet2DConditionModel, vae: AutoencoderKL, controlnet: ControlNetModel, prompt: nn.Module,
          scheduler: object, cond: torch.Tensor, seeds: list[int], w: float, steps: int, scale: float) -> np.ndarray:
    """One batch through `StableDiffusionControlNetPipeline`: x_T per sample from its seed,
    guidance_scale = 1 + w (the family's w), the control on both halves; uint8 N×H×W×3."""
    b, (height, width), factor = len(seeds), cond.shape[2:], vae_factor(vae)
    pipe = StableDiffusionControlNetPipeline(vae=vae, text_encoder=None, tokenizer=None, unet=unet,  # type: ignore[arg-type]
                                             controlnet=controlnet, scheduler=scheduler,  # type: ignore[arg-type]
                                             safety_checker=None, feature_extractor=None,  # type: ignore[arg-type]
                                             requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    latent = (1, unet.config.in_channels, height // factor, width // factor)
    latents = torch.cat([torch.randn(latent, generator=g) for g in gens]).to(unet.device)
    out = pipe(prompt_embeds=prompt.cond.expand(b, -1, -1), negative_prompt_embeds=prompt.uncond.expand(b, -1, -1),
               image=cond, height=height, width=width, num_inference_steps=steps, guidance_scale=1.0 + w,
               controlnet_conditioning_scale=scale, generator=gens, latents=latents, output_type="pt",
               return_dict=False)[0]
    return to_uint8(out * 2.0 - 1.0)


__all__ = ["TextPrompt", "check_sizes", "encode", "load_base", "paint", "train_scheduler", "vae_factor"]
