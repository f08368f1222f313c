"""CyCADA's task and semantic losses (Hoffman et al. 2018, §3), each as its paper equation.

The image-level GAN terms (eq. 2, for D_T and D_S) and the cycle loss (eq. 3) are
CycleGAN's (`losses`); the feature-level GAN term (eq. 5) reuses the same least-squares
form (`lsgan_d_loss`, `lsgan_g_loss`), as CycleGAN's §4 does for eq. 2.

Logits come either per image (N×K) or per pixel (N×K×H×W); cross-entropy is averaged over
every labelled element, so the weights do not depend on the image size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def task_loss(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int | None = None) -> torch.Tensor:
    """Eq. 1, L_task(f, X, Y) = −E[Σ_k 1[k = y] log σ(f^(k)(x))]: cross-entropy of `logits`
    (N×K or N×K×H×W) against class ids `targets` (N or N×H×W), averaged over the elements
    whose target is not `ignore_index` (a mask's void class, an unlabelled record); 0 when
    none is labelled (never nan)."""
    logits, targets = logits.float(), targets.long()
    keep = targets != ignore_index if ignore_index is not None else torch.ones_like(targets, dtype=torch.bool)
    safe = torch.where(keep, targets, torch.zeros_like(targets))  # ignored ones: any valid id, weighted 0
    losses = F.cross_entropy(logits, safe, reduction="none") * keep
    return losses.sum() / keep.sum().clamp(min=1)


def pseudo_labels(logits: torch.Tensor) -> torch.Tensor:
    """p(f, X) = argmax f(X) (§3, under eq. 4): the frozen f_S's own labels, no gradient."""
    return logits.detach().argmax(dim=1)


def semantic_loss(translated: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """One direction of eq. 4: L_task(f_S, G(X), p(f_S, X)), the cross-entropy of f_S's
    logits on the translated images (`translated`, N×K or N×K×H×W) against f_S's argmax on
    the images they came from (`original`): a translation that changes content changes
    what f_S sees. Eq. 4 is this for G_{S→T} on source images plus for G_{T→S} on target
    images."""
    return task_loss(translated, pseudo_labels(original))


__all__ = ["pseudo_labels", "semantic_loss", "task_loss"]
