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
- `arat`: ARAT (Waseda et al., ICLR 2025): w_adv CE(x_adv) through the Adv BN + w_nat CE(x_nat) through the
  Clean BN + gamma * asymmetric invariance loss (training/arat.py); split-BN students only.
The training attack runs on a dynamic student in `--attack-route` (default 'adv'; 'mixed' attacks half of each
batch in route clean, so the router also learns the examples that target the Clean BN).
`--router-aware S` (mtard, pgd_at; not in the paper): a share S of each batch is also attacked by `RouterAwarePGD`
(made to fool the classifier and look clean), labelled adversarial for the type loss and sent down the route the
router takes ('auto'), so the student learns to classify them there (MTARD: distilled from the robust teacher with
x_adv) and the router to send them to the Adv BN. On that route the Clean BN normalises with its running statistics
and keeps them, as at test time: adversarial inputs must not move the clean statistics.
--label-smoothing smooths every cross-entropy on the labels (standard, pgd_at, trades's CE(x_nat), arat's two);
the attacks and TRADES's KL keep the hard labels / the model's own prediction; mtard has no such term and
refuses it (TrainConfig.validate).
"""
from contextlib import contextmanager
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from ..attacks import NFGSM, LinfPGD, RouterAwarePGD
from ..layers import MixBatchNorm2d, RouterOutput
from ..models import AWNet
from .arat import AsymmetricInvariance, SiteFeatures
from .config import ConfigError, TrainConfig
from .mtard_loss import AdaptiveTeacherWeights, distill_kl, type_loss

__all__ = ['TrainForward', 'Recipe', 'create_recipe', 'is_dynamic', 'train_step']

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
            if isinstance(model, AWNet) and model.mix_bn:  # split BN without a router (ARAT's students): routes pick the BN
                return [(model.forward_with_router(x, route=route)[0], None) for x, route in inputs]
            return [(model(x), None) for x, _ in inputs]
        sizes = [len(x) for x, _ in inputs]
        joint = model.forward_router(torch.cat([x for x, _ in inputs]))
        outputs = []
        for i, (x, route) in enumerate(inputs):
            router_out = RouterOutput(*[
                None if v is None else [o.split(sizes)[i] for o in v] if isinstance(v, list) else v.split(sizes)[i]
                for v in joint])
            with _clean_bn_at_running_stats(model, model.mix_bn and route == 'auto'):
                logits, _ = model.forward_with_router(x, route=route if model.mix_bn else None, router_out=router_out)
            outputs.append((logits, router_out.type_logits))
        return outputs


@contextmanager
def _clean_bn_at_running_stats(model: nn.Module, enabled: bool) -> Iterator[None]:
    """Every MixBN's Clean BN in eval mode (running statistics, not updated) while adversarial inputs take the
    router's blend in training; the Adv BN stays in the model's mode."""
    kept = [(m.clean, m.clean.training) for m in model.modules() if enabled and isinstance(m, MixBatchNorm2d)]
    for bn, _ in kept:
        bn.eval()
    try:
        yield
    finally:
        for bn, training in kept:
            bn.train(training)


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


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
        mixed = self.dynamic and cfg.attack_route == 'mixed'
        self.attack = self._attack(cfg, model, ('adv' if mixed else cfg.attack_route) if self.dynamic else None)
        self.attack_clean = self._attack(cfg, model, 'clean') if mixed else None
        self.attack_router = None
        if cfg.router_aware:
            if not (self.dynamic and model.use_type_head):
                raise ConfigError(f'router_aware trains the router of an AW-Net (MixBN and a type head); '
                                  f'{cfg.model} with {cfg.model_kwargs or "no arguments"} has none')
            self.attack_router = RouterAwarePGD(model, eps=cfg.eps, step_size=cfg.attack_step, steps=cfg.attack_steps,
                                                loss=self.attack_loss, check_range=False,
                                                train_mode=cfg.attack_bn == 'train')

    def _attack(self, cfg: TrainConfig, model: nn.Module, route: Optional[str]):
        common = dict(loss=self.attack_loss, route=route, check_range=False, train_mode=cfg.attack_bn == 'train')
        if cfg.attack == 'nfgsm':  # one step from a noisy start, no projection (de Jorge et al. 2022)
            return NFGSM(model, eps=cfg.eps, step_size=cfg.nfgsm_step, noise=cfg.nfgsm_noise, **common)
        return LinfPGD(model, eps=cfg.eps, step_size=cfg.attack_step, steps=cfg.attack_steps,
                       random_start=cfg.resolved_attack_start, **common)

    def adversarial(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The training attack's examples of (x, y); attack_route 'mixed': the first half of the batch attacked in
        route adv, the rest in route clean."""
        if self.attack_clean is None:
            return self.attack.perturb(x, y)
        half = (len(x) + 1) // 2
        return torch.cat([self.attack.perturb(x[:half], y[:half]), self.attack_clean.perturb(x[half:], y[half:])])

    def router_aware(self, x: torch.Tensor, y: torch.Tensor) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
        """(x_ra, y_ra): the router-aware attack's examples of the first `router_aware` share of the batch (the batch
        is shuffled), or None in the paper's training."""
        if self.attack_router is None:
            return None
        k = self._router_aware_rows(len(x))
        return self.attack_router.perturb(x[:k], y[:k]), y[:k]

    def _router_aware_rows(self, batch: int) -> int:
        return max(1, round(self.cfg.router_aware * batch))

    def state_module(self) -> Optional[nn.Module]:
        """Recipe state saved with checkpoints (MTARD's teacher weights), if any."""
        return None

    def before_step(self):
        """Called between the backward pass and the optimizer step (gradients of the recipe's own modules)."""

    def after_step(self, lr_scale: float):
        """Called after each optimizer step with the current lr / base lr."""

    def end_epoch(self):
        """Called after each epoch's last step, before the checkpoint saves `state_module()`."""

    def param_groups(self) -> List[Dict]:
        """Optimizer parameter groups of the recipe's own trainable modules (ARAT's predictors), if any."""
        return []

    def _routes(self, x_nat: torch.Tensor, x_adv: torch.Tensor, x_ra: Optional[torch.Tensor] = None):
        """(nat, adv, type_nat, type_adv) logits; with router-aware examples x_ra (route 'auto'), adv and type_adv
        hold x_adv's rows, then x_ra's."""
        inputs = [(x_nat, 'clean'), (x_adv, 'adv')] + ([(x_ra, 'auto')] if x_ra is not None else [])
        (nat, type_nat), *rest = self.forward(inputs)
        adv = torch.cat([logits for logits, _ in rest])
        type_adv = None if type_nat is None else torch.cat([t for _, t in rest])
        return nat, adv, type_nat, type_adv

    def _type_loss(self, type_nat, type_adv, metrics: Metrics) -> torch.Tensor:
        if type_nat is None:
            return torch.zeros((), device=metrics['loss_task'].device)
        loss = 0.5 * (type_loss(type_nat, True) + type_loss(type_adv, False))
        metrics['loss_type'] = loss.detach()
        metrics['type_acc'] = 0.5 * ((type_nat.argmax(1) == 1).float().mean() + (type_adv.argmax(1) == 0).float().mean())
        if self.attack_router is not None:  # the router-aware rows come last
            k = self._router_aware_rows(len(type_nat))
            metrics['type_acc_ra'] = (type_adv[-k:].argmax(1) == 0).float().mean()
        return self.cfg.type_loss_weight * loss

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> Tuple[torch.Tensor, Metrics]:
        raise NotImplementedError


class Standard(Recipe):
    name = 'standard'

    def __init__(self, cfg: TrainConfig, model: nn.Module, forward: nn.Module):
        super().__init__(cfg, model, forward)
        self.attack = self.attack_clean = None

    def loss(self, x, y):
        (logits, _), = self.forward([(x, 'clean')])
        loss = F.cross_entropy(logits, y, label_smoothing=self.cfg.label_smoothing)
        return loss, {'loss': loss.detach(), 'loss_task': loss.detach(), 'acc_clean': _accuracy(logits, y)}


class PGDAT(Recipe):
    name = 'pgd_at'

    def loss(self, x, y):
        x_adv = self.adversarial(x, y)
        if not self.dynamic:
            (adv, _), = self.forward([(x_adv, 'adv')])
            task = F.cross_entropy(adv, y, label_smoothing=self.cfg.label_smoothing)
            metrics = {'loss_task': task.detach(), 'acc_adv': _accuracy(adv, y)}
            return task, dict(metrics, loss=task.detach())
        ra = self.router_aware(x, y)
        nat, adv, type_nat, type_adv = self._routes(x, x_adv, ra[0] if ra else None)
        y_adv = torch.cat([y, ra[1]]) if ra else y
        smoothing = self.cfg.label_smoothing
        task = 0.5 * (F.cross_entropy(nat, y, label_smoothing=smoothing) + F.cross_entropy(adv, y_adv, label_smoothing=smoothing))
        metrics = {'loss_task': task.detach(), 'acc_clean': _accuracy(nat, y), 'acc_adv': _accuracy(adv, y_adv)}
        loss = task + self._type_loss(type_nat, type_adv, metrics)
        return loss, dict(metrics, loss=loss.detach())


class TRADES(Recipe):
    name = 'trades'
    attack_loss = 'kl'

    def loss(self, x, y):
        x_adv = self.adversarial(x, y)
        nat, adv, type_nat, type_adv = self._routes(x, x_adv)
        natural = F.cross_entropy(nat, y, label_smoothing=self.cfg.label_smoothing)
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
        x_adv = self.adversarial(x, y)
        ra = self.router_aware(x, y)
        if ra:  # distilled from the robust teacher, as x_adv is
            x_adv_all, y_adv = torch.cat([x_adv, ra[0]]), torch.cat([y, ra[1]])
        else:
            x_adv_all, y_adv = x_adv, y
        with torch.no_grad():
            t_nat, t_adv = self.teacher_nat(x), self.teacher_adv(x_adv_all)
        nat, adv, type_nat, type_adv = self._routes(x, x_adv, ra[0] if ra else None)
        kl_nat = distill_kl(nat, t_nat, self.cfg.tau, self.cfg.kl_reduction)
        kl_adv = distill_kl(adv, t_adv, self.cfg.tau, self.cfg.kl_reduction)
        task = self.weights.loss(kl_nat, kl_adv)
        self._kl = (kl_nat.detach(), kl_adv.detach())
        metrics = {'loss_task': task.detach(), 'kl_nat': kl_nat.detach(), 'kl_adv': kl_adv.detach(),
                   'w_nat': self.weights.w_nat.clone(), 'acc_clean': _accuracy(nat, y), 'acc_adv': _accuracy(adv, y_adv)}
        loss = task + self._type_loss(type_nat, type_adv, metrics)
        return loss, dict(metrics, loss=loss.detach())

    def after_step(self, lr_scale: float):
        # the step's loss used the weights before this update
        kl = torch.stack(self._kl)
        if _world_size() > 1:
            # under DDP every rank updates from the KLs of the whole batch, so the teacher weights stay one (no host sync)
            dist.all_reduce(kl)
            kl = kl / _world_size()
        self.weights.update(kl[0], kl[1], lr_scale=lr_scale)


class ARATState(nn.Module):
    """ARAT's trainable predictors and its CE balance (last epoch's clean training accuracy), saved with checkpoints."""

    def __init__(self, dims: Sequence[int], hidden_ratio: float, num_classes: int, device=None):
        super().__init__()
        self.invariance = AsymmetricInvariance(dims, hidden_ratio, device=device)
        self.register_buffer('clean_acc', torch.tensor(1.0 / num_classes, device=device))  # an untrained model's
        self.register_buffer('correct', torch.zeros((), device=device))
        self.register_buffer('seen', torch.zeros((), device=device))


class ARAT(Recipe):
    """ ARAT: AT with split BN and an asymmetric invariance loss (Waseda, Chang, Echizen, ICLR 2025).

    Loss = w_adv CE(f_adv(x_adv), y) + w_nat CE(f_clean(x_nat), y) + gamma * mean_l (1 - cos(h_l(z_adv), sg(z_nat))),
    with (w_adv, w_nat) = (acc, 1 - acc), acc the clean training accuracy of the previous epoch (the released
    code's auto-balance; --no-arat-auto-balance: (1, 1)). The student must have split BN (MixBN) and run its
    Adv BN alone at test: `cifar_resnet18` / `awnet_r18` with `{"mix_bn": true, "type_head": false}`.
    """
    name = 'arat'

    def __init__(self, cfg: TrainConfig, model: nn.Module, forward: nn.Module):
        super().__init__(cfg, model, forward)
        if not (self.dynamic and not model.use_type_head):
            raise ConfigError("recipe arat needs a split-BN student that deploys its Adv BN alone: an AW-Net-family "
                              "model with --model-kwargs '{\"mix_bn\": true, \"type_head\": false}' "
                              "(e.g. --model cifar_resnet18)")
        self.sites = SiteFeatures(model)
        device = next(model.parameters()).device
        self.state = ARATState(self.sites.dims, cfg.arat_predictor_ratio, model.num_classes, device)

    def state_module(self):
        return self.state

    def param_groups(self):
        return [{'params': list(self.state.parameters()), 'lr': self.cfg.lr}]

    def before_step(self):
        # the predictors live outside DistributedDataParallel (the student's forward is what DDP wraps), so their
        # gradients are averaged here, as DDP averages the student's: one set of predictors on every rank
        if _world_size() > 1:
            grads = [p.grad for p in self.state.parameters() if p.grad is not None]
            flat = torch.cat([g.reshape(-1) for g in grads])
            dist.all_reduce(flat)
            flat /= _world_size()
            offset = 0
            for g in grads:
                g.copy_(flat[offset:offset + g.numel()].view_as(g))
                offset += g.numel()

    def end_epoch(self):
        # the next epoch's CE balance: this epoch's clean training accuracy over every rank's shard
        s = self.state
        if _world_size() > 1:
            counts = torch.stack([s.correct, s.seen])
            dist.all_reduce(counts)
            s.correct.copy_(counts[0])
            s.seen.copy_(counts[1])
            for b in s.invariance.buffers():  # the predictors' BN statistics: rank 0's, as DDP does for the student
                dist.broadcast(b, 0)
        if s.seen > 0:
            s.clean_acc.copy_(s.correct / s.seen)
        s.correct.zero_()
        s.seen.zero_()

    def weights(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """(w_adv, w_nat) of the two cross-entropy terms."""
        if not self.cfg.arat_auto_balance:
            one = torch.ones((), device=self.state.clean_acc.device)
            return one, one
        return self.state.clean_acc, 1 - self.state.clean_acc

    def loss(self, x, y):
        x_adv = self.adversarial(x, y)
        with self.sites.capture() as z:
            nat, adv, type_nat, type_adv = self._routes(x, x_adv)
        n = len(self.sites.dims)
        invariance = self.state.invariance(z[n:2 * n], z[:n])  # the forward ran x_nat first, then x_adv
        w_adv, w_nat = self.weights()
        smoothing = self.cfg.label_smoothing
        ce_adv, ce_nat = F.cross_entropy(adv, y, label_smoothing=smoothing), F.cross_entropy(nat, y, label_smoothing=smoothing)
        task = w_adv * ce_adv + w_nat * ce_nat + self.cfg.arat_gamma * invariance
        with torch.no_grad():
            self.state.correct += (nat.argmax(1) == y).sum()
            self.state.seen += len(y)
        metrics = {'loss_task': task.detach(), 'loss_invariance': invariance.detach(), 'w_adv': w_adv.clone(),
                   'acc_clean': _accuracy(nat, y), 'acc_adv': _accuracy(adv, y)}
        loss = task + self._type_loss(type_nat, type_adv, metrics)
        return loss, dict(metrics, loss=loss.detach())


def train_step(recipe: 'Recipe', optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, autocast: bool,
               lr_scale: float = 1.0) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """One optimisation step of `recipe` on (x, y): loss (under bf16 autocast if asked), backward, SGD step, recipe update."""
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
        loss, metrics = recipe.loss(x, y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    recipe.before_step()
    optimizer.step()
    recipe.after_step(lr_scale)
    return loss, metrics


def create_recipe(cfg: TrainConfig, model: nn.Module, forward: nn.Module,
                  teachers: Optional[Sequence[nn.Module]] = None) -> Recipe:
    """The recipe `cfg.recipe` for a student (`model` unwrapped, `forward` its TrainForward, maybe under DDP)."""
    if cfg.recipe == 'mtard':
        return MTARD(cfg, model, forward, teachers or ())
    classes = {'pgd_at': PGDAT, 'trades': TRADES, 'standard': Standard, 'arat': ARAT}
    if cfg.recipe not in classes:
        raise ValueError(f"unknown recipe '{cfg.recipe}': expected one of mtard, {', '.join(classes)}")
    return classes[cfg.recipe](cfg, model, forward)
