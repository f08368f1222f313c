"""CycleGAN's losses (Zhu et al. 2017), each as its paper equation, weighted as the reference
implementation (junyanz/pytorch-CycleGAN-and-pix2pix, `models/cycle_gan_model.py`) does.

Full objective (eq. 3): L(G, F, D_X, D_Y) = L_GAN(G, D_Y, X, Y) + L_GAN(F, D_X, Y, X)
+ λ L_cyc(G, F), plus the identity term of §5.2 for tasks where colour must be kept.
L_GAN (eq. 1) is written with the log-likelihood; §4 ("Training details") replaces it by
least squares (LSGAN, Mao et al. 2017), which trains more stably: below.

Scores and images are averaged over every element (patch scores, pixels, channels), so
the weights do not depend on the image size.
"""

from __future__ import annotations

import torch


def lsgan_d_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """D minimises E_y[(D(y) − 1)²] + E_x[D(G(x))²] (§4, the least-squares form of eq. 1);
    halved, as in the reference, to slow D relative to G."""
    return 0.5 * ((real_scores.float() - 1.0).square().mean() + fake_scores.float().square().mean())


def lsgan_g_loss(fake_scores: torch.Tensor) -> torch.Tensor:
    """G minimises E_x[(D(G(x)) − 1)²] (§4): real target 1 for its own images."""
    return (fake_scores.float() - 1.0).square().mean()


def cycle_loss(reconstructed: torch.Tensor, original: torch.Tensor, lambda_cycle: float) -> torch.Tensor:
    """λ · E_x[‖F(G(x)) − x‖₁] (one direction of eq. 2; λ = 10 in §4)."""
    return lambda_cycle * (reconstructed.float() - original.float()).abs().mean()


def identity_loss(mapped: torch.Tensor, original: torch.Tensor, lambda_cycle: float,
                  lambda_identity: float) -> torch.Tensor:
    """λ · λ_idt · E_y[‖G(y) − y‖₁] (one direction of the identity loss of §5.2, Taigman et
    al. 2017): a generator fed an image of its own output domain should leave it alone. The
    paper weighs it 0.5 λ; the reference writes that as λ_idt = 0.5 times λ_cycle."""
    return lambda_cycle * lambda_identity * (mapped.float() - original.float()).abs().mean()
