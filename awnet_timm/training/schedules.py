""" The lr schedule of a run, built from timm's schedulers

'multistep' is the paper's (lr / 10 at the --decay-milestones epochs, set per epoch). 'cosine', 'linear'
(to zero) and 'onecycle' (linear up over the first --onecycle-peak of the steps, then linear to zero)
set the lr at every step, so a run of a few epochs still follows the whole shape; studies of training
under a budget favour schedules that decay to zero.
"""
import torch
from timm.scheduler import CosineLRScheduler, PolyLRScheduler, create_scheduler_v2
from timm.scheduler.scheduler import Scheduler

from .config import TrainConfig

__all__ = ['create_lr_scheduler']


def create_lr_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int) -> Scheduler:
    """The scheduler of `cfg.sched`; the trainer calls `step(epoch)` at each epoch and `step_update(step)` before each step."""
    if cfg.sched == 'multistep':
        scheduler, _ = create_scheduler_v2(optimizer, 'multistep', num_epochs=cfg.epochs, decay_milestones=list(cfg.decay_milestones),
                                           decay_rate=cfg.decay_rate, warmup_epochs=cfg.warmup_epochs, warmup_lr=cfg.lr * 0.01)
        return scheduler
    total = cfg.epochs * steps_per_epoch
    if cfg.sched == 'onecycle':
        rise = min(total - 1, max(1, round(cfg.onecycle_peak * total)))
        return PolyLRScheduler(optimizer, t_initial=max(1, total - rise), power=1.0, lr_min=0., warmup_t=rise,
                               warmup_lr_init=0., warmup_prefix=True, t_in_epochs=False)
    warmup = dict(warmup_t=cfg.warmup_epochs * steps_per_epoch, warmup_lr_init=cfg.lr * 0.01)
    if cfg.sched == 'cosine':
        return CosineLRScheduler(optimizer, t_initial=total, lr_min=0., t_in_epochs=False, **warmup)
    return PolyLRScheduler(optimizer, t_initial=total, power=1.0, lr_min=0., t_in_epochs=False, **warmup)
