"""Training of CyCADA (Hoffman et al. 2018): the modules, their optimizers and one iteration
in each of the fit's two phases (see `cycada_config`).

Paper names in code: G = G_{S→T}, F = G_{T→S}, D_Y = D_T, D_X = D_S (CycleGAN's networks
and step, `cyclegan_train`), f_S, f_T (`cycada_networks.TaskNet`), D_feat (a PatchGAN over
f_T's per-pixel class probabilities). The task is the one the job's label-preservation
model takes (`jobs.quality`): per image on the class labels when the source records have
any (digits frames carry a label and a digit/background mask, and the label is what a
content change breaks), else per pixel on their masks (street frames, `TrainingData.masks`).
CyCADA learns from the labelled source records only (label -1 left out in the first case).

Phase 1, steps [0, task_steps): f_S descends eq. 1, L_task(f_S, X_S, Y_S).

Phase 2, steps [task_steps, steps), f_S frozen (eval mode, parameters detached); at its
first step f_T takes f_S's weights. Then per step:

1. G, F: CycleGAN's objective (eq. 2 both ways, least squares; eq. 3; identity) plus
   λ_sem L_sem (eq. 4) through f_S, one descent;
2. D_T, D_S: eq. 2 on reals against pooled fakes (CycleGAN's D step);
3. f_T: λ_task L_task(f_T, G(X_S), Y_S) (eq. 1 on translated source) + λ_feat times the
   f_T side of L_GAN(f_T, D_feat) (eq. 5), D_feat held fixed;
4. D_feat: f_T's outputs on G(x) (real) against those on target y (fake), eq. 5.

Eq. 6 (the full objective) is the sum of these terms. Eq. 5 writes the reference side as
f_S(G(X_S)); here it is f_T's own outputs on G(x), as output-space adaptation does (Tsai et
al. 2018), so the reference moves with the task model it is compared to. G(x) is detached
for f_T and D_feat: their losses train the task model, not the translator, as in the
paper's staged training. Randomness as CycleGAN's: generators keyed by (seed, stream,
rank, step); a resumed fit continues the uninterrupted one (same device).
"""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from augment.generators.family import DataShape, TrainingData
from augment.generators.tensors import frozen, to_float
from augment.generators.trainer import TrainState, autocast, descend
from augment.metrics.classifier import build_on_meta
from augment.metrics.preservation import void_class_id
from augment.seeding import derive_seed
from domain_transfer.cycada_config import CyCADAFit
from domain_transfer.cycada_losses import semantic_loss, task_loss
from domain_transfer.cycada_networks import KIND_IDS, KINDS, Task, new_task_net, task_logits
from domain_transfer.cyclegan_train import _VIEW_X, _VIEW_Y, CycleGANStep
from domain_transfer.cyclegan_train import build_modules as build_cyclegan_modules
from domain_transfer.cyclegan_train import make_optimizers as make_cyclegan_optimizers
from domain_transfer.losses import lsgan_d_loss, lsgan_g_loss
from domain_transfer.networks import PatchGANDiscriminator, init_weights

# Random streams under the seed beyond CycleGAN's (1-9): keys for derive_seed.
_INIT_TASK, _INIT_D_FEAT = 21, 22


def build_modules(fit: CyCADAFit, shape: DataShape, seed: int) -> dict[str, nn.Module]:
    """CycleGAN's G, F, D_X, D_Y (same streams), f_S and f_T (f_T a copy of f_S until the
    translator phase copies the fitted f_S again) and D_feat, all on the CPU."""
    modules = build_cyclegan_modules(fit, shape, seed)
    f_s = new_task_net(shape.channels, shape.num_classes, fit.task_width,
                       torch.Generator().manual_seed(derive_seed(seed, _INIT_TASK)))
    d_feat = build_on_meta(lambda: PatchGANDiscriminator(shape.num_classes, fit.ndf, fit.d_layers))
    init_weights(d_feat, torch.Generator().manual_seed(derive_seed(seed, _INIT_D_FEAT)))
    return {**modules, "f_S": f_s, "f_T": copy.deepcopy(f_s), "D_feat": d_feat}


def make_optimizers(fit: CyCADAFit, modules: dict[str, nn.Module]) -> dict[str, torch.optim.Optimizer]:
    """CycleGAN's two Adams, plus f_S's (task_lr, Adam's default betas: plain supervised
    learning), f_T's (task_lr, the GAN betas: it is trained against D_feat) and D_feat's
    (the GAN lr and betas)."""
    optimizers = make_cyclegan_optimizers(fit, modules)
    optimizers["task_source"] = torch.optim.Adam(modules["f_S"].parameters(), lr=fit.task_lr)
    optimizers["task_target"] = torch.optim.Adam(modules["f_T"].parameters(), lr=fit.task_lr, betas=fit.betas)
    optimizers["feature_discriminator"] = torch.optim.Adam(modules["D_feat"].parameters(), lr=fit.lr,
                                                           betas=fit.betas)
    return optimizers


def task_of(data: TrainingData, class_names: tuple[str, ...]) -> tuple[Task, np.ndarray]:
    """The task the data support and the records that carry it: class labels →
    "classification" (the records labelled ≥ 0), else masks → "segmentation" (all records).
    ValueError naming what is missing or out of range."""
    labelled = np.flatnonzero(np.asarray(data.labels) >= 0)
    if len(labelled):
        return "classification", labelled
    if data.masks is None:
        raise ValueError("cycada: fits its task model f_S on labelled source records, but the training data have "
                         "no class labels (every label is -1) and no masks (TrainingData.masks is None); give the "
                         "source records class labels or masks")
    num_classes = len(class_names)
    top = int(data.masks.max()) if data.masks.size else 0
    if top >= num_classes:
        raise ValueError(f"cycada: mask class ids must be below the {num_classes} class names "
                         f"{list(class_names)}, got id {top}")
    return "segmentation", np.arange(len(data.images))


class CyCADAStep(CycleGANStep):
    """One CyCADA iteration (phase by step, see the module doc) on the labelled source
    records (X_S, with their labels or masks) and the target images (X_T), on the device."""

    def __init__(self, fit: CyCADAFit, data: TrainingData, device: torch.device, *, seed: int, rank: int,
                 class_names: tuple[str, ...]) -> None:
        task, keep = task_of(data, class_names)
        masks = None if data.masks is None else data.masks[keep]
        super().__init__(fit, replace(data, images=data.images[keep], labels=data.labels[keep], masks=masks),
                         device, seed=seed, rank=rank)
        self.fit: CyCADAFit = fit
        self.task = task
        if task == "segmentation":  # int32: a quarter of int64's memory for large frame sets
            self.masks = [torch.from_numpy(np.ascontiguousarray(masks, dtype=np.int32)).to(device)]
            self.ignore_index = void_class_id(class_names)  # void pixels carry no label
        else:
            self.masks = []
            self.labels = torch.from_numpy(np.asarray(data.labels[keep], dtype=np.int64)).to(device)
            self.ignore_index = None
        self._kind_checked = False

    def __call__(self, state: TrainState, step: int) -> dict[str, torch.Tensor]:
        self._check_kind(state)
        if step < self.fit.task_steps:
            return self.source_task_step(state, step)
        if step == self.fit.task_steps:
            start_target_task(state)
        return self.adaptation_step(state, step)

    def _check_kind(self, state: TrainState) -> None:
        """Once per step object: record the task in f_S's `kind`, or refuse data of another
        task than the state's task models were fitted on (one host read)."""
        if self._kind_checked:
            return
        f_s = state.module("f_S")
        recorded = KINDS.get(int(f_s.kind))
        if recorded is None:
            f_s.kind.fill_(KIND_IDS[self.task])
        elif recorded != self.task:
            have = "masks and no class labels" if self.task == "segmentation" else "class labels"
            raise ValueError(f"cycada: the training state's task models were fitted for {recorded}, but these "
                             f"training data have {have}")
        self._kind_checked = True

    def _source_batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch `step` of source images in [-1, 1] and their targets (masks cut and flipped
        with the images, or class labels)."""
        index, views = self._views(self.order_x, step, _VIEW_X, self.source, *self.masks)
        targets = views[1] if self.task == "segmentation" else self.labels[index.to(self.labels.device)]
        return to_float(views[0]), targets

    def source_task_step(self, state: TrainState, step: int) -> dict[str, torch.Tensor]:
        """Phase 1: f_S descends L_task(f_S, X_S, Y_S) (eq. 1)."""
        state.module("f_S").train()
        x, targets = self._source_batch(step)
        with autocast(self.device, self.fit.bf16):
            loss = task_loss(task_logits(state.modules["f_S"](x), self.task), targets, self.ignore_index)
        descend(loss, state.optimizers["task_source"])
        return {"task_S": loss.detach()}

    def adaptation_step(self, state: TrainState, step: int) -> dict[str, torch.Tensor]:
        """Phase 2: the translator with semantic consistency, then f_T and D_feat."""
        fit, task = self.fit, self.task
        state.module("f_S").eval()  # frozen: running statistics, none updated
        f_s = frozen(state.module("f_S"))
        real_x, targets = self._source_batch(step)
        real_y = self._batch(self.target, self.order_y, step, _VIEW_Y)
        # 1. G_{S→T}, G_{T→S}: CycleGAN's terms (eqs. 2, 3, identity) + λ_sem L_sem (eq. 4):
        #    f_S on G(x) against argmax f_S(x), and on F(y) against argmax f_S(y).
        fake_y, fake_x, losses = self.generator_losses(state, real_x, real_y)
        with autocast(self.device, fit.bf16):
            with torch.no_grad():
                seen_x, seen_y = task_logits(f_s(real_x), task), task_logits(f_s(real_y), task)
            semantic = semantic_loss(task_logits(f_s(fake_y), task), seen_x) \
                + semantic_loss(task_logits(f_s(fake_x), task), seen_y)
        losses["semantic"] = fit.lambda_semantic * semantic
        descend(sum(losses.values()), state.optimizers["generators"])
        # 2. D_T, D_S: eq. 2 on reals against pooled fakes.
        d_loss = self.discriminator_step(state, step, real_x, real_y, fake_y, fake_x)
        # 3. f_T: λ_task L_task(f_T, G(X_S), Y_S) (eq. 1) + λ_feat L_GAN's f_T side (eq. 5): its
        #    outputs on target y should look to D_feat like those on G(x). One forward over
        #    both, so batch norm normalises them with the same statistics.
        b = real_x.shape[0]
        with autocast(self.device, fit.bf16):
            logits = state.modules["f_T"](torch.cat([fake_y.detach(), real_y]))
            task_t = fit.lambda_task * task_loss(task_logits(logits[:b], task), targets, self.ignore_index)
            probs = F.softmax(logits.float(), dim=1)
            feature = fit.lambda_feature * lsgan_g_loss(frozen(state.module("D_feat"))(probs[b:]))
        descend(task_t + feature, state.optimizers["task_target"])
        # 4. D_feat: f_T's outputs on G(x) real, on y fake (eq. 5, least squares).
        with autocast(self.device, fit.bf16):
            scores = state.modules["D_feat"](probs.detach())
            d_feat = lsgan_d_loss(scores[:b], scores[b:])
        descend(d_feat, state.optimizers["feature_discriminator"])
        return {"G": losses["G"].detach(), "D": d_loss.detach(), "cycle": losses["cycle"].detach(),
                "idt": losses["idt"].detach(), "semantic": losses["semantic"].detach(), "task_T": task_t.detach(),
                "feature": feature.detach(), "D_feat": d_feat.detach()}


@torch.no_grad()
def start_target_task(state: TrainState) -> None:
    """f_T ← f_S (weights, statistics, `kind`), in place, so f_T's optimizer and DDP wrapper
    keep their parameters: the translator phase adapts the fitted source task model.

    Under DDP, f_S's batch-norm statistics are first taken from rank 0: DDP broadcasts
    buffers before each forward, so after f_S's last one every rank holds its own, and the
    frozen f_S (eval mode) must be one model on every rank."""
    f_s = state.module("f_S")
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        for buffer in f_s.buffers():
            torch.distributed.broadcast(buffer, src=0)
    state.module("f_T").load_state_dict(f_s.state_dict())


__all__ = ["CyCADAStep", "build_modules", "make_optimizers", "start_target_task", "task_of"]
