"""CyCADA's task models f_S and f_T (Hoffman et al. 2018, §3): the network that both the
per-pixel (masks) and the per-image (class labels) task use.

Paper names in code: `build_modules` (`cycada_train`) makes G = G_{S→T}, F = G_{T→S},
D_Y = D_T, D_X = D_S (CycleGAN's networks, `networks`), f_S, f_T (a `TaskNet` each) and
D_feat (a PatchGAN over f_T's per-pixel class probabilities).

One network for both tasks, because the modules are built before the data are seen (the
shared trainer's `build` has only the hyperparameters, the data shape and the seed), while
the data decide the task (class labels: per image; else masks: per pixel): the repo's small
segmenter (`augment.metrics.utility.TinySegmenter`, three stride-2 levels deep) gives
per-pixel logits, and their spatial mean is the image's logits. The depth matters: with
one level each pixel sees ~11 pixels, and on 32-pixel house-number crops the mean of such
local votes stayed near chance (0.24 held-out accuracy after 1,500 steps of 32) where three
levels (~47 pixels) reached 0.94. Its 1×1 head is linear, so that mean equals a linear
head on globally average-pooled features: the usual image classifier. Every parameter
takes part in both tasks, so DDP never meets an unused one. Which task the net was fitted
for is its `kind` buffer, saved with its weights.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from augment.metrics.classifier import build_on_meta, init_parameters
from augment.metrics.utility import TinySegmenter

Task = Literal["classification", "segmentation"]
KINDS: dict[int, Task | None] = {0: None, 1: "classification", 2: "segmentation"}  # `kind` buffer values
KIND_IDS: dict[Task, int] = {"classification": 1, "segmentation": 2}
TASK_LEVELS = 3  # stride-2 levels of the task models (see the module doc)


class TaskNet(nn.Module):
    """f_S or f_T: float N×C×H×W in [-1, 1] (any H, W) to per-pixel logits N×K×H×W.

    `kind` (a 0-dim buffer) records the task it was fitted for: 0 not yet, 1 class labels
    (per image), 2 masks (per pixel)."""

    kind: torch.Tensor

    def __init__(self, channels: int, num_classes: int, width: int) -> None:
        super().__init__()
        self.channels, self.num_classes, self.width = channels, num_classes, width
        self.net = TinySegmenter(channels, num_classes, width, levels=TASK_LEVELS)
        self.register_buffer("kind", torch.zeros((), dtype=torch.int64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    @property
    def task(self) -> Task | None:
        """"classification", "segmentation", or None before it was fitted (one host read)."""
        return KINDS.get(int(self.kind))


def image_logits(pixel_logits: torch.Tensor) -> torch.Tensor:
    """An image's class logits: the spatial mean of its pixel logits (N×K×H×W → N×K)."""
    return pixel_logits.mean(dim=(2, 3))


def task_logits(pixel_logits: torch.Tensor, task: Task) -> torch.Tensor:
    """Logits the task's loss takes: per pixel as they are, per image their spatial mean."""
    return pixel_logits if task == "segmentation" else image_logits(pixel_logits)


def new_task_net(channels: int, num_classes: int, width: int, generator: torch.Generator) -> TaskNet:
    """A `TaskNet` built on the meta device (no global RNG draw), its weights drawn from
    `generator` as the repo's small CNNs draw theirs (`classifier.init_parameters`)."""
    net = build_on_meta(lambda: TaskNet(channels, num_classes, width))
    init_parameters(net, generator)
    net.kind.zero_()  # to_empty left the buffer uninitialised
    return net  # type: ignore[return-value]


__all__ = ["KIND_IDS", "KINDS", "Task", "TaskNet", "image_logits", "new_task_net", "task_logits"]
