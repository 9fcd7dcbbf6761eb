""" N-FGSM: the single-step training attack of de Jorge et al. (NeurIPS 2022, "Make Some Noise", arXiv:2202.01181)

From a noisy point x + eta, eta ~ U(-k eps, k eps) per pixel (k = 2 in the paper), one signed-gradient
step of size alpha (alpha = eps in the paper): x_adv = x + eta + alpha * sign(grad_x L(x + eta, y)).
Unlike RS-FGSM and PGD, the example is NOT projected back onto the eps-ball (it may lie up to
(k eps + alpha) from x): the paper shows that the stronger noise without clipping is what avoids
catastrophic overfitting. Pixels are only clipped to [0, 1], the images' range.
"""
from typing import Optional

import torch
import torch.nn as nn

from .pgd import LinfPGD

__all__ = ['NFGSM']


class NFGSM(LinfPGD):
    """ N-FGSM, a training attack (cost: one forward and backward pass).

    Args:
        model: Any module mapping (B, C, H, W) pixels in [0, 1] to logits.
        eps: The threat model's L-inf radius, in pixel units.
        step_size: alpha, the size of the signed-gradient step (None: eps, the paper's).
        noise: k, the noise's half-width in multiples of eps (the paper's 2).
        loss, route, check_range, train_mode: As for LinfPGD (de Jorge et al.'s code attacks in train mode).
    """

    def __init__(
            self,
            model: nn.Module,
            eps: float = 8 / 255,
            step_size: Optional[float] = None,
            noise: float = 2.0,
            loss: str = 'ce',
            route: Optional[str] = None,
            check_range: bool = True,
            train_mode: bool = False,
    ):
        super().__init__(model, eps, eps if step_size is None else step_size, 1, loss, random_start='uniform',
                         route=route, check_range=check_range, train_mode=train_mode)
        if noise < 0:
            raise ValueError(f'noise is a multiple of eps and must be >= 0, got {noise}')
        self.noise = noise

    def _start(self, x: torch.Tensor) -> torch.Tensor:
        return (x + torch.empty_like(x).uniform_(-self.noise * self.eps, self.noise * self.eps)).clamp(0, 1)

    def _run(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        context = self._prepare(x, y)
        x_noisy = self._start(x).requires_grad_(True)
        with torch.enable_grad():
            grad, = torch.autograd.grad(self.objective(x_noisy, y, context).sum(), x_noisy)
        return (x_noisy.detach() + self.step_size * grad.sign()).clamp(0, 1)  # no projection onto the eps-ball
