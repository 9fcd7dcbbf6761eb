""" L-inf PGD and FGSM on [0, 1] pixels, for any model, batched

PGD (Madry et al., ICLR 2018, arXiv:1706.06083): from a random start inside the eps-ball, take
`steps` signed-gradient steps of `step_size`, projecting back onto the ball and onto [0, 1].
FGSM (Goodfellow et al., ICLR 2015) is one step of size eps from x. eps and step sizes are in
pixel units (8/255), the convention of RobustBench and AutoAttack.

Losses the attack maximises:
- 'ce': cross-entropy to the true label (PGD-AT, the paper's PGD attacks);
- 'kl': KL(p(x) || p(x_adv)) to the model's own clean prediction, as TRADES generates its examples;
- 'cw': the C&W margin max_{j != y} z_j - z_y (the paper's CW-inf).

Which iterate is returned (`keep`): 'last' (training: the example the loss was pushed furthest for) or
'best' (evaluation, as AutoAttack does): per sample, the first iterate that the model misclassifies,
scored as the evaluator scores it (an AW-Net in route auto), else the last. Under 'best', a sample fooled
at step 5 and pushed back to its class by step 20 still counts as broken.

Attacks know nothing about reporting: `perturb(x, y)` returns the adversarial batch. The model runs
in eval mode during the attack (each submodule's mode is restored after) and its parameters get no gradients;
a training attack may instead run it in its own mode (`train_mode=True`: BN on batch statistics, its running
statistics moved by the attack's passes, as the single-step AT code of Wong et al. and de Jorge et al. does).
An AW-Net is attacked in the route given by `route` ('auto', 'adv', ...; None keeps its own).
"""
import math
from contextlib import contextmanager, nullcontext
from typing import Any, Iterator, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models import AWNet, use_route

__all__ = ['LinfPGD', 'FGSM', 'ATTACK_LOSSES', 'RANDOM_STARTS', 'KEEP', 'attack_loss', 'check_pixels', 'eval_mode',
           'scored_logits']

ATTACK_LOSSES = ('ce', 'kl', 'cw')
RANDOM_STARTS = ('uniform', 'normal', 'none')
KEEP = ('last', 'best')


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


def check_pixels(x: torch.Tensor, what: str = 'attacks take') -> None:
    """Refuse NaN, inf and values outside [0, 1] (one host sync)."""
    lo, hi = (v.item() for v in torch.aminmax(x.detach()))
    if not (0 <= lo and hi <= 1):  # NaN fails both comparisons
        got = f'values in [{lo:.3g}, {hi:.3g}]' if math.isfinite(lo) and math.isfinite(hi) else 'non-finite values (NaN or inf)'
        raise ValueError(f'{what} pixels in [0, 1], got {got}')


@torch.no_grad()
def scored_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The logits the evaluator scores: an AW-Net with a router in route auto, any other model as it is."""
    if isinstance(model, AWNet) and model.router is not None:
        return model.forward_with_router(x, route='auto')[0]
    return model(x)


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
        keep: 'last' iterate (training) or, per sample, the first iterate the model misclassifies ('best',
            evaluation; one extra forward pass per step).
        check_range: Reject inputs outside [0, 1] (one host sync per call; a training loop whose
            data is known to be in range can turn it off).
        train_mode: Run the model in the mode it is in (a training loop's train mode: BN batch statistics,
            running statistics updated by every pass of the attack) instead of eval mode.
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
            keep: str = 'last',
            check_range: bool = True,
            train_mode: bool = False,
    ):
        if loss not in ATTACK_LOSSES:
            raise ValueError(f"unknown attack loss '{loss}': expected one of {', '.join(ATTACK_LOSSES)}")
        if random_start not in RANDOM_STARTS:
            raise ValueError(f"unknown random_start '{random_start}': expected one of {', '.join(RANDOM_STARTS)}")
        if keep not in KEEP:
            raise ValueError(f"unknown keep '{keep}': expected one of {', '.join(KEEP)}")
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
        self.keep = keep
        self.check_range = check_range
        self.train_mode = train_mode

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
            check_pixels(x)
        mode = nullcontext() if self.train_mode else eval_mode(self.model)
        with mode, use_route(self.model, self.route) if self.route is not None else nullcontext():
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

    def _fooled(self, x_adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return scored_logits(self.model, x_adv).argmax(1) != y

    def _run(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        context = self._prepare(x, y)
        x_adv = self._start(x)
        if self.keep == 'best':
            best, found = x_adv.clone(), self._fooled(x_adv, y)
        for _ in range(self.steps):
            x_adv.requires_grad_(True)
            with torch.enable_grad():
                grad, = torch.autograd.grad(self.objective(x_adv, y, context).sum(), x_adv)
            x_adv = x_adv.detach() + self.step_size * grad.sign()
            x_adv = torch.min(torch.max(x_adv, x - self.eps), x + self.eps).clamp(0, 1)
            if self.keep == 'best':  # a sample keeps its first fooling iterate; the others follow the attack
                best = torch.where(found[:, None, None, None], best, x_adv)
                found |= self._fooled(x_adv, y)
        return (best if self.keep == 'best' else x_adv).detach()


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
