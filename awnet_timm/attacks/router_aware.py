""" The router-aware training attack: examples that fool the classifier and look clean to AW-Net's router

Not in the AW-Net paper, whose training attack runs on the Adv BN path only, so its router never sees an example
made against the path it chooses for clean-looking inputs; `router_detach` (the classifier attacked with the
router's outputs held constant) then breaks every AW-Net trained that way (docs/adaptive_attacks.md). After the
composite adversary that trains Adaptive Smoothing's mixing network (Bai, Anderson, Kim, Sojoudi, SIMODS 2024):
attacks that also target the mixer, with a random weight on its term and a random eps scale. Here, per sample i,

    maximise  CE(f_detach(x'), y) + lambda_i * log P(clean | x')   over ||x' - x||_inf <= eps_i,

f_detach the model with the router's outputs constant in the backward pass (route 'detach', scored forward as the
real model), lambda_i ~ U(0, weight_max), eps_i = eps * U(scale_min, scale_max); PGD from a uniform start in the
eps_i-ball, steps of eps_i * step_size / eps, the last iterate returned (a training attack).
"""
from typing import Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .pgd import LinfPGD, attack_loss
from .router_attacks import _dynamic

__all__ = ['RouterAwarePGD']


class RouterAwarePGD(LinfPGD):
    """ PGD on the detached-router loss plus a random-weight push of P(clean) up, at a random eps per sample.

    Args:
        model: An AW-Net with a router type head.
        eps, step_size, steps: The attack's largest radius (pixel units), its step at that radius, and its steps.
        weight_max: lambda_i ~ U(0, weight_max), the weight of log P(clean) (Adaptive Smoothing's 0.4).
        eps_scale: (low, high): eps_i = eps * U(low, high) (Adaptive Smoothing's 0.4-1.1); capped at 1 pixel.
        loss: 'ce' (PGD-AT, MTARD) or 'kl' (TRADES) for the classifier term.
        check_range, train_mode: As for `LinfPGD`.
    """

    def __init__(
            self,
            model: nn.Module,
            eps: float = 8 / 255,
            step_size: float = 4 / 255,
            steps: int = 2,
            weight_max: float = 0.4,
            eps_scale: Tuple[float, float] = (0.4, 1.1),
            loss: str = 'ce',
            check_range: bool = True,
            train_mode: bool = False,
    ):
        model = _dynamic(model, 'RouterAwarePGD')
        if model.router.type_head is None:
            raise TypeError('RouterAwarePGD pushes P(clean) up, and this AW-Net has no router type head')
        low, high = eps_scale
        if not (0 <= weight_max and 0 < low <= high):
            raise ValueError(f'need weight_max >= 0 and 0 < eps_scale[0] <= eps_scale[1], got {weight_max}, {eps_scale}')
        super().__init__(model, eps, step_size, steps, loss, 'uniform', check_range=check_range, train_mode=train_mode)
        self.weight_max = weight_max
        self.eps_scale = (low, high)

    def _run(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        context = self._prepare(x, y)
        shape = (len(x),) + (1,) * (x.dim() - 1)
        low, high = self.eps_scale
        eps = (self.eps * (low + (high - low) * torch.rand(shape, device=x.device))).clamp(max=1.).to(x.dtype)
        step = eps * (self.step_size / self.eps) if self.eps > 0 else eps
        weight = self.weight_max * torch.rand(len(x), device=x.device)
        x_adv = (x + (2 * torch.rand_like(x) - 1) * eps).clamp(0, 1)
        for _ in range(self.steps):
            x_adv.requires_grad_(True)
            with torch.enable_grad():
                logits, router_out = self.model.forward_with_router(x_adv, route='detach')
                log_p_clean = F.log_softmax(router_out.type_logits.float(), dim=1)[:, 1]
                objective = attack_loss(logits, y, self.loss, context) + weight * log_p_clean
                grad, = torch.autograd.grad(objective.sum(), x_adv)
            x_adv = x_adv.detach() + step * grad.sign()
            x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0, 1)
        return x_adv.detach()
