"""Training of the `controlnet` family: the modules, their optimizers and one iteration in
each of the fit's two phases (the loop around it is the shared trainer).

Modules (paper names: Zhang et al. 2023, §3.1; the base is their locked F(x; Θ)):

- `unet`: the base ε_θ(x_t, t, prompt), a diffusers `UNet2DConditionModel` in pixel space;
- `prompt`: `ClassPrompt`, the base's "text" made from the label map's classes;
- `controlnet`: the trainable copy F(x; Θ_c) of the base's encoder and middle block with its
  zero convolutions Z, a diffusers `ControlNetModel` (`from_unet`).

Phase 1, steps [0, base_steps): `unet` and `prompt` descend the DDPM loss (Ho et al. 2020,
eq. 14) with the prompt replaced by the null prompt with probability `p_uncond` (Ho &
Salimans 2022, Alg. 1).

At step base_steps the base is frozen as its EMA (the averaged weights are what it keeps),
and the ControlNet is made again by `ControlNetModel.from_unet` from that base: encoder
copied, zero convolutions zero (diffusers builds them so), conditioning encoder from the
seed. Its EMA copy restarts from these weights.

Phase 2, steps [base_steps, base_steps + steps): the ControlNet alone descends the same
loss through the frozen base, ε = base(x_t, t, prompt; + Z(F(x_t + Z(c), t, prompt; Θ_c)))
(paper eq. 2), with the prompt dropped with probability `p_uncond_control` (the paper's
50% empty prompts). The base is called with its parameters detached (gradients reach the
residuals, never its weights, and no DDP hook fires).

Randomness: every draw (batch, flips, t, ε, prompt drops) comes from the state's stateful
stream `state.rng` (saved with the state); the modules from generators derived from the seed.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import ControlNetModel, DDPMScheduler, UNet2DConditionModel
from torch import nn

from augment.generators.controlnet_config import ControlNetFit
from augment.generators.diffusion import _seeded_init_
from augment.generators.family import DataShape, TrainingData
from augment.generators.spade_train import palette
from augment.generators.tensors import to_float
from augment.generators.trainer import TrainState, autocast, descend
from augment.seeding import derive_seed

# Independent random streams under the seed (keys for derive_seed).
_INIT_UNET, _INIT_PROMPT, _INIT_CONTROL = 1, 2, 3
COND_EMBEDDING = "controlnet_cond_embedding."  # the ControlNet's own conditioning encoder


class ClassPrompt(nn.Module):
    """The base's prompt from a label map: token c is `present[c]` when class c occurs in the
    map, else `absent[c]`, so the prompt says which classes the image holds (B × C × D). The
    null prompt ∅ (C learned tokens) replaces it where `drop` is set: classifier-free guidance
    contrasts ε(x, map's prompt) with ε(x, ∅)."""

    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__()
        self.present = nn.Parameter(torch.zeros(num_classes, dim))
        self.absent = nn.Parameter(torch.zeros(num_classes, dim))
        self.null = nn.Parameter(torch.zeros(num_classes, dim))

    def forward(self, present: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
        """`present`: bool B × C (class c in map b); `drop`: bool B (use ∅)."""
        tokens = torch.where(present.unsqueeze(-1), self.present, self.absent)
        # every parameter takes part in every call (DDP needs no unused-parameter search)
        return torch.where(drop.view(-1, 1, 1), self.null.expand_as(tokens), tokens)


def classes_present(maps: torch.Tensor, num_classes: int) -> torch.Tensor:
    """bool B × C: which class ids occur in each long B × H × W map."""
    flat = maps.flatten(1)
    return torch.zeros(len(maps), num_classes, dtype=torch.bool, device=maps.device).scatter_(
        1, flat, torch.ones_like(flat, dtype=torch.bool))


def conditioning_image(maps: torch.Tensor, fit: ControlNetFit, num_classes: int) -> torch.Tensor:
    """The ControlNet's input c (B × channels × H × W, in [0, 1] as diffusers' pipelines give
    it): one-hot planes, or each class's palette colour."""
    if fit.conditioning == "onehot":
        return F.one_hot(maps, num_classes).permute(0, 3, 1, 2).float()
    colours = torch.from_numpy(palette(num_classes)).to(maps.device).float().div(255.0)
    return colours[maps].permute(0, 3, 1, 2)


def conditioning_channels(fit: ControlNetFit, num_classes: int) -> int:
    return num_classes if fit.conditioning == "onehot" else 3


def build_unet(fit: ControlNetFit, shape: DataShape) -> UNet2DConditionModel:
    """The base: down blocks without attention but in the `attention_levels` lowest levels."""
    levels = len(fit.block_out_channels)
    attended = [i >= levels - fit.attention_levels for i in range(levels)]
    return UNet2DConditionModel(
        sample_size=(shape.height, shape.image_width), in_channels=shape.channels, out_channels=shape.channels,
        block_out_channels=tuple(fit.block_out_channels), layers_per_block=fit.layers_per_block,
        down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attended),
        up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attended)),
        norm_num_groups=fit.norm_num_groups, cross_attention_dim=fit.cross_attention_dim,
        attention_head_dim=fit.attention_heads,  # diffusers' name for the number of heads here
    )


def control_from_base(fit: ControlNetFit, num_classes: int, unet: UNet2DConditionModel) -> ControlNetModel:
    """`ControlNetModel.from_unet`: encoder and middle block copied from `unet`, zero
    convolutions zero; its conditioning encoder is drawn from the global RNG (fork it)."""
    return ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=fit.embedding_widths,
                                     conditioning_channels=conditioning_channels(fit, num_classes))


def build_modules(fit: ControlNetFit, shape: DataShape, seed: int) -> dict[str, nn.Module]:
    """Base UNet, prompt and ControlNet (and the VAE of a pretrained base), on the CPU: the
    own base and its class prompt from their own streams, or a pretrained base loaded; the
    ControlNet from the base, its conditioning encoder from the seed. Built under a forked
    RNG: diffusers' constructors draw from the global RNG, whose state must not change
    (their draws are overwritten from the seeded generators or by the loads)."""
    if fit.pretrained is not None:
        from augment.generators.controlnet_sd import load_base

        modules = load_base(fit, shape)
    else:
        with torch.random.fork_rng(devices=[]):
            unet = build_unet(fit, shape)
            _seeded_init_(unet, torch.Generator().manual_seed(derive_seed(seed, _INIT_UNET)))
            prompt = ClassPrompt(shape.num_classes, fit.cross_attention_dim)
        with torch.no_grad():
            rng = torch.Generator().manual_seed(derive_seed(seed, _INIT_PROMPT))
            for param in prompt.parameters():
                param.normal_(generator=rng)
        modules = {"unet": unet, "prompt": prompt}
    with torch.random.fork_rng(devices=[]):
        modules["controlnet"] = control_from_base(fit, shape.num_classes, modules["unet"])  # type: ignore[arg-type]
    seeded_cond_embedding_(modules["controlnet"], seed)  # type: ignore[arg-type]
    return modules


@torch.no_grad()
def seeded_cond_embedding_(controlnet: ControlNetModel, seed: int) -> None:
    """Redraw the conditioning encoder's convolutions from the seed, but its last one (zero)."""
    embedding = controlnet.controlnet_cond_embedding
    rng = torch.Generator().manual_seed(derive_seed(seed, _INIT_CONTROL))
    _seeded_init_(nn.ModuleList([embedding.conv_in, embedding.blocks]), rng)


def make_optimizers(fit: ControlNetFit, modules: dict[str, nn.Module]) -> dict[str, torch.optim.Optimizer]:
    """AdamW for the own base with its prompt (phase 1), AdamW for the ControlNet (phase 2)."""
    optimizers = {"controlnet": torch.optim.AdamW(modules["controlnet"].parameters(), lr=fit.lr,
                                                  weight_decay=fit.weight_decay)}
    if fit.pretrained is None:
        base = list(modules["unet"].parameters()) + list(modules["prompt"].parameters())
        optimizers["base"] = torch.optim.AdamW(base, lr=fit.base_lr, weight_decay=fit.weight_decay)
    return optimizers


def build_train_scheduler(fit: ControlNetFit) -> DDPMScheduler:
    """The forward process q(x_t | x_0) (Ho et al. 2020, eq. 4), as the diffusion family's (a
    pretrained base's own schedule); every sampling scheduler is built from it
    (`diffusion.make_sampling_scheduler`)."""
    if fit.pretrained is not None:
        from augment.generators.controlnet_sd import train_scheduler

        return train_scheduler(fit.pretrained)
    return DDPMScheduler(num_train_timesteps=fit.num_train_timesteps, beta_schedule=fit.beta_schedule,
                         prediction_type=fit.prediction_type, clip_sample=True)


@torch.no_grad()
def start_control(fit: ControlNetFit, num_classes: int, state: TrainState) -> None:
    """The phase change: base and prompt take their EMA weights and freeze; the ControlNet is
    made again from that base (its seeded conditioning encoder kept); its EMA restarts. A
    base that was not fitted here (pretrained) is the one the ControlNet was built from."""
    for name in ("unet", "prompt", "vae"):
        if name not in state.modules:
            continue
        module = state.module(name)
        if name in state.ema:
            module.load_state_dict(state.ema[name].state_dict())
        module.requires_grad_(False)
    controlnet = state.module("controlnet")
    if fit.base_phase_steps == 0:
        return
    with torch.random.fork_rng(devices=[]):
        fresh = control_from_base(fit, num_classes, state.module("unet"))  # type: ignore[arg-type]
    copied = {k: v for k, v in fresh.state_dict().items() if not k.startswith(COND_EMBEDDING)}
    missing, unexpected = controlnet.load_state_dict(copied, strict=False)
    if unexpected or any(not k.startswith(COND_EMBEDDING) for k in missing):
        raise RuntimeError(f"controlnet: from_unet gave other weights than the built ControlNet: "
                           f"missing {missing[:3]}, unexpected {unexpected[:3]}")
    if "controlnet" in state.ema:
        state.ema["controlnet"].load_state_dict(controlnet.state_dict())


def detached(module: nn.Module) -> dict[str, torch.Tensor]:
    """A module's parameters without gradients, for `torch.func.functional_call`."""
    return {name: p.detach() for name, p in module.named_parameters()}


def controlled_noise(unet: nn.Module, controlnet: nn.Module, x: torch.Tensor, t: torch.Tensor,
                     hidden: torch.Tensor, cond: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """ε from the base with the ControlNet's residuals added to its skip connections and
    middle block (paper eq. 2; diffusers' pipelines do the same)."""
    down, mid = controlnet(x, t, encoder_hidden_states=hidden, controlnet_cond=cond, conditioning_scale=scale,
                           return_dict=False)
    return unet(x, t, encoder_hidden_states=hidden, down_block_additional_residuals=down,
                mid_block_additional_residual=mid, return_dict=False)[0]


class ControlNetStep:
    """One iteration (phase by step, see the module doc) on the (image, map) pairs kept on
    the device (uint8 images, int32 maps)."""

    def __init__(self, fit: ControlNetFit, shape: DataShape, data: TrainingData, device: torch.device) -> None:
        if data.masks is None:
            raise ValueError("controlnet: learns from (image, mask) pairs; the training data have no masks")
        self.fit, self.shape, self.device = fit, shape, device
        self.scheduler = build_train_scheduler(fit)
        self.prediction_type = self.scheduler.config.prediction_type
        self.images = torch.from_numpy(np.ascontiguousarray(data.images)).to(device)
        self.masks = torch.from_numpy(np.ascontiguousarray(data.masks, dtype=np.int32)).to(device)

    def _batch(self, state: TrainState) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch with replacement, each pair flipped by the same coin: x_0 in [-1, 1], long maps."""
        n, b = len(self.images), self.fit.batch_size
        index = torch.randint(0, n, (b,), generator=state.rng).to(self.device)
        images, maps = self.images[index], self.masks[index].long()
        if self.fit.flip:
            flips = (torch.rand(b, generator=state.rng) < 0.5).to(self.device)
            images = torch.where(flips.view(-1, 1, 1, 1), images.flip(2), images)
            maps = torch.where(flips.view(-1, 1, 1), maps.flip(2), maps)
        return to_float(images), maps

    def _noised(self, state: TrainState, x0: torch.Tensor, p_drop: float) -> tuple[torch.Tensor, ...]:
        """t ~ U{0..T-1}, ε ~ N(0, I), x_t (eq. 4), the regression target and the prompt drops."""
        b = x0.shape[0]
        t = torch.randint(0, self.scheduler.config.num_train_timesteps, (b,), generator=state.rng).to(self.device)
        noise = torch.randn(x0.shape, generator=state.rng).to(self.device)
        drop = (torch.rand(b, generator=state.rng) < p_drop).to(self.device)
        x_t = self.scheduler.add_noise(x0, noise, t)
        target = noise if self.prediction_type == "epsilon" else self.scheduler.get_velocity(x0, noise, t)
        return x_t, t, target, drop

    def __call__(self, state: TrainState, step: int) -> dict[str, torch.Tensor]:
        if step == self.fit.base_phase_steps:
            start_control(self.fit, self.shape.num_classes, state)
        return self.base_step(state) if step < self.fit.base_phase_steps else self.control_step(state)

    def base_step(self, state: TrainState) -> dict[str, torch.Tensor]:
        """Phase 1: ‖target − ε_θ(x_t, t, prompt or ∅)‖² (eq. 14) for the base and its prompt."""
        x0, maps = self._batch(state)
        x_t, t, target, drop = self._noised(state, x0, self.fit.p_uncond)
        with autocast(self.device, self.fit.bf16):
            hidden = state.modules["prompt"](classes_present(maps, self.shape.num_classes), drop)
            pred = state.modules["unet"](x_t, t, encoder_hidden_states=hidden, return_dict=False)[0]
            loss = F.mse_loss(pred.float(), target.float())
        params = [p for name in ("unet", "prompt") for p in state.module(name).parameters()]
        descend(loss, state.optimizers["base"], clip=params, max_norm=self.fit.grad_clip)
        return {"base": loss.detach()}

    def control_step(self, state: TrainState) -> dict[str, torch.Tensor]:
        """Phase 2: the same loss through the frozen base, for the ControlNet alone (on the VAE's
        latents with a pretrained base; the conditioning image stays in pixels)."""
        x0, maps = self._batch(state)
        if "vae" in state.modules:
            from augment.generators.controlnet_sd import encode

            x0 = encode(state.module("vae"), x0, state.rng)  # type: ignore[arg-type]
        x_t, t, target, drop = self._noised(state, x0, self.fit.p_uncond_control)
        unet, prompt = state.module("unet"), state.module("prompt")
        with torch.no_grad():
            hidden = prompt(classes_present(maps, self.shape.num_classes), drop)
        cond = conditioning_image(maps, self.fit, self.shape.num_classes)
        with autocast(self.device, self.fit.bf16):
            down, mid = state.modules["controlnet"](x_t, t, encoder_hidden_states=hidden, controlnet_cond=cond,
                                                    return_dict=False)
            pred = torch.func.functional_call(unet, detached(unet), (x_t, t), {
                "encoder_hidden_states": hidden, "down_block_additional_residuals": down,
                "mid_block_additional_residual": mid, "return_dict": False})[0]
            loss = F.mse_loss(pred.float(), target.float())
        descend(loss, state.optimizers["controlnet"], clip=state.module("controlnet").parameters(),
                max_norm=self.fit.grad_clip)
        return {"control": loss.detach()}


__all__ = ["ClassPrompt", "ControlNetStep", "build_modules", "build_train_scheduler", "classes_present",
           "conditioning_image", "controlled_noise", "make_optimizers", "start_control"]
