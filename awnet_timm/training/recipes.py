""" Training recipes: the loss of one step, by name (mtard, pgd_at, trades, standard)

A recipe turns a batch (x, y) into a loss and a few metrics; it knows nothing about optimizers,
schedules or logging. It calls the student through `TrainForward` exactly once per step (one DDP
forward), which runs each (inputs, route) pair through the model and returns logits and type logits.

Dynamic students (an AW-Net: MixBN and a router) send clean inputs through the Clean BN (route
'clean') and adversarial ones through the Adv BN (route 'adv'), and add the router's type loss on both
(Sec. 4.4 of the paper); static students see the same losses without routes or type loss, so one code
path trains AW-Net and its static baseline.
- `mtard`: KL to a clean teacher on x_nat and to a robust teacher on x_adv, weighted by MTARD's
  adaptive weights (Zhao et al., ECCV 2022), plus the type loss.
- `pgd_at`: cross-entropy on PGD examples (Madry et al., 2018); AW-Net also gets cross-entropy on
  x_nat through its Clean BN (each branch weighted 1/2), so both branches train.
- `trades`: CE(x_nat) + beta * KL(p(x_nat) || p(x_adv)) (Zhang et al., ICML 2019), x_adv from PGD on that KL.
- `standard`: cross-entropy on clean inputs (clean teachers; AW-Net trains only its Clean BN).
"""
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..attacks import LinfPGD
from ..layers import RouterOutput
from ..models import AWNet
from .config import TrainConfig
from .mtard_loss import AdaptiveTeacherWeights, distill_kl, type_loss

__all__ = ['TrainForward', 'Recipe', 'create_recipe', 'is_dynamic']

Metrics = Dict[str, torch.Tensor]


def is_dynamic(model: nn.Module) -> bool:
    """An AW-Net with MixBN (clean and adversarial inputs take different routes in training)."""
    return isinstance(model, AWNet) and model.mix_bn


class TrainForward(nn.Module):
    """ The student's training forward: each (x, route) pair -> (logits, type logits or None).

    One module call per step covers every input, so DistributedDataParallel sees one forward per backward.
    An AW-Net's router sees all inputs of the step in one batch: with batch norm in its trunk, separate
    all-clean and all-adversarial batches would be normalised each by its own statistics, which removes
    exactly the difference the type head has to detect (and at test time the router's BN uses running
    statistics of the mixture).
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, inputs: List[Tuple[torch.Tensor, str]]) -> List[Tuple[torch.Tensor, Optional[torch.Tensor]]]:
        model = self.model
        if not (isinstance(model, AWNet) and model.router is not None):
            return [(model(x), None) for x, _ in inputs]
        sizes = [len(x) for x, _ in inputs]
        joint = model.forward_router(torch.cat([x for x, _ in inputs]))
        outputs = []
        for i, (x, route) in enumerate(inputs):
            router_out = RouterOutput(*[
                None if v is None else [o.split(sizes)[i] for o in v] if isinstance(v, list) else v.split(sizes)[i]
                for v in joint])
            logits, _ = model.forward_with_router(x, route=route if model.mix_bn else None, router_out=router_out)
            outputs.append((logits, router_out.type_logits))
        return outputs


def _accuracy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (logits.argmax(1) == y).float().mean()


class Recipe:
    """ Base: holds the student (unwrapped, for attacks) and its training forward (maybe DDP-wrapped). """
    name = ''
    attack_loss = 'ce'

    def __init__(self, cfg: TrainConfig, model: nn.Module, forward: nn.Module):
        self.cfg = cfg
        self.model = model
        self.forward = forward
        self.dynamic = is_dynamic(model)
        self.attack = LinfPGD(
            model, eps=cfg.eps, step_size=cfg.attack_step, steps=cfg.attack_steps, loss=self.attack_loss,
            random_start=cfg.resolved_attack_start, route=cfg.attack_route if self.dynamic else None,
            check_range=False)

    def state_module(self) -> Optional[nn.Module]:
        """Recipe state saved with checkpoints (MTARD's teacher weights), if any."""
        return None

    def after_step(self, lr_scale: float):
        """Called after each optimizer step with the current lr / base lr."""

    def _routes(self, x_nat: torch.Tensor, x_adv: torch.Tensor):
        (nat, type_nat), (adv, type_adv) = self.forward([(x_nat, 'clean'), (x_adv, 'adv')])
        return nat, adv, type_nat, type_adv

    def _type_loss(self, type_nat, type_adv, metrics: Metrics) -> torch.Tensor:
        if type_nat is None:
            return torch.zeros((), device=metrics['loss_task'].device)
        loss = 0.5 * (type_loss(type_nat, True) + type_loss(type_adv, False))
        metrics['loss_type'] = loss.detach()
        metrics['type_acc'] = 0.5 * ((type_nat.argmax(1) == 1).float().mean() + (type_adv.argmax(1) == 0).float().mean())
        return self.cfg.type_loss_weight * loss

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> Tuple[torch.Tensor, Metrics]:
        raise NotImplementedError


class Standard(Recipe):
    name = 'standard'

    def __init__(self, cfg: TrainConfig, model: nn.Module, forward: nn.Module):
        super().__init__(cfg, model, forward)
        self.attack = None

    def loss(self, x, y):
        (logits, _), = self.forward([(x, 'clean')])
        loss = F.cross_entropy(logits, y)
        return loss, {'loss': loss.detach(), 'loss_task': loss.detach(), 'acc_clean': _accuracy(logits, y)}


class PGDAT(Recipe):
    name = 'pgd_at'

    def loss(self, x, y):
        x_adv = self.attack.perturb(x, y)
        if not self.dynamic:
            (adv, _), = self.forward([(x_adv, 'adv')])
            task = F.cross_entropy(adv, y)
            metrics = {'loss_task': task.detach(), 'acc_adv': _accuracy(adv, y)}
            return task, dict(metrics, loss=task.detach())
        nat, adv, type_nat, type_adv = self._routes(x, x_adv)
        task = 0.5 * (F.cross_entropy(nat, y) + F.cross_entropy(adv, y))
        metrics = {'loss_task': task.detach(), 'acc_clean': _accuracy(nat, y), 'acc_adv': _accuracy(adv, y)}
        loss = task + self._type_loss(type_nat, type_adv, metrics)
        return loss, dict(metrics, loss=loss.detach())


class TRADES(Recipe):
    name = 'trades'
    attack_loss = 'kl'

    def loss(self, x, y):
        x_adv = self.attack.perturb(x, y)
        nat, adv, type_nat, type_adv = self._routes(x, x_adv)
        natural = F.cross_entropy(nat, y)
        robust = F.kl_div(F.log_softmax(adv.float(), 1), F.softmax(nat.float(), 1), reduction='batchmean')
        task = natural + self.cfg.trades_beta * robust
        metrics = {'loss_task': task.detach(), 'loss_robust': robust.detach(),
                   'acc_clean': _accuracy(nat, y), 'acc_adv': _accuracy(adv, y)}
        loss = task + self._type_loss(type_nat, type_adv, metrics)
        return loss, dict(metrics, loss=loss.detach())


class MTARD(Recipe):
    """ AW-Net's recipe: MTARD distillation from a clean and a robust teacher, plus the type loss. """
    name = 'mtard'

    def __init__(self, cfg: TrainConfig, model: nn.Module, forward: nn.Module, teachers: Sequence[nn.Module]):
        super().__init__(cfg, model, forward)
        if len(teachers) != 2:
            raise ValueError('mtard needs a clean and a robust teacher')
        self.teacher_nat, self.teacher_adv = teachers
        device = next(model.parameters()).device
        self.weights = AdaptiveTeacherWeights(eta=cfg.eta).to(device)
        self._kl = None

    def state_module(self):
        return self.weights

    def loss(self, x, y):
        x_adv = self.attack.perturb(x, y)
        with torch.no_grad():
            t_nat, t_adv = self.teacher_nat(x), self.teacher_adv(x_adv)
        nat, adv, type_nat, type_adv = self._routes(x, x_adv)
        kl_nat, kl_adv = distill_kl(nat, t_nat, self.cfg.tau), distill_kl(adv, t_adv, self.cfg.tau)
        task = self.weights.loss(kl_nat, kl_adv)
        self._kl = (kl_nat.detach(), kl_adv.detach())
        metrics = {'loss_task': task.detach(), 'kl_nat': kl_nat.detach(), 'kl_adv': kl_adv.detach(),
                   'w_nat': self.weights.w_nat.clone(), 'acc_clean': _accuracy(nat, y), 'acc_adv': _accuracy(adv, y)}
        loss = task + self._type_loss(type_nat, type_adv, metrics)
        return loss, dict(metrics, loss=loss.detach())

    def after_step(self, lr_scale: float):
        # the step's loss used the weights before this update
        self.weights.update(*self._kl, lr_scale=lr_scale)


def create_recipe(cfg: TrainConfig, model: nn.Module, forward: nn.Module,
                  teachers: Optional[Sequence[nn.Module]] = None) -> Recipe:
    """The recipe `cfg.recipe` for a student (`model` unwrapped, `forward` its TrainForward, maybe under DDP)."""
    if cfg.recipe == 'mtard':
        return MTARD(cfg, model, forward, teachers or ())
    classes = {'pgd_at': PGDAT, 'trades': TRADES, 'standard': Standard}
    if cfg.recipe not in classes:
        raise ValueError(f"unknown recipe '{cfg.recipe}': expected one of mtard, {', '.join(classes)}")
    return classes[cfg.recipe](cfg, model, forward)
