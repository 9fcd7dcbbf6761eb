""" The training loop behind `awnet train` and `awnet finetune`: one function, `train(cfg)`

Per epoch: shuffle and augment on the device, one recipe step per batch (bf16 autocast on CUDA),
SGD step, MTARD weight update; then clean and PGD accuracy on the held-out set, W-Robust accuracy
(mean of the two, Eq. 23) to pick the best checkpoint, atomic checkpoints and one JSON line of log.
An epoch whose holdout PGD accuracy falls below half the best epoch's (`robust_collapsed`: catastrophic
overfitting) is flagged in its log record (`robust_collapse`) and said; the run goes on, and the best
checkpoint stays at the earlier epoch unless a later one beats it.

Exact resume: a run's randomness is re-seeded from (seed, epoch, rank) at every epoch boundary and the
data order is a function of (seed, epoch), so restoring model, optimizer, scheduler and MTARD weights
at an epoch boundary continues the run bit for bit (on a deterministic device).
A resume may change `epochs` (continue a run stopped by --max-minutes to more epochs, or extend a finished
one) and move multistep milestones that lie ahead of it: the lr scheduler is then rebuilt for the new
schedule and the run continues at its current step, whose lr jumps to the new schedule's value there
(cosine, linear and onecycle stretch to the new length; multistep milestones are absolute epochs, so
more epochs alone change no lr: the added epochs run at the lr after the last milestone). The change is
printed, kept in the training state (`schedule_changes`) and noted in the first log record after it.

Under `torchrun` every rank trains on its shard of each batch in DistributedDataParallel; metrics are
averaged over ranks and only rank 0 writes files.

A diverging run stops with `DivergenceError` at the next log line or epoch end (a flag kept on the device,
so no host sync per step) and never writes non-finite weights, nor an epoch whose mean training loss (or its running
mean at a log line) exploded past LOSS_EXPLOSION x the first epoch's (read back from the log on a resume), a loss that
grows without ever becoming NaN; Ctrl-C raises `RunInterrupted`, which names
the run to resume. A run folder this call created is removed when it fails before its first checkpoint.
"""
import dataclasses
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
import torch.nn as nn
from timm.optim import create_optimizer_v2
from timm.utils.distributed import init_distributed_device_so
from tqdm.auto import tqdm

from ..attacks import LinfPGD
from ..data import DeviceLoader, ImageTensors, load_dataset
from ..timing import StoppedClock
from ..utils import atomic_write_text, resolve_device
from .checkpoint import (
    CheckpointError, create_model_with_weights, load_train_state, nonfinite_tensors, read_log, read_train_state_meta,
    run_model_kwargs, save_train_state, save_weights)
from .config import ConfigError, TrainConfig
from .recipes import TrainForward, create_recipe, is_dynamic, train_step
from .schedules import create_lr_scheduler
from .teachers import load_teacher

__all__ = ['train', 'TrainResult', 'evaluate', 'robust_collapsed', 'create_train_optimizer', 'fixed_batch_step', 'load_run_config', 'RESUMABLE_CHANGES', 'DivergenceError', 'RunInterrupted', 'LOSS_EXPLOSION']

LOSS_EXPLOSION = 1e6  # a mean training loss this many times the first epoch's has exploded, finite or not

# fields a resumed run may change: they do not alter what the run computed so far (a changed `epochs` rebuilds
# the lr schedule for the new length from the current step on)
RESUMABLE_CHANGES = ('resume', 'max_minutes', 'progress', 'log_interval', 'epochs', 'device', 'precision', 'output',
                     'data_dir', 'pretrained')  # pretrained: the first epoch's start, moot once a run has a checkpoint


@dataclass
class TrainResult:
    run_dir: str
    epochs_done: int
    finished: bool  # False when --max-minutes stopped it early (resume to continue)
    last: Optional[Dict[str, Any]]
    best: Optional[Dict[str, Any]]
    model: nn.Module  # the trained model, unwrapped, as after the last epoch
    recipe_state: Dict[str, torch.Tensor] = field(default_factory=dict)  # what checkpoints save of the recipe (MTARD's weights)


class DivergenceError(RuntimeError):
    """The training loss or the weights became NaN or inf, or the loss exploded; the run's checkpoints hold the last
    epoch before."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run: `run_dir` holds `epochs_saved` finished epochs (0: nothing was kept)."""

    def __init__(self, run_dir: str, epochs_saved: int):
        super().__init__(run_dir, epochs_saved)
        self.run_dir, self.epochs_saved = run_dir, epochs_saved


class _RunFolder:
    """Where a train() call stands on disk, so that a failure can clean up or name the run to resume."""

    def __init__(self):
        self.path, self.created, self.epochs_saved = '', False, 0

    def remove_if_empty_run(self):
        # a folder made by this call holding no checkpoint yet is a half-made run: leave nothing behind
        if self.created and self.epochs_saved == 0 and os.path.isdir(self.path):
            shutil.rmtree(self.path, ignore_errors=True)


class _Dist:
    """This process's place in a torchrun job (a single process when not launched by torchrun)."""

    def __init__(self, device: str):
        device = str(resolve_device(device))  # a clear error for a device this machine does not have
        if dist.is_initialized():  # a second train() in the same torchrun process
            self.world_size, self.rank = dist.get_world_size(), dist.get_rank()
            local_rank = int(os.environ.get('LOCAL_RANK', '0'))
            self.device = torch.device(f'cuda:{local_rank}' if device.startswith('cuda') and self.world_size > 1 else device)
        else:  # timm's launcher logic: torchrun / SLURM env, process group, one device per rank
            info = init_distributed_device_so(device=device)
            self.world_size, self.rank, self.device = info['world_size'], info['global_rank'], torch.device(info['device'])
        self.enabled = self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def mean(self, values: Dict[str, torch.Tensor]) -> Dict[str, float]:
        if not values:
            return {}
        keys = sorted(values)
        stacked = torch.stack([values[k].float() for k in keys])
        if self.enabled:
            dist.all_reduce(stacked)
            stacked /= self.world_size
        return dict(zip(keys, stacked.tolist()))

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            dist.all_reduce(t)
        return t

    def any(self, flag: torch.Tensor) -> bool:
        """Whether the flag is set on any rank (one host sync)."""
        flag = flag.float().reshape(1)
        if self.enabled:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def agree(self, flag: bool) -> bool:
        """Rank 0's decision, on every rank."""
        if not self.enabled:
            return flag
        t = torch.tensor([float(flag)], device=self.device)
        dist.broadcast(t, 0)
        return bool(t.item())

    def barrier(self):
        if self.enabled:
            dist.barrier()


def load_run_config(run_dir: str) -> TrainConfig:
    """The TrainConfig a run was started with (its config.json)."""
    path = os.path.join(run_dir, 'config.json')
    if not os.path.isfile(path):
        raise CheckpointError(f"'{run_dir}' is not a run directory: it has no config.json")
    with open(path) as f:
        return TrainConfig.from_dict(json.load(f))


def _seed_epoch(cfg: TrainConfig, epoch: int, rank: int):
    torch.manual_seed((cfg.seed * 1_000_003 + epoch) * 9973 + rank)


def _resolve_run_dir(cfg: TrainConfig) -> Tuple[str, Optional[str]]:
    """(run directory, training-state file to resume from or None)."""
    if cfg.resume and cfg.resume != 'auto':
        path = cfg.resume
        run_dir = os.path.dirname(path) if path.endswith('.safetensors') else path
        state = path if path.endswith('.safetensors') else os.path.join(run_dir, 'last.state.safetensors')
        if not os.path.isfile(state):
            raise CheckpointError(f"cannot resume from '{cfg.resume}': no {state} (a run directory of awnet train)")
        return run_dir, state
    name = cfg.run_name or f"{cfg.model.replace('/', '_').replace(':', '_')}-{cfg.recipe}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = os.path.join(cfg.output, name)
    state = os.path.join(run_dir, 'last.state.safetensors')
    if cfg.resume == 'auto' and os.path.isfile(state):
        return run_dir, state
    if os.path.isfile(state):
        raise ConfigError(f"run directory '{run_dir}' already holds a run: pass --resume auto to continue it, "
                          f"or another --run-name")
    return run_dir, None


def robust_collapsed(best_pgd: float, pgd: float) -> bool:
    """Whether an epoch's holdout PGD accuracy has collapsed against the best epoch's: below half of it, from a best
    of at least 10% (catastrophic overfitting: robust accuracy falls towards 0 within an epoch or two while clean
    accuracy rises; Wong et al. 2020, de Jorge et al. 2022)."""
    return best_pgd >= 0.1 and pgd < 0.5 * best_pgd


def _check_resumable(cfg: TrainConfig, saved: TrainConfig, epochs_done: int):
    changed = [f.name for f in dataclasses.fields(cfg) if f.name not in RESUMABLE_CHANGES + ('decay_milestones',)
               and getattr(cfg, f.name) != getattr(saved, f.name)]

    def taken(milestones):  # milestone m divides the lr from epoch m (1-based): these shaped the epochs done
        return [m for m in milestones if m <= epochs_done]
    if taken(cfg.decay_milestones) != taken(saved.decay_milestones):
        changed.append('decay_milestones')
    if changed:
        diffs = ', '.join(f'{k}: saved {getattr(saved, k)!r}, given {getattr(cfg, k)!r}' for k in changed)
        raise ConfigError(f'resume must continue the same run, but the config differs ({diffs}); only '
                          f'{", ".join(RESUMABLE_CHANGES)} may change, and decay_milestones after the '
                          f'{epochs_done} epoch(s) done')


def _schedule(cfg: TrainConfig) -> Dict[str, Any]:
    """What the lr scheduler's shape depends on that a resume may change."""
    return {'epochs': cfg.epochs, 'decay_milestones': list(cfg.decay_milestones)}


def _load_data(cfg: TrainConfig, d: _Dist) -> Tuple[ImageTensors, Optional[ImageTensors]]:
    in_chans = cfg.model_args().get('in_chans', 3)  # images are decoded in the model's channel count
    if d.main or not cfg.download:
        train = load_dataset(cfg.dataset, cfg.data_dir, cfg.train_split, cfg.download, cfg.img_size, cfg.train_size, in_chans)
    d.barrier()  # rank 0 downloads first
    if not d.main and cfg.download:
        train = load_dataset(cfg.dataset, cfg.data_dir, cfg.train_split, False, cfg.img_size, cfg.train_size, in_chans)
    if cfg.val_size == 0:
        return train, None
    if cfg.val_split == 'holdout':
        if cfg.val_size >= len(train):
            raise ConfigError(f'val_size {cfg.val_size} leaves no training images out of {len(train)}')
        return train.subset(0, len(train) - cfg.val_size), train.subset(len(train) - cfg.val_size)
    val = load_dataset(cfg.dataset, cfg.data_dir, cfg.val_split, False, cfg.img_size, cfg.val_size, in_chans)
    if val.classes != train.classes:  # labels are class indices: another class set scores one class as another
        raise ConfigError(f"the {cfg.val_split} split's classes {list(val.classes)} are not the {cfg.train_split} "
                          f"split's {list(train.classes)}: give an ImageFolder whose splits have the same class folders")
    return train, val


def _with_built_model_kwargs(cfg: TrainConfig) -> TrainConfig:
    """The config with the model arguments the model is built with: those of the --pretrained run, then the given ones.

    A --head given here replaces the pretrained run's head (its FC weights load into either head).
    """
    inherited = run_model_kwargs(cfg.pretrained)
    if cfg.head and inherited.get('head', cfg.head) != cfg.head:
        inherited = dict(inherited, head=cfg.head)
    return dataclasses.replace(cfg, model_kwargs={**inherited, **cfg.model_kwargs}) if inherited else cfg


def _build_model(cfg: TrainConfig, num_classes: int) -> nn.Module:
    try:
        model = create_model_with_weights(cfg.model, cfg.pretrained, num_classes, **cfg.model_args())
    except TypeError as e:  # a model argument this architecture does not take (--model-kwargs, --head, --beta)
        if 'unexpected keyword argument' not in str(e):
            raise
        raise ConfigError(f"model '{cfg.model}' does not take the arguments {cfg.model_args()}: {e}") from None
    if cfg.freeze_router and getattr(model, 'router', None) is None:
        raise ConfigError(f"freeze_router needs a model with a router; '{cfg.model}' has none")
    return model


def _frozen_modules(model: nn.Module, cfg: TrainConfig) -> List[nn.Module]:
    frozen = []
    if cfg.freeze_router:
        frozen.append(model.router)
    if cfg.freeze_backbone:
        keep = {id(model.get_classifier()), id(getattr(model, 'router', None))}
        frozen += [m for name, m in model.named_children() if id(m) not in keep]
    return frozen


def _set_train_mode(model: nn.Module, frozen: List[nn.Module]):
    model.train()
    for m in frozen:
        m.eval()  # frozen parts keep their BN statistics too


def _param_groups(model: nn.Module, cfg: TrainConfig) -> List[Dict[str, Any]]:
    router = getattr(model, 'router', None)
    router_ids = {id(p) for p in router.parameters()} if router is not None else set()
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{'params': [p for p in params if id(p) not in router_ids], 'lr': cfg.lr}]
    router_params = [p for p in params if id(p) in router_ids]
    if router_params:
        groups.append({'params': router_params, 'lr': cfg.router_lr})
    if not any(g['params'] for g in groups):
        raise ConfigError('nothing to train: every parameter is frozen')
    return [g for g in groups if g['params']]


def create_train_optimizer(cfg: TrainConfig, model: nn.Module, recipe) -> torch.optim.Optimizer:
    """timm's momentum SGD over the student's trainable parameters (the router's at router_lr) and the recipe's own."""
    return create_optimizer_v2(_param_groups(model, cfg) + recipe.param_groups(), 'momentum', lr=cfg.lr,
                               weight_decay=cfg.weight_decay, momentum=cfg.momentum)


def fixed_batch_step(cfg: TrainConfig, model: nn.Module, teachers: Optional[Sequence[nn.Module]], x: torch.Tensor,
                     y: torch.Tensor, autocast: bool) -> Callable[[], None]:
    """ `cfg`'s training step on one fixed batch, built as `train()` builds it, for timing and FLOP counting.

    TrainForward (compiled with the model when `cfg.compile`), recipe and optimizer; each call of the returned
    function runs one step in train mode. Used by the zoo's throughput probe and benchmarks/bench_training.py.
    """
    forward = TrainForward(model)
    if cfg.compile:
        model.compile()
        forward.compile()
    recipe = create_recipe(cfg, model, forward, teachers)
    optimizer = create_train_optimizer(cfg, model, recipe)

    def step():
        model.train()
        train_step(recipe, optimizer, x, y, autocast)

    return step


@torch.no_grad()
def _no_grad_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (model(x).argmax(1) == y).sum()


def evaluate(
        model: nn.Module,
        loader: DeviceLoader,
        eps: float,
        step_size: float,
        steps: int,
        autocast: bool = False,
        progress: bool = False,
) -> Dict[str, torch.Tensor]:
    """Correct counts on clean and on PGD (CE, uniform start) inputs, in eval mode and the model's own route."""
    model.eval()
    attack = LinfPGD(model, eps=eps, step_size=step_size, steps=steps, loss='ce', check_range=False)
    device = loader.device
    counts = torch.zeros(3, device=device)
    for x, y in tqdm(loader, desc='eval', leave=False, disable=not progress):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            counts[0] += _no_grad_accuracy(model, x, y)
            counts[1] += _no_grad_accuracy(model, attack.perturb(x, y), y) if eps > 0 else counts.new_zeros(())
        counts[2] += len(y)
    return {'correct_clean': counts[0], 'correct_pgd': counts[1], 'count': counts[2]}


def _json_line(record: Dict[str, Any]) -> str:
    # strict JSON: a non-finite number becomes null (bare NaN tokens are not JSON)
    return json.dumps({k: v if not isinstance(v, float) or math.isfinite(v) else None for k, v in record.items()},
                      allow_nan=False)


def _log(run_dir: str, record: Dict[str, Any]):
    with open(os.path.join(run_dir, 'log.jsonl'), 'a') as f:
        f.write(_json_line(record) + '\n')


def _diverged(epoch: int, step: int, folder: '_RunFolder', what: str = 'the training loss',
              how: str = 'became NaN or inf') -> DivergenceError:
    kept = (f'{folder.path} keeps its last finite epoch ({folder.epochs_saved})' if folder.epochs_saved
            else 'no epoch had finished, so nothing was kept')
    return DivergenceError(f'{what} {how} in epoch {epoch + 1} (by step {step + 1}): the run diverged; {kept}. '
                           f'Lower --lr (or raise --warmup-epochs) and start again')


def _exploded(epoch: int, step: int, folder: '_RunFolder', loss: float, first: float) -> DivergenceError:
    return _diverged(epoch, step, folder, how=f"exploded (mean {loss:.3g}, over {LOSS_EXPLOSION:g} x the first epoch's "
                                              f'{first:.3g})')


def train(cfg: TrainConfig) -> TrainResult:
    """Train (or fine-tune) as `cfg` says; returns where the run is and how far it got.

    Raises ConfigError / CheckpointError / DatasetError (ValueErrors) on bad input before anything is written,
    DivergenceError when the loss becomes non-finite or explodes, RunInterrupted (a KeyboardInterrupt) on Ctrl-C.
    """
    folder = _RunFolder()
    try:
        with StoppedClock() as stopped:
            return _train(cfg, folder, stopped)
    except BaseException as e:
        folder.remove_if_empty_run()
        if isinstance(e, KeyboardInterrupt) and not isinstance(e, RunInterrupted) and folder.path:
            raise RunInterrupted(folder.path, folder.epochs_saved) from None
        raise


def _train(cfg: TrainConfig, folder: _RunFolder, stopped: StoppedClock) -> TrainResult:
    t_start = time.time()
    cfg = _with_built_model_kwargs(cfg.validate())
    d = _Dist(cfg.device)
    run_dir, resume_state = _resolve_run_dir(cfg)
    saved = None
    if resume_state is not None:
        saved = load_run_config(run_dir)
        _check_resumable(cfg, saved, read_train_state_meta(resume_state)['epoch'])
    autocast = cfg.autocast(d.device)
    if cfg.batch_size % d.world_size:
        raise ConfigError(f'batch_size {cfg.batch_size} does not split over {d.world_size} ranks')

    train_data, val_data = _load_data(cfg, d)
    if math.ceil(len(train_data) / d.world_size) < cfg.batch_size // d.world_size:
        raise ConfigError(f'{len(train_data)} training images are fewer than one batch of {cfg.batch_size}: '
                          f'lower --batch-size (or use more images)')
    num_classes = cfg.num_classes or len(train_data.classes)
    if int(train_data.labels.max()) >= num_classes:
        raise ConfigError(f'labels go up to {int(train_data.labels.max())}, but num_classes is {num_classes}')
    torch.manual_seed(cfg.seed)
    model = _build_model(cfg, num_classes)
    frozen = _frozen_modules(model, cfg)
    for m in frozen:
        m.requires_grad_(False)
    model.to(d.device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    teachers = None
    if cfg.recipe == 'mtard':
        teachers = [load_teacher(cfg.teacher_nat, cfg.teacher_nat_checkpoint, num_classes, d.device),
                    load_teacher(cfg.teacher_adv, cfg.teacher_adv_checkpoint, num_classes, d.device)]

    forward = TrainForward(model)
    if cfg.compile:
        model.compile()
        forward.compile()
    if d.enabled:
        forward = nn.parallel.DistributedDataParallel(
            forward, device_ids=[d.device.index] if d.device.type == 'cuda' else None,
            find_unused_parameters=cfg.recipe == 'standard' and is_dynamic(model))
    recipe = create_recipe(cfg, model, forward, teachers)
    optimizer = create_train_optimizer(cfg, model, recipe)

    loader_args = dict(device=d.device, seed=cfg.seed, rank=d.rank, world_size=d.world_size,
                       resident=cfg.data_on_device, channels_last=cfg.channels_last)
    train_loader = DeviceLoader(train_data, cfg.batch_size // d.world_size, train=True, pad=cfg.crop_pad, flip=cfg.hflip, **loader_args)
    val_loader = DeviceLoader(val_data, cfg.batch_size // d.world_size, train=False, **loader_args) if val_data is not None else None
    scheduler = create_lr_scheduler(cfg, optimizer, len(train_loader))

    start_epoch, best, schedule_changes, schedule_was = 0, None, [], None
    first_loss = None  # the first epoch's mean training loss: the scale an exploding loss is measured against
    if resume_state is not None:
        model_state, opt_state, extra, meta = load_train_state(resume_state)
        try:
            model.load_state_dict(model_state)
            optimizer.load_state_dict(opt_state)
        except (RuntimeError, ValueError) as e:
            raise CheckpointError(f"'{resume_state}' does not match this model/optimizer: {e}") from None
        if recipe.state_module() is not None:
            recipe.state_module().load_state_dict({k.split('.', 1)[1]: v for k, v in extra.items() if k.startswith('recipe.')})
        start_epoch, best = meta['epoch'], meta.get('best')
        first_loss = next((r.get('train_loss') for r in read_log(run_dir) if r.get('epoch') == 1), None)
        schedule_changes = meta.get('schedule_changes', [])
        built_for = meta.get('schedule') or _schedule(saved)  # states written before 'schedule' was saved: the run's config
        if built_for == _schedule(cfg):
            scheduler.load_state_dict(meta['scheduler'])  # the same schedule: continue it exactly
        else:  # keep the scheduler just built for the new schedule: the run follows it from its current step
            schedule_was = built_for
            schedule_changes = schedule_changes + [{'epoch': start_epoch, 'from': built_for, 'to': _schedule(cfg)}]
    folder.path, folder.epochs_saved = run_dir, start_epoch
    if d.main:
        folder.created = not os.path.isdir(run_dir)
        os.makedirs(run_dir, exist_ok=True)
        atomic_write_text(os.path.join(run_dir, 'config.json'), cfg.to_json())
        start = ('resuming at epoch ' + str(start_epoch + 1) if start_epoch else
                 f'from the weights of {cfg.pretrained}' if cfg.pretrained else 'from scratch')
        print(f'awnet {"finetune" if cfg.pretrained else "train"}: run {run_dir} on {d.device} x{d.world_size}, '
              f'{"bf16" if autocast else "fp32"}, {len(train_data)} train / {len(val_data) if val_data else 0} val images, '
              f'{start}\n{cfg.to_json()}')
        if schedule_was is not None:
            print(f'awnet {"finetune" if cfg.pretrained else "train"}: the lr schedule was built for {schedule_was}; rebuilt for {_schedule(cfg)}, it continues '
                  f'at step {start_epoch * len(train_loader)} (epoch {start_epoch + 1}) of the new schedule')

    last, epoch_times, finished = None, [], True
    epoch = start_epoch
    for epoch in range(start_epoch, cfg.epochs):
        t_epoch, stopped_before = time.time(), stopped.seconds()
        _seed_epoch(cfg, epoch, d.rank)
        scheduler.step(epoch)
        train_loader.set_epoch(epoch)
        _set_train_mode(model, frozen)
        sums: Dict[str, torch.Tensor] = {}
        nonfinite = torch.zeros((), dtype=torch.bool, device=d.device)  # checked at log lines and epoch end, not per step
        bar = tqdm(train_loader, desc=f'epoch {epoch + 1}/{cfg.epochs}', disable=not (d.main and cfg.progress), leave=False)
        step = -1
        for step, (x, y) in enumerate(bar):
            scheduler.step_update(epoch * len(train_loader) + step)  # per-step schedules (no-op for multistep)
            lr_scale = optimizer.param_groups[0]['lr'] / cfg.lr if cfg.lr > 0 else 1.0
            loss, metrics = train_step(recipe, optimizer, x, y, autocast, lr_scale)
            nonfinite |= ~torch.isfinite(loss.detach())
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0) + v.float()
            if (step + 1) % cfg.log_interval == 0:
                if d.any(nonfinite):
                    raise _diverged(epoch, step, folder)
                running = sums['loss'] / (step + 1)
                if first_loss and d.any(running.abs() > LOSS_EXPLOSION * abs(first_loss)):
                    raise _exploded(epoch, step, folder, running.item(), first_loss)
                if d.main:
                    shown = {k: f'{v.item() / (step + 1):.3f}' for k, v in sums.items() if k in ('loss', 'acc_adv', 'acc_clean')}
                    if cfg.progress:
                        bar.set_postfix(shown)
                    else:
                        tqdm.write(f'epoch {epoch + 1}/{cfg.epochs} step {step + 1}/{len(train_loader)}: '
                                   + ', '.join(f'{k} {v}' for k, v in shown.items()))
        if d.any(nonfinite):
            raise _diverged(epoch, step, folder)
        recipe.end_epoch()
        bad = nonfinite_tensors(model.state_dict())
        if d.any(torch.tensor(bool(bad), device=d.device)):
            raise _diverged(epoch, step, folder, f'the weights ({", ".join(bad[:3]) or "on another rank"})')
        train_metrics = d.mean({k: v / len(train_loader) for k, v in sums.items()})
        if first_loss and abs(train_metrics['loss']) > LOSS_EXPLOSION * abs(first_loss):
            raise _exploded(epoch, step, folder, train_metrics['loss'], first_loss)
        if epoch == 0:
            first_loss = train_metrics['loss']
        record = {'epoch': epoch + 1, 'lr': optimizer.param_groups[0]['lr'], 'images': len(train_loader) * cfg.batch_size,
                  **{f'train_{k}': v for k, v in train_metrics.items()}}
        if val_loader is not None:
            counts = evaluate(model, val_loader, cfg.eps, cfg.val_step(), cfg.val_attack_steps, autocast, d.main and cfg.progress)
            counts = {k: d.sum(v).item() for k, v in counts.items()}
            clean, robust = counts['correct_clean'] / counts['count'], counts['correct_pgd'] / counts['count']
            record.update(val_images=int(counts['count']), val_clean_acc=clean, val_pgd_acc=robust,
                          val_w_robust_acc=(clean + robust) / 2)  # W-Robust accuracy, Eq. 23
        if best is not None and 'val_pgd_acc' in record and robust_collapsed(best['val_pgd_acc'], record['val_pgd_acc']):
            # catastrophic overfitting (or another collapse): flagged and said; the best checkpoint stays where it was
            record['robust_collapse'] = {'best_epoch': best['epoch'], 'best_val_pgd_acc': best['val_pgd_acc']}
            if d.main:
                tqdm.write(f"awnet train: holdout PGD accuracy fell to {100 * record['val_pgd_acc']:.1f}% at epoch "
                           f"{epoch + 1} from {100 * best['val_pgd_acc']:.1f}% at epoch {best['epoch']}: catastrophic "
                           f"overfitting? best.safetensors keeps epoch {best['epoch']} unless a later epoch beats it; "
                           f"a run that stays collapsed wants a stronger training attack (more PGD steps)")
        record['epoch_seconds'] = time.time() - t_epoch
        record['stopped_seconds'] = stopped.seconds() - stopped_before  # kill -STOP'ed, within epoch_seconds
        if schedule_was is not None and epoch == start_epoch:
            record['schedule_was'] = schedule_was  # the lr schedule changed at this epoch (a resume with new epochs)
        is_best = 'val_w_robust_acc' in record and (best is None or record['val_w_robust_acc'] > best['val_w_robust_acc'])
        if is_best:
            best = {k: record[k] for k in ('epoch', 'val_clean_acc', 'val_pgd_acc', 'val_w_robust_acc')}
        last = record
        if d.main:
            meta = {'epoch': epoch + 1, 'scheduler': scheduler.state_dict(), 'schedule': _schedule(cfg),
                    'schedule_changes': schedule_changes, 'best': best, 'last': record, 'model': cfg.model}
            extra = {f'recipe.{k}': v for k, v in recipe.state_module().state_dict().items()} if recipe.state_module() is not None else {}
            if is_best:
                save_weights(os.path.join(run_dir, 'best.safetensors'), model, {'epoch': str(epoch + 1), 'model': cfg.model})
            save_weights(os.path.join(run_dir, 'last.safetensors'), model, {'epoch': str(epoch + 1), 'model': cfg.model})
            save_train_state(os.path.join(run_dir, 'last.state.safetensors'), model, optimizer, extra, meta)
            _log(run_dir, record)
            tqdm.write(_json_line(record))
        folder.epochs_saved = epoch + 1
        epoch_times.append(time.time() - t_epoch)
        if cfg.max_minutes and epoch + 1 < cfg.epochs:  # 0 or None: no limit
            elapsed = time.time() - t_start
            out_of_time = elapsed + sum(epoch_times) / len(epoch_times) > cfg.max_minutes * 60
            if d.agree(out_of_time):
                finished = False
                if d.main:
                    tqdm.write(f'awnet train: stopping after epoch {epoch + 1} to stay within --max-minutes '
                               f'{cfg.max_minutes}; continue with `awnet train --resume {run_dir}` (--max-minutes 0: no limit)')
                break
    d.barrier()
    epochs_done = (epoch + 1) if cfg.epochs > start_epoch else start_epoch
    recipe_state = dict(recipe.state_module().state_dict()) if recipe.state_module() is not None else {}
    return TrainResult(run_dir, epochs_done, finished, last, best, model, recipe_state)
