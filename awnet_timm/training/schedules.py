""" The lr schedule of a run, built from timm's schedulers

'multistep' is the paper's (lr / 10 at the --decay-milestones epochs, set per epoch). 'cosine', 'linear'
(to zero) and 'onecycle' (linear up over the first --onecycle-peak of the steps, then linear to zero)
set the lr at every step, so a run of a few epochs still follows the whole shape; studies of training
under a budget favour schedules that decay to zero.

A warm-up (--warmup-epochs w, linear from lr / 100) comes before the schedule and is part of --epochs: the
lr reaches --lr when the warm-up ends, then cosine and linear decay over the remaining epochs - w (timm's
`warmup_prefix=True`; its default would run the warm-up over the first steps of the decay, so a run never
reaches --lr). The multistep milestones are absolute epochs, after the warm-up (TrainConfig refuses one
inside it). 'onecycle' rises by its own warm-up (--onecycle-peak) and takes no --warmup-epochs.
"""
import torch
from timm.scheduler import CosineLRScheduler, MultiStepLRScheduler, PolyLRScheduler
from timm.scheduler.scheduler import Scheduler

from .config import TrainConfig

__all__ = ['create_lr_scheduler']


def create_lr_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int) -> Scheduler:
    """The scheduler of `cfg.sched`; the trainer calls `step(epoch)` at each epoch and `step_update(step)` before each step."""
    if cfg.sched == 'multistep':  # per epoch; milestones count from the start of the run, warm-up included
        return MultiStepLRScheduler(optimizer, decay_t=list(cfg.decay_milestones), decay_rate=cfg.decay_rate,
                                    warmup_t=cfg.warmup_epochs, warmup_lr_init=cfg.lr * 0.01, warmup_prefix=False)
    total = cfg.epochs * steps_per_epoch
    if cfg.sched == 'onecycle':
        rise = min(total - 1, max(1, round(cfg.onecycle_peak * total)))
        return PolyLRScheduler(optimizer, t_initial=max(1, total - rise), power=1.0, lr_min=0., warmup_t=rise,
                               warmup_lr_init=0., warmup_prefix=True, t_in_epochs=False)
    warmup_t = cfg.warmup_epochs * steps_per_epoch
    args = dict(t_initial=total - warmup_t, lr_min=0., warmup_t=warmup_t, warmup_lr_init=cfg.lr * 0.01,
                warmup_prefix=True, t_in_epochs=False)
    if cfg.sched == 'cosine':
        return CosineLRScheduler(optimizer, **args)
    return PolyLRScheduler(optimizer, power=1.0, **args)
