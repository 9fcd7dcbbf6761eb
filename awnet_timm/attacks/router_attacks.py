""" Attacks that target AW-Net's router (docs/evaluation.md section 6), and mixed-surrogate transfer

The router's P(clean) and signals are near-saturated on a trained AW-Net, so plain gradient attacks can
stall in the robust "adv" mode (gradient masking). These attacks go around it; the evaluator scores
every result on the real model (route auto), and reports the per-sample worst case over all of them.
- `ForcedRoutePGD` (A2): PGD on the model with MixBN forced to one branch and the router's signals
  fixed at their values on the clean input (BPDA-like: the router is bypassed while attacking).
- `LinfPGD(model, route='detach')` (A3) needs no class: the router's outputs are used in the forward
  pass and treated as constants in the backward pass (straight-through).
- `TwoPhaseAttack` (A4, Tramer et al. 2020): margin loss until the sample is misclassified, then
  raise log P(clean) while it stays misclassified (attack the classifier and the detector together). With
  `route='clean'` (`two_phase_clean`) both phases run on the Clean BN path.
- `SignalMatchPGD` (A5): cross-entropy minus a penalty that keeps every signal omega_j(x') near
  omega_j(x), so the weights the router picks stay those of the clean input.
- `JointLossPGD`: the paper's adaptive attack (Sec. 5.3.4): PGD-trades on cross-entropy plus the type
  term of its training loss (Eq. 22) for the label "adversarial", which pushes P(clean) up. With `route='clean'`
  (`joint_clean`) the cross-entropy is the Clean BN path's: examples that fool that path and look clean, the ones
  a sharpened route (`route_threshold`) sends down it.
- `MixedSurrogateAttack` (A6, MSA): attacks run on surrogate models; per sample, the first example
  that fools the target is kept.
"""
from typing import Any, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models import AWNet
from .pgd import LinfPGD, attack_loss, eval_mode, scored_logits

__all__ = ['ForcedRoutePGD', 'TwoPhaseAttack', 'SignalMatchPGD', 'JointLossPGD', 'MixedSurrogateAttack']


def _dynamic(model: nn.Module, what: str) -> AWNet:
    if not isinstance(model, AWNet) or model.router is None:
        raise TypeError(f'{what} attacks the router of an AW-Net; {type(model).__name__} has none')
    return model


class ForcedRoutePGD(LinfPGD):
    """ PGD with MixBN forced to `forced` ('clean' or 'adv') and the signals fixed at the clean input's. """

    def __init__(self, model: nn.Module, forced: str = 'clean', **kwargs):
        _dynamic(model, 'ForcedRoutePGD')
        if forced not in ('clean', 'adv'):
            raise ValueError(f"forced must be 'clean' or 'adv', got '{forced}'")
        super().__init__(model, **kwargs)
        self.forced = forced

    def _prepare(self, x, y):
        with torch.no_grad():
            router_out = self.model.forward_router(x)
        return super()._prepare(x, y), router_out

    def objective(self, x_adv, y, context):
        clean_probs, router_out = context
        logits, _ = self.model.forward_with_router(x_adv, route=self.forced, router_out=router_out)
        return attack_loss(logits, y, self.loss, clean_probs)


class SignalMatchPGD(LinfPGD):
    """ Cross-entropy minus `penalty` x sum_j mean (omega_j(x') - omega_j(x))^2 over the modulated convs. """

    def __init__(self, model: nn.Module, penalty: float = 1.0, **kwargs):
        _dynamic(model, 'SignalMatchPGD')
        super().__init__(model, **kwargs)
        self.penalty = penalty

    def _prepare(self, x, y):
        with torch.no_grad():
            return super()._prepare(x, y), self.model.forward_router(x).omega

    def objective(self, x_adv, y, context):
        clean_probs, omega_clean = context
        logits, router_out = self.model.forward_with_router(x_adv)
        drift = sum(((o - c) ** 2).flatten(1).mean(1) for o, c in zip(router_out.omega, omega_clean))
        return attack_loss(logits, y, self.loss, clean_probs) - self.penalty * drift


class JointLossPGD(LinfPGD):
    """ The paper's adaptive attack: cross-entropy + `weight` x BCE(P_type(x'), adversarial) = CE - w log(1 - P(clean)).

    The cross-entropy is taken in the attack's `route` (None: the model's own; 'clean': the Clean BN path, signals
    from x'); P(clean) is always the router's. """

    def __init__(self, model: nn.Module, weight: float = 1.0, **kwargs):
        _dynamic(model, 'JointLossPGD')
        super().__init__(model, **kwargs)
        self.weight = weight

    def objective(self, x_adv, y, context):
        logits, router_out = self.model.forward_with_router(x_adv)
        type_log_probs = F.log_softmax(router_out.type_logits.float(), dim=1)  # [adversarial, clean]
        return attack_loss(logits, y, self.loss, context) - self.weight * type_log_probs[:, 0]


class TwoPhaseAttack(LinfPGD):
    """ Margin loss until misclassified, then maximise log P(clean) while staying misclassified.

    Returns, per sample, the misclassified iterate with the highest P(clean) (or the last iterate when
    none was misclassified): its own best-iterate rule, whatever `keep` says. Defaults (docs/evaluation.md section 6): 100 steps of 2.5 eps / 100, uniform start.
    """

    def __init__(self, model: nn.Module, eps: float = 8 / 255, steps: int = 100, step_size: Optional[float] = None, **kwargs):
        _dynamic(model, 'TwoPhaseAttack')
        super().__init__(model, eps=eps, step_size=2.5 * eps / steps if step_size is None else step_size,
                         steps=steps, loss='cw', **kwargs)

    def _run(self, x, y):
        x_adv = self._start(x)
        best = x_adv.clone()
        best_score = torch.full((len(x),), float('-inf'), device=x.device)
        for _ in range(self.steps + 1):
            x_adv.requires_grad_(True)
            with torch.enable_grad():
                logits, router_out = self.model.forward_with_router(x_adv)
                margin = attack_loss(logits, y, 'cw')  # > 0: misclassified
                log_p_clean = F.log_softmax(router_out.type_logits.float(), dim=1)[:, 1]
                fooled = margin > 0
                loss = torch.where(fooled, log_p_clean, margin)
                grad, = torch.autograd.grad(loss.sum(), x_adv)
            with torch.no_grad():
                better = fooled & (log_p_clean > best_score)
                best = torch.where(better[:, None, None, None], x_adv.detach(), best)
                best_score = torch.where(better, log_p_clean.detach(), best_score)
            x_adv = x_adv.detach() + self.step_size * grad.sign()
            x_adv = torch.min(torch.max(x_adv, x - self.eps), x + self.eps).clamp(0, 1)
        never = torch.isinf(best_score)
        return torch.where(never[:, None, None, None], x_adv.detach(), best)


class MixedSurrogateAttack:
    """ Transfer from several surrogates: per sample, the first surrogate example that fools `target`.

    Args:
        target: The model the examples are for (used only to check which examples fool it).
        attacks: Attacks built on surrogate models (any objects with `perturb(x, y)`).
        batch_size: Images per forward pass of `target` when checking (x may be the whole evaluation set).
    """

    def __init__(self, target: nn.Module, attacks: Sequence[Any], batch_size: int = 500):
        if not attacks:
            raise ValueError('MixedSurrogateAttack needs at least one surrogate attack')
        self.target = target
        self.attacks = list(attacks)
        self.batch_size = batch_size

    @torch.no_grad()
    def _fooled(self, x, y):
        device = next(self.target.parameters(), x).device
        with eval_mode(self.target):
            return torch.cat([scored_logits(self.target, x[i:i + self.batch_size].to(device)).argmax(1).to(x.device)
                              != y[i:i + self.batch_size] for i in range(0, len(x), self.batch_size)])

    def perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out, done = x.clone(), torch.zeros(len(x), dtype=torch.bool, device=x.device)
        for attack in self.attacks:
            todo = ~done
            if not todo.any():
                break
            x_adv = attack.perturb(x[todo], y[todo])
            fooled = self._fooled(x_adv, y[todo])
            out[todo] = x_adv
            done[todo.nonzero().squeeze(1)[fooled]] = True
        return out
