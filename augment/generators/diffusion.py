"""Class-conditional diffusion with classifier-free guidance: model, guidance, pipeline.

- Model (weights): a diffusers `UNet2DModel` whose class embedding has `num_classes + 1`
  rows; the last row is the NULL class ∅ that classifier-free guidance trains and samples
  with (Ho & Salimans 2022, "Classifier-Free Diffusion Guidance", arXiv:2207.12598).
- Algorithms (no weights): the training `DDPMScheduler` (Ho et al. 2020, arXiv:2006.11239)
  and the sampling schedulers built from its noise schedule: DDIM (Song et al. 2021,
  arXiv:2010.02502), DPM-Solver++ (Lu et al. 2022, arXiv:2211.01095), ancestral DDPM.
- Pipeline (glue): `ClassConditionalDiffusion.sample`, a loop "predict, then
  `scheduler.step`". Training lives in `diffusion_train.py` (the step) and `trainer.py`.

Hyperparameters: `DiffusionFit` (declared in `diffusion_config.py`, the job config's `fit:`
section) plus the data's `DataShape` are what the model is built from.

A sample depends only on (weights, its seed, label, guidance, scheduler, steps): its initial
noise, and any noise a scheduler adds per step, come from its own `torch.Generator`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    UNet2DModel,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from augment.generators.base import SampleRequest, checkpoint_sha256, refuse_pickles
from augment.generators.diffusion_config import DiffusionFit
from augment.generators.family import DataShape
from augment.generators.tensors import to_uint8
from augment.sample import GeneratorInfo, Sample

SamplerName = Literal["ddim", "dpm++", "ddpm"]
SAMPLERS: tuple[str, ...] = ("ddim", "dpm++", "ddpm")
PIPELINE_FILE = "synthaug.json"
FORMAT = "synthaug.diffusion/1"


def gpu_preset(image_size: int, **overrides: Any) -> DiffusionFit:
    """GPU-sized hyperparameters for `image_size`: Ho et al. 2020's CIFAR-10 UNet widths
    (128, 256, 256, 256) up to 32 px, deeper/wider above; 2 ResNet layers per level,
    attention, bf16, batch 128, lr 2e-4 (the paper's), EMA 0.9999 and 100k steps.
    `overrides` set any other field of `DiffusionFit`."""
    if image_size <= 32:
        widths: tuple[int, ...] = (128, 256, 256, 256)
    elif image_size <= 64:
        widths = (128, 256, 384, 512)
    else:
        widths = (128, 128, 256, 384, 512)
    preset: dict[str, Any] = {
        "block_out_channels": widths, "layers_per_block": 2, "attention": True, "norm_num_groups": 32,
        "lr": 2e-4, "warmup_steps": 1000, "batch_size": 128, "steps": 100_000, "ema_decay": 0.9999, "bf16": True,
    }
    preset.update(overrides)
    return DiffusionFit(**preset)


def build_unet(fit: DiffusionFit, shape: DataShape, *, generator: torch.Generator | None = None) -> UNet2DModel:
    """The noise-prediction network ε_θ(x_t, t, c) with `num_classes + 1` class embeddings
    (the last is the NULL class ∅).

    With `generator`, the weights are re-drawn from it (PyTorch's default distributions:
    U(±1/sqrt(fan_in)) for conv/linear weights and biases, N(0, 1) for embeddings), so an
    initialisation is reproducible without seeding the global RNG."""
    fit.check_shape(shape)
    levels = len(fit.block_out_channels)
    down = tuple("AttnDownBlock2D" if fit.attention and i == levels - 1 else "DownBlock2D"
                 for i in range(levels))
    up = tuple("AttnUpBlock2D" if fit.attention and i == 0 else "UpBlock2D" for i in range(levels))
    unet = UNet2DModel(
        sample_size=shape.image_size, in_channels=shape.channels, out_channels=shape.channels,
        block_out_channels=tuple(fit.block_out_channels), layers_per_block=fit.layers_per_block,
        down_block_types=down, up_block_types=up, add_attention=fit.attention,
        norm_num_groups=fit.norm_num_groups, num_class_embeds=shape.num_classes + 1,
    )
    if generator is not None:
        _seeded_init_(unet, generator)
    return unet


@torch.no_grad()
def _seeded_init_(model: torch.nn.Module, generator: torch.Generator) -> None:
    for module in model.modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            bound = module.weight[0].numel() ** -0.5
            module.weight.uniform_(-bound, bound, generator=generator)
            if module.bias is not None:
                module.bias.uniform_(-bound, bound, generator=generator)
        elif isinstance(module, torch.nn.Embedding):
            module.weight.normal_(generator=generator)


def build_train_scheduler(fit: DiffusionFit) -> DDPMScheduler:
    """The forward process q(x_t | x_0) of Ho et al. 2020, eq. 4; also the noise schedule
    every sampling scheduler is built from."""
    return DDPMScheduler(num_train_timesteps=fit.num_train_timesteps, beta_schedule=fit.beta_schedule,
                         prediction_type=fit.prediction_type, clip_sample=True)


def timestep_spacing(train_scheduler: SchedulerMixin) -> str:
    """Where sampling starts. An epsilon model cannot start at t = T-1 on the cosine schedule:
    ᾱ(T-1) ≈ 2e-9, so x0 = (x - √(1-ᾱ) ε) / √ᾱ multiplies any ε error by ~20,000 and the
    samples saturate (digits: domain-feature precision 0.28 and FD 106 at w=2 from T-1,
    0.96 and 8.5 from "leading" t = 960). Starting at T-1 ("trailing", Lin et al. 2024,
    arXiv:2305.08891) is for v-prediction, which stays well posed at zero SNR."""
    return "trailing" if train_scheduler.config.prediction_type == "v_prediction" else "leading"


def make_sampling_scheduler(train_scheduler: SchedulerMixin, name: str) -> SchedulerMixin:
    """A fresh sampling scheduler on the training noise schedule (see `timestep_spacing`)."""
    config, spacing = train_scheduler.config, timestep_spacing(train_scheduler)
    if name == "ddim":
        # No x0 clipping: clipping the guided x0 estimate to [-1, 1] loses the class (digits
        # at w=2: classifier confidence 0.26 with clipping, 1.00 without; from t = 960).
        return DDIMScheduler.from_config(config, timestep_spacing=spacing, clip_sample=False)
    if name == "dpm++":
        return DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++", solver_order=2,
                                                       timestep_spacing=spacing)
    if name == "ddpm":
        return DDPMScheduler.from_config(config, timestep_spacing=spacing)
    raise ValueError(f"unknown scheduler {name!r}; choose one of {SAMPLERS}")


def guided_noise(model: torch.nn.Module, x: torch.Tensor, t: torch.Tensor | int, labels: torch.Tensor,
                 w: float | torch.Tensor, *, null_label: int | None = None) -> torch.Tensor:
    """Classifier-free guided prediction (Ho & Salimans 2022, eq. 6):

        ε̃(x, c) = (1 + w) · ε(x, c) − w · ε(x, ∅)

    `w` is a float or a per-sample tensor of shape (B,); w = 0 is the plain conditional
    model. Both terms come from ONE forward of batch 2B: [x; x] with labels [c; ∅]. `null_label`
    defaults to the model's last class embedding (`num_class_embeds - 1`).
    """
    if null_label is None:
        null_label = int(model.config.num_class_embeds) - 1
    batch = x.shape[0]
    # 1. Stack the conditional and unconditional halves into one batch of 2B.
    x2 = torch.cat([x, x])
    labels2 = torch.cat([labels, torch.full_like(labels, null_label)])
    t = torch.as_tensor(t, device=x.device)
    t2 = t.expand(2 * batch) if t.ndim == 0 else torch.cat([t, t])
    # 2. One forward pass, then split into ε(x, c) and ε(x, ∅).
    eps = model(x2, t2, class_labels=labels2, return_dict=False)[0]
    eps_cond, eps_uncond = eps[:batch], eps[batch:]
    # 3. Combine (eq. 6); w broadcasts over C, H, W.
    w_t = torch.as_tensor(w, dtype=eps.dtype, device=eps.device).reshape(-1, *([1] * (eps.ndim - 1)))
    return (1 + w_t) * eps_cond - w_t * eps_uncond


def to_model_space(images: np.ndarray) -> torch.Tensor:
    """uint8 NxHxWxC → float32 NxCxHxW in [-1, 1] (the data scaling of Ho et al. 2020, §3.3)."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


class ClassConditionalDiffusion:
    """Sampling pipeline: a (EMA) UNet, the training noise schedule and class names.

    `fit` and `seed` are the hyperparameters and seed it was trained with (saved and loaded
    with it; None for a checkpoint saved before they were recorded, or built by hand)."""

    name = "diffusion"

    def __init__(self, unet: UNet2DModel, scheduler: DDPMScheduler, class_names: tuple[str, ...] = (), *,
                 default_guidance: float = 2.0, checkpoint_sha256: str | None = None,
                 fit: DiffusionFit | None = None, seed: int | None = None) -> None:
        if unet.config.num_class_embeds is None or unet.config.num_class_embeds < 2:
            raise ValueError(f"unet needs num_class_embeds >= 2 (classes + NULL), got {unet.config.num_class_embeds}")
        self.unet = unet.eval()
        self.scheduler = scheduler
        self.num_classes = int(unet.config.num_class_embeds) - 1
        self.class_names = tuple(class_names) or tuple(str(i) for i in range(self.num_classes))
        if len(self.class_names) != self.num_classes:
            raise ValueError(f"{len(self.class_names)} class names for {self.num_classes} classes")
        self.default_guidance = float(default_guidance)
        self.checkpoint_sha256 = checkpoint_sha256
        self.fit, self.seed = fit, seed

    @property
    def device(self) -> torch.device:
        return self.unet.device

    def to(self, device: str | torch.device) -> ClassConditionalDiffusion:
        self.unet.to(device)
        return self

    def _guidance_for(self, labels: list[int], guidance: float | dict[int, float] | None) -> list[float]:
        if guidance is None:
            return [self.default_guidance] * len(labels)
        if isinstance(guidance, dict):
            guidance = {int(c): float(w) for c, w in guidance.items()}  # JSON keys arrive as strings
            unknown = sorted(set(guidance) - set(range(self.num_classes)))
            if unknown:
                raise ValueError(f"guidance given for unknown classes {unknown} (num_classes={self.num_classes})")
            return [float(guidance.get(c, self.default_guidance)) for c in labels]
        return [float(guidance)] * len(labels)

    @torch.no_grad()
    def sample(self, request: SampleRequest, *, guidance: float | dict[int, float] | None = None, steps: int = 25,
               scheduler: str = "ddim", batch_size: int = 64) -> list[Sample]:
        """One image per request entry. `guidance` is w of eq. 6, one value or {class id: w}
        (classes missing from the dict get `default_guidance`)."""
        bad = [c for c in request.labels if not 0 <= c < self.num_classes]
        if bad:
            raise ValueError(f"labels {bad[:5]} outside [0, {self.num_classes})")
        if steps < 1 or batch_size < 1:
            raise ValueError(f"steps and batch_size must be >= 1, got {steps}, {batch_size}")
        make_sampling_scheduler(self.scheduler, scheduler)  # validates the name before any work
        ws = self._guidance_for(list(request.labels), guidance)
        parents = request.parent_ids or [None] * len(request.labels)
        out: list[Sample] = []
        for start in range(0, len(request.labels), batch_size):
            stop = start + batch_size
            images = self._denoise(request.labels[start:stop], request.seeds[start:stop], ws[start:stop],
                                   steps=steps, scheduler=scheduler)
            for i, image in enumerate(images, start):
                params = json.dumps({"guidance": ws[i], "scheduler": scheduler, "steps": steps}, sort_keys=True)
                out.append(Sample(id=request.ids[i], image=image, label=int(request.labels[i]), source="diffusion",
                                  seed=int(request.seeds[i]), parent_id=parents[i],
                                  generator=GeneratorInfo(name=self.name, checkpoint_sha256=self.checkpoint_sha256,
                                                          params_json=params)))
        return out

    def _denoise(self, labels: list[int], seeds: list[int], ws: list[float], *, steps: int,
                 scheduler: str) -> np.ndarray:
        """The reverse process for one batch; returns uint8 NxHxWxC."""
        cfg = self.unet.config
        dtype = self.unet.dtype
        # 1. A fresh (stateful, multistep) scheduler per batch.
        sched = make_sampling_scheduler(self.scheduler, scheduler)
        sched.set_timesteps(steps, device=self.device)
        # 2. x_T ~ N(0, I), drawn per sample from its own generator (batch-independent).
        gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
        shape = (1, cfg.in_channels, cfg.sample_size, cfg.sample_size)
        x = torch.cat([torch.randn(shape, generator=g) for g in gens]).to(self.device, dtype)
        x = x * sched.init_noise_sigma
        c = torch.tensor(labels, dtype=torch.long, device=self.device)
        w = torch.tensor(ws, dtype=dtype, device=self.device)
        for t in sched.timesteps:
            # 3. Predict the guided noise (eq. 6), then 4. step x_t → x_{t-1}; a scheduler
            #    that adds noise draws it from the same per-sample generators.
            eps = guided_noise(self.unet, sched.scale_model_input(x, t), t, c, w)
            x = sched.step(eps, t, x, generator=gens, return_dict=False)[0]
        return to_uint8(x)

    def save_pretrained(self, directory: str | Path) -> None:
        """A diffusers-layout folder: `unet/` (safetensors), `scheduler/` and `synthaug.json`
        (class names, shape, and the `fit` hyperparameters and seed when known)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.unet.save_pretrained(directory / "unet", safe_serialization=True)
        self.scheduler.save_pretrained(directory / "scheduler")
        cfg = self.unet.config
        meta = {"format": FORMAT, "class_names": list(self.class_names), "image_size": cfg.sample_size,
                "channels": cfg.in_channels, "num_classes": self.num_classes, "null_label": self.num_classes,
                "default_guidance": self.default_guidance}
        if self.fit is not None:
            meta.update({"fit": self.fit.model_dump(mode="json"), "seed": self.seed})
        (directory / PIPELINE_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        self.checkpoint_sha256 = checkpoint_sha256(directory)

    @classmethod
    def from_pretrained(cls, directory: str | Path, *, device: str | torch.device = "cpu") -> ClassConditionalDiffusion:
        """Load a folder written by `save_pretrained`; pickled weights are refused (ValueError)."""
        directory = Path(directory)
        refuse_pickles(directory)
        refuse_pickles(directory / "unet")
        meta_path = directory / PIPELINE_FILE
        if not meta_path.is_file():
            raise ValueError(f"{directory}: no {PIPELINE_FILE}; not a synthaug diffusion checkpoint")
        meta = json.loads(meta_path.read_text())
        # low_cpu_mem_usage=False: the small UNets here need no `accelerate` (else a notice per load).
        unet = UNet2DModel.from_pretrained(directory / "unet", use_safetensors=True,
                                           low_cpu_mem_usage=False).to(device)
        scheduler = DDPMScheduler.from_pretrained(directory / "scheduler")
        # Checkpoints saved before the hyperparameters were recorded have no "fit".
        fit = DiffusionFit.model_validate(meta["fit"]) if "fit" in meta else None
        return cls(unet, scheduler, tuple(meta.get("class_names", ())),
                   default_guidance=float(meta.get("default_guidance", 2.0)),
                   checkpoint_sha256=checkpoint_sha256(directory), fit=fit, seed=meta.get("seed"))

    @classmethod
    def from_fit(cls, fit: DiffusionFit, shape: DataShape, unet: UNet2DModel, *, seed: int | None = None,
                 default_guidance: float = 2.0) -> ClassConditionalDiffusion:
        """A pipeline around freshly trained (EMA) weights; not saved yet, so no checkpoint hash."""
        return cls(unet, build_train_scheduler(fit), shape.class_names, default_guidance=default_guidance,
                   fit=fit, seed=seed)


__all__ = [
    "ClassConditionalDiffusion",
    "DiffusionFit",
    "build_train_scheduler",
    "build_unet",
    "gpu_preset",
    "guided_noise",
    "make_sampling_scheduler",
    "to_model_space",
]
