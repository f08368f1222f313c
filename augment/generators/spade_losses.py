"""The `spade` family's losses, each as its paper writes it, weighted (λ) by the caller.

SPADE (Park et al. 2019, appendix A; reference NVlabs/SPADE `models/networks/loss.py`):
hinge adversarial loss over the scales of the multi-scale PatchGAN, feature matching
(pix2pixHD, Wang et al. 2018, eq. 4) and the KL term of the VAE style encoder.

OASIS (Schönfeld et al. 2021, §3.1-3.2; reference boschresearch/OASIS `models/losses.py`):
the discriminator is a per-pixel (N+1)-class classifier: eq. 2 for D, eq. 3 for G, class
balanced by inverse pixel frequency; LabelMix (§3.2, eq. 4) makes D consistent on images
that mix real and fake regions along the label map's classes.

Logits are cast to float32, so the losses stay exact under bf16 autocast.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from augment.generators.spade_discriminators import FAKE


def hinge_d_loss(real_scores: list[torch.Tensor], fake_scores: list[torch.Tensor]) -> torch.Tensor:
    """L_D = mean over scales of E[max(0, 1 − D(x))] + E[max(0, 1 + D(G(m)))] (Lim & Ye 2017)."""
    terms = [torch.relu(1.0 - r.float()).mean() + torch.relu(1.0 + f.float()).mean()
             for r, f in zip(real_scores, fake_scores, strict=True)]
    return torch.stack(terms).mean()


def hinge_g_loss(fake_scores: list[torch.Tensor]) -> torch.Tensor:
    """L_G = −mean over scales of E[D(G(m))] (Miyato et al. 2018, eq. 17)."""
    return torch.stack([-f.float().mean() for f in fake_scores]).mean()


def feature_matching_loss(real_features: list[list[torch.Tensor]],
                          fake_features: list[list[torch.Tensor]]) -> torch.Tensor:
    """pix2pixHD eq. 4, as SPADE's code: Σ over each scale's layers but the score layer of
    ‖D_k⁽ⁱ⁾(x, m) − D_k⁽ⁱ⁾(G(m), m)‖₁ (mean over elements), averaged over the scales; the
    real features are constants."""
    per_scale = [torch.stack([F.l1_loss(f.float(), r.detach().float())
                              for r, f in zip(real[:-1], fake[:-1], strict=True)]).sum()
                 for real, fake in zip(real_features, fake_features, strict=True)]
    return torch.stack(per_scale).mean()


def kld_loss(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(μ, σ²) ‖ N(0, I)) = −½ Σ_j (1 + log σ_j² − μ_j² − σ_j²), per sample, mean over the
    batch (the reference sums over the batch too; the mean keeps λ_KLD independent of it)."""
    mu, logvar = mu.float(), logvar.float()
    return (-0.5 * (1 + logvar - mu.square() - logvar.exp()).sum(dim=1)).mean()


def class_balance(labels: torch.Tensor, num_classes: int, ignore_index: int | None = None) -> torch.Tensor:
    """OASIS's per-pixel weights (§3.1): a pixel of class c weighs P / (K · P_c), with P the
    batch's pixels, P_c those of class c and K the classes present, so every present class
    carries the same total weight; `ignore_index` (a "void"/don't-care class) weighs 0, as
    the reference's dontcare label."""
    counts = torch.bincount(labels.flatten(), minlength=num_classes).float()
    if ignore_index is not None:
        counts[ignore_index] = 0.0
    present = (counts > 0).sum().clamp(min=1)
    coefficients = torch.where(counts > 0, labels.numel() / (present * counts.clamp(min=1)), torch.zeros_like(counts))
    return coefficients[labels]


def _weighted_ce(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    loss = F.cross_entropy(logits.float(), targets, reduction="none")
    return (loss * weights).mean() if weights is not None else loss.mean()


def oasis_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor, labels: torch.Tensor,
                 ignore_index: int | None = None) -> torch.Tensor:
    """Eq. 2: −E[Σ_c α_c Σ_pixels t_c log D(x)_c] − E[Σ_pixels log D(G(m))_fake]: real pixels
    to their class (channel c + 1, class balanced), generated pixels to "fake" (unweighted)."""
    num_classes = real_logits.shape[1] - 1
    weights = class_balance(labels, num_classes, ignore_index)
    real = _weighted_ce(real_logits, labels + 1, weights)
    fake = _weighted_ce(fake_logits, torch.full_like(labels, FAKE), None)
    return real + fake


def oasis_g_loss(fake_logits: torch.Tensor, labels: torch.Tensor, ignore_index: int | None = None) -> torch.Tensor:
    """Eq. 3: −E[Σ_c α_c Σ_pixels t_c log D(G(m))_c]: generated pixels should be classified as
    the class the map gives them (class balanced)."""
    weights = class_balance(labels, fake_logits.shape[1] - 1, ignore_index)
    return _weighted_ce(fake_logits, labels + 1, weights)


def labelmix_mask(labels: torch.Tensor, num_classes: int, generator: torch.Generator) -> torch.Tensor:
    """M (N×1×H×W, 0 or 1): every class of every map is drawn real (1) or fake (0) by a fair
    coin from `generator` (the reference draws one coin per class for the whole batch)."""
    coins = torch.randint(0, 2, (labels.shape[0], num_classes), generator=generator).float()
    coins = coins.to(labels.device)
    return torch.gather(coins, 1, labels.flatten(1)).view(labels.shape[0], 1, *labels.shape[1:])


def labelmix(mask: torch.Tensor, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """LabelMix(x, x̂, M) = M ⊙ x + (1 − M) ⊙ x̂ (§3.2)."""
    return mask * real + (1 - mask) * fake


def labelmix_loss(mask: torch.Tensor, mixed_logits: torch.Tensor, real_logits: torch.Tensor,
                  fake_logits: torch.Tensor) -> torch.Tensor:
    """Eq. 4: ‖D_logits(LabelMix(x, x̂, M)) − LabelMix(D_logits(x), D_logits(x̂), M)‖², mean
    over elements (the reference's MSELoss)."""
    target = labelmix(mask, real_logits.float(), fake_logits.float())
    return F.mse_loss(mixed_logits.float(), target)


__all__ = ["class_balance", "feature_matching_loss", "hinge_d_loss", "hinge_g_loss", "kld_loss", "labelmix",
           "labelmix_loss", "labelmix_mask", "oasis_d_loss", "oasis_g_loss"]
