"""The ControlNet painter: a frozen base UNet, its class prompt and a ControlNet, painting one
image per label map (the pipeline: "predict, then `scheduler.step`", written out).

A painted row is the reverse process at the map's H×W from x_T ~ N(0, I), and its mask is
the map it was painted from, byte for byte. Classifier-free guidance (Ho & Salimans 2022,
eq. 6, the diffusion family's w; diffusers' guidance_scale is 1 + w):

    ε̃ = (1 + w) · ε(x_t, t, prompt(map), c) − w · ε(x_t, t, ∅, c)

where prompt(map) is the map's class tokens (`controlnet_train.ClassPrompt`), ∅ the learned
null prompt, and c the conditioning image: the control goes to both halves, as in the paper
(§3.4) and diffusers' pipelines without guess mode, so w strengthens what the class prompt
adds over the map's layout alone. `controlnet_conditioning_scale` multiplies the ControlNet's
residuals. A sample's x_T (and any noise an ancestral scheduler adds) comes from
`torch.Generator().manual_seed(seed)` on the CPU: the same seed gives the same bytes.

With a pretrained Stable Diffusion base (`fit.pretrained`) the same loop runs on the VAE's
latents inside diffusers' `StableDiffusionControlNetPipeline` (`controlnet_sd.paint`), the
prompt being the fit's text and ∅ the empty string.

Saved as `unet/` and `controlnet/` (diffusers folders, safetensors; with a pretrained base
also `vae/` and `scheduler/`), `prompt.safetensors` (the class tokens, or the text
embeddings) and `config.json` (format `synthaug.controlnet`, hyperparameters, data shape,
seed; written last): the folder is self-contained.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL, ControlNetModel, DDPMScheduler, UNet2DConditionModel
from safetensors.torch import load_file, save_file
from torch import nn

from augment.generators.base import SampleRequest, checkpoint_sha256, refuse_pickles
from augment.generators.checkpoint import CONFIG, read_checkpoint_config, state_tensors
from augment.generators.controlnet_config import ControlNetFit
from augment.generators.controlnet_train import (ClassPrompt, build_train_scheduler, classes_present,
                                                 conditioning_image, controlled_noise)
from augment.generators.diffusion import make_sampling_scheduler
from augment.generators.family import DataShape
from augment.generators.label_maps import checked_label_maps
from augment.generators.tensors import to_uint8
from augment.sample import GeneratorInfo, Sample

FORMAT, FORMAT_VERSION = "synthaug.controlnet", 1
PROMPT = "prompt.safetensors"


class ControlNetPainter:
    """Holds the base, prompt and ControlNet for painting; built from the hyperparameters,
    data shape and seed of the fit."""

    name = "controlnet"

    def __init__(self, fit: ControlNetFit, shape: DataShape, unet: UNet2DConditionModel, prompt: nn.Module,
                 controlnet: ControlNetModel, *, vae: AutoencoderKL | None = None,
                 train_scheduler: DDPMScheduler | None = None, seed: int = 0,
                 device: str | torch.device | None = None, checkpoint_sha256: str | None = None) -> None:
        self.fit, self.shape, self.seed = fit, shape, seed
        # No device: stay where the modules are (a training state's must not move).
        self.device = torch.device(device) if device is not None else next(unet.parameters()).device
        self.unet, self.prompt, self.controlnet = unet.to(self.device), prompt.to(self.device), \
            controlnet.to(self.device)
        self.vae = None if vae is None else vae.to(self.device)  # a pretrained base paints latents
        self.train_scheduler = build_train_scheduler(fit) if train_scheduler is None else train_scheduler
        self.checkpoint_sha256 = checkpoint_sha256

    @property
    def multiple(self) -> int:
        """What both sides of a map must be divisible by: the UNet's halvings (after the VAE's)."""
        if self.vae is None:
            return self.fit.multiple()
        from augment.generators.controlnet_sd import vae_factor

        return vae_factor(self.vae) * 2 ** (len(self.unet.config.block_out_channels) - 1)

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.shape.class_names

    def _maps(self, request: SampleRequest) -> list[np.ndarray]:
        """The request's label maps, checked: uint16 H×W, sides divisible, ids below the class count."""
        multiple = self.multiple

        def size_problem(label_map: np.ndarray) -> str | None:
            if label_map.shape[0] % multiple == 0 and label_map.shape[1] % multiple == 0:
                return None
            return f"the model halves it down to 1/{multiple}, so both sides must be divisible by {multiple}"

        return checked_label_maps(self.name, request, self.class_names, size_problem)

    @torch.no_grad()
    def sample(self, request: SampleRequest, *, guidance: float = 2.0, steps: int = 25, scheduler: str = "ddim",
               controlnet_conditioning_scale: float = 1.0, batch_size: int = 8) -> list[Sample]:
        """One image per label map, at the map's H×W; the sample's mask is the map itself."""
        maps = self._maps(request)
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"{self.name}: steps must be a positive integer, got {steps!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"{self.name}: batch_size must be a positive integer, got {batch_size!r}")
        make_sampling_scheduler(self.train_scheduler, scheduler)  # validates the name before any work
        params = json.dumps({"guidance": float(guidance), "steps": steps, "scheduler": scheduler,
                             "controlnet_conditioning_scale": float(controlnet_conditioning_scale)}, sort_keys=True)
        info = GeneratorInfo(name=self.name, checkpoint_sha256=self.checkpoint_sha256, params_json=params)
        groups: dict[tuple[int, ...], list[int]] = {}  # one forward pass is one size
        for i, label_map in enumerate(maps):
            groups.setdefault(label_map.shape, []).append(i)
        made: dict[int, np.ndarray] = {}
        for indices in groups.values():
            for start in range(0, len(indices), batch_size):
                chunk = indices[start:start + batch_size]
                images = self._denoise([maps[i] for i in chunk], [int(request.seeds[i]) for i in chunk],
                                       float(guidance), steps, scheduler, float(controlnet_conditioning_scale))
                made.update(zip(chunk, images, strict=True))
        parents = request.parent_ids or [None] * len(maps)
        labels = [None if int(label) < 0 else int(label) for label in request.labels]  # -1: none
        return [Sample(id=request.ids[i], image=made[i], label=labels[i], mask=maps[i], source=self.name,
                       generator=info, seed=int(request.seeds[i]), parent_id=parents[i])
                for i in range(len(maps))]

    def _denoise(self, maps: list[np.ndarray], seeds: list[int], w: float, steps: int, scheduler: str,
                 scale: float) -> np.ndarray:
        """The reverse process for one batch of same-size maps; uint8 N×H×W×C."""
        for module in (self.unet, self.prompt, self.controlnet, self.vae):
            if module is not None:
                module.eval()
        num_classes, b = self.shape.num_classes, len(maps)
        labels = torch.from_numpy(np.stack(maps).astype(np.int64)).to(self.device)
        # 1. A fresh (stateful, multistep) scheduler per batch.
        sched = make_sampling_scheduler(self.train_scheduler, scheduler)
        if self.vae is not None:  # the same steps, written out by diffusers' pipeline
            from augment.generators.controlnet_sd import paint

            return paint(unet=self.unet, vae=self.vae, controlnet=self.controlnet, prompt=self.prompt,
                         scheduler=sched, cond=conditioning_image(labels, self.fit, num_classes), seeds=seeds,
                         w=w, steps=steps, scale=scale)
        sched.set_timesteps(steps, device=self.device)
        # 2. x_T ~ N(0, I) per sample from its own generator (batch-independent).
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        shape = (1, self.shape.channels, *maps[0].shape)
        x = torch.cat([torch.randn(shape, generator=g) for g in gens]).to(self.device) * sched.init_noise_sigma
        # 3. Prompt and control: [map's prompt; ∅] with the same c, one forward of 2B (B with w = 0).
        present = classes_present(labels, num_classes)
        halves = [False, True] if w else [False]
        hidden = torch.cat([self.prompt(present, torch.full((b,), drop, device=self.device)) for drop in halves])
        cond = conditioning_image(labels, self.fit, num_classes).repeat(len(halves), 1, 1, 1)
        for t in sched.timesteps:
            # 4. Predict the guided noise (eq. 6), then 5. step x_t → x_{t-1}.
            x_in = sched.scale_model_input(x, t).repeat(len(halves), 1, 1, 1)
            eps = controlled_noise(self.unet, self.controlnet, x_in, t, hidden, cond, scale)
            if w:
                eps = (1 + w) * eps[:b] - w * eps[b:]
            x = sched.step(eps, t, x, generator=gens, return_dict=False)[0]
        return to_uint8(x)

    def save_pretrained(self, directory: Path) -> None:
        """`unet/`, `controlnet/` (safetensors), `prompt.safetensors`, then `config.json` (last:
        it marks a complete save)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.unet.save_pretrained(directory / "unet", safe_serialization=True)
        self.controlnet.save_pretrained(directory / "controlnet", safe_serialization=True)
        if self.vae is not None:
            self.vae.save_pretrained(directory / "vae", safe_serialization=True)
            self.train_scheduler.save_pretrained(directory / "scheduler")
        save_file(state_tensors(self.prompt), str(directory / PROMPT))
        meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "fit": self.fit.model_dump(mode="json"),
                "shape": self.shape.as_dict(), "seed": self.seed}
        (directory / CONFIG).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        self.checkpoint_sha256 = checkpoint_sha256(directory)

    @classmethod
    def from_pretrained(cls, directory: Path, *, device: str | torch.device = "cpu") -> ControlNetPainter:
        """Load a folder written by `save_pretrained`; pickles are refused, safetensors only."""
        directory = Path(directory)
        fit, shape, seed = read_checkpoint_config(directory, files=(PROMPT, CONFIG), format_name=FORMAT,
                                                  fit_model=ControlNetFit, family="controlnet",
                                                  version=FORMAT_VERSION)
        parts = ("unet", "controlnet") if fit.pretrained is None else ("unet", "controlnet", "vae")
        for part in parts:
            refuse_pickles(directory / part)
        # Forked RNG: constructors draw weights that the loads replace. low_cpu_mem_usage=False:
        # the small models here need no `accelerate`.
        with torch.random.fork_rng(devices=[]):
            unet = UNet2DConditionModel.from_pretrained(directory / "unet", use_safetensors=True,
                                                        low_cpu_mem_usage=False)
            controlnet = ControlNetModel.from_pretrained(directory / "controlnet", use_safetensors=True,
                                                         low_cpu_mem_usage=False)
            vae = None if fit.pretrained is None else AutoencoderKL.from_pretrained(
                directory / "vae", use_safetensors=True, low_cpu_mem_usage=False)
        tensors = load_file(str(directory / PROMPT))
        if fit.pretrained is None:
            prompt: nn.Module = ClassPrompt(shape.num_classes, fit.cross_attention_dim)
            scheduler = None
        else:  # the saved text embeddings: painting needs no text encoder
            from augment.generators.controlnet_sd import TextPrompt

            prompt = TextPrompt(*tensors["cond"].shape[1:])
            scheduler = DDPMScheduler.from_pretrained(directory / "scheduler")
        prompt.load_state_dict(tensors, strict=True)
        return cls(fit, shape, unet, prompt, controlnet, vae=vae, train_scheduler=scheduler, seed=seed,
                   device=device, checkpoint_sha256=checkpoint_sha256(directory))


__all__ = ["ControlNetPainter"]
