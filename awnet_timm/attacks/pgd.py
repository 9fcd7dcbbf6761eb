""" L-inf PGD and FGSM on [0, 1] pixels, for any model, batched

PGD (Madry et al., ICLR 2018, arXiv:1706.06083): from a random start inside the eps-ball, take
`steps` signed-gradient steps of `step_size`, projecting back onto the ball and onto [0, 1].
FGSM (Goodfellow et al., ICLR 2015) is one step of size eps from x. eps and step sizes are in
pixel units (8/255), the convention of RobustBench and AutoAttack.

Losses the attack maximises:
- 'ce': cross-entropy to the true label (PGD-AT, the paper's PGD attacks);
- 'kl': KL(p(x) || p(x_adv)) to the model's own clean prediction, as TRADES generates its examples;
- 'cw': the C&W margin max_{j != y} z_j - z_y (the paper's CW-inf).

Attacks know nothing about reporting: `perturb(x, y)` returns the adversarial batch. The model runs
in eval mode during the attack (each submodule's mode is restored after) and its parameters get no gradients.
An AW-Net is attacked in the route given by `route` ('auto', 'adv', ...; None keeps its own).
"""
from contextlib import contextmanager, nullcontext
from typing import Any, Iterator, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models import AWNet, use_route

__all__ = ['LinfPGD', 'FGSM', 'ATTACK_LOSSES', 'RANDOM_STARTS', 'attack_loss', 'eval_mode']

ATTACK_LOSSES = ('ce', 'kl', 'cw')
RANDOM_STARTS = ('uniform', 'normal', 'none')


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """The model in eval mode, then each submodule back in its own mode (frozen parts may be in eval)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training


def attack_loss(logits: torch.Tensor, y: torch.Tensor, loss: str, clean_probs: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Per-sample loss (B,) to maximise. Summed over the batch, each sample's gradient is its own."""
    if loss == 'ce':
        return F.cross_entropy(logits, y, reduction='none')
    if loss == 'kl':
        assert clean_probs is not None, "loss 'kl' needs the clean prediction"
        return F.kl_div(F.log_softmax(logits, dim=1), clean_probs, reduction='none').sum(1)
    if loss == 'cw':
        correct = logits.gather(1, y[:, None]).squeeze(1)
        others = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float('-inf'))
        return others.amax(1) - correct
    raise ValueError(f"unknown attack loss '{loss}': expected one of {', '.join(ATTACK_LOSSES)}")


class LinfPGD:
    """ L-inf projected gradient descent (ascent on the loss).

    Args:
        model: Any module mapping (B, C, H, W) pixels in [0, 1] to logits.
        eps: Radius of the L-inf ball, in pixel units.
        step_size: Size of each signed-gradient step.
        steps: Number of steps.
        loss: 'ce', 'kl' or 'cw' (see module docstring).
        random_start: 'uniform' (U(-eps, eps), Madry), 'normal' (0.001 * N(0, 1), as TRADES and
            MTARD start) or 'none'.
        route: For an AW-Net, the route to attack it in (None keeps the model's own).
        check_range: Reject inputs outside [0, 1] (one host sync per call; a training loop whose
            data is known to be in range can turn it off).
    """

    def __init__(
            self,
            model: nn.Module,
            eps: float = 8 / 255,
            step_size: float = 2 / 255,
            steps: int = 10,
            loss: str = 'ce',
            random_start: str = 'uniform',
            route: Optional[str] = None,
            check_range: bool = True,
    ):
        if loss not in ATTACK_LOSSES:
            raise ValueError(f"unknown attack loss '{loss}': expected one of {', '.join(ATTACK_LOSSES)}")
        if random_start not in RANDOM_STARTS:
            raise ValueError(f"unknown random_start '{random_start}': expected one of {', '.join(RANDOM_STARTS)}")
        if not 0 <= eps <= 1 or step_size < 0 or steps < 1:
            raise ValueError(f'need 0 <= eps <= 1 (pixel units), step_size >= 0 and steps >= 1; '
                             f'got eps={eps}, step_size={step_size}, steps={steps}')
        if route is not None and not isinstance(model, AWNet):
            raise TypeError(f'route={route!r} needs an AWNet, got {type(model).__name__}')
        self.model = model
        self.eps = eps
        self.step_size = step_size
        self.steps = steps
        self.loss = loss
        self.random_start = random_start
        self.route = route
        self.check_range = check_range

    def _start(self, x: torch.Tensor) -> torch.Tensor:
        if self.random_start == 'uniform':
            delta = torch.empty_like(x).uniform_(-self.eps, self.eps)
        elif self.random_start == 'normal':
            delta = 0.001 * torch.randn_like(x)
        else:
            delta = torch.zeros_like(x)
        return (x + delta).clamp(0, 1)

    def perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Adversarial examples for (x, y): within eps of x in L-inf, pixels in [0, 1]."""
        if self.check_range:
            lo, hi = torch.aminmax(x.detach())
            if lo < 0 or hi > 1:
                raise ValueError(f'attacks take pixels in [0, 1], got values in [{lo.item():.3g}, {hi.item():.3g}]')
        with eval_mode(self.model), use_route(self.model, self.route) if self.route is not None else nullcontext():
            return self._run(x.detach(), y)

    def _prepare(self, x: torch.Tensor, y: torch.Tensor) -> Any:
        """Per-batch context for the objective (the clean prediction for 'kl')."""
        if self.loss == 'kl':
            with torch.no_grad():
                return F.softmax(self.model(x), dim=1)
        return None

    def objective(self, x_adv: torch.Tensor, y: torch.Tensor, context: Any) -> torch.Tensor:
        """Per-sample loss (B,) the attack maximises; subclasses (router-aware attacks) override it."""
        return attack_loss(self.model(x_adv), y, self.loss, context)

    def _run(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        context = self._prepare(x, y)
        x_adv = self._start(x)
        for _ in range(self.steps):
            x_adv.requires_grad_(True)
            with torch.enable_grad():
                grad, = torch.autograd.grad(self.objective(x_adv, y, context).sum(), x_adv)
            x_adv = x_adv.detach() + self.step_size * grad.sign()
            x_adv = torch.min(torch.max(x_adv, x - self.eps), x + self.eps).clamp(0, 1)
        return x_adv.detach()


class FGSM(LinfPGD):
    """ Fast gradient sign method: one step of size eps from x (no random start). """

    def __init__(
            self,
            model: nn.Module,
            eps: float = 8 / 255,
            loss: str = 'ce',
            route: Optional[str] = None,
            check_range: bool = True,
    ):
        super().__init__(model, eps, eps, 1, loss, random_start='none', route=route, check_range=check_range)
