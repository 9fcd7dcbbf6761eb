""" The budget: a throughput probe of a training stage's real step, the epochs a run has measured, and the most
whole epochs that fit a share

Before a stage has trained an epoch, its time is estimated by the probe; after, by its own measured epochs
(`measured_epochs`, from the run's log), which is what holds a time limit on a machine that others load.
The probe builds the stage's model, teachers and recipe as `train()` does, runs untimed warm-up steps
(the first one under `torch.utils.flop_counter.FlopCounterMode`, which gives the FLOPs per image of the
whole step: attack, teachers, student forward and backward), then times `steps` steps between device
synchronisations, and one per-epoch evaluation batch. Achieved TFLOP/s = FLOPs per image x images/s.
"""
import math
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from ..data import DeviceLoader, ImageTensors
from ..training import TrainConfig, create_model_with_weights, evaluate, fixed_batch_step
from ..training.checkpoint import read_log

__all__ = ['Probe', 'probe_stage', 'fit_epochs', 'device_name', 'measured_epochs', 'next_epoch_seconds']


@dataclass
class Probe:
    images_per_second: float  # training steps
    val_images_per_second: float  # the per-epoch evaluation (clean + PGD)
    flops_per_image: float  # one training step, forward and backward, per image
    setup_seconds: float  # building the model and the extra time of the warm-up steps (compilation)
    batch_size: int

    @property
    def tflops(self) -> float:
        """Achieved TFLOP/s of the training step."""
        return self.flops_per_image * self.images_per_second / 1e12

    def epoch_seconds(self, train_images: int, val_images: int) -> float:
        return train_images / self.images_per_second + (val_images / self.val_images_per_second if val_images else 0.)

    def to_dict(self) -> Dict[str, float]:
        return dict(asdict(self), tflops=self.tflops)


def device_name(device: torch.device) -> str:
    if device.type == 'cuda':
        return torch.cuda.get_device_name(device)
    import platform
    return f'cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)'


class _GlobalOnly:
    """Stands in for FlopCounterMode's module tracker, whose backward hooks break torch.autograd.grad (the attacks)."""
    parents = {'Global'}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _sync(device: torch.device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def probe_stage(cfg: TrainConfig, data: ImageTensors, teachers: Optional[Sequence[nn.Module]], device: torch.device,
                warmup: int = 2, steps: int = 5) -> Probe:
    """Images/s, FLOPs per image and setup time of `cfg`'s training step (and its per-epoch evaluation) on `device`."""
    t_setup = time.perf_counter()
    torch.manual_seed(cfg.seed)
    model = create_model_with_weights(cfg.model, cfg.pretrained, len(data.classes), **cfg.model_args()).to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    autocast = cfg.autocast(device)
    batch = min(cfg.batch_size, len(data))
    loader = DeviceLoader(data.subset(0, batch), batch, device, train=True, pad=cfg.crop_pad, flip=cfg.hflip,
                          seed=cfg.seed, channels_last=cfg.channels_last)
    x, y = next(iter(loader))
    step = fixed_batch_step(cfg, model, teachers, x, y, autocast)
    build_seconds = time.perf_counter() - t_setup
    t_warm = time.perf_counter()
    counter = FlopCounterMode(display=False)
    counter.mod_tracker = _GlobalOnly()
    with counter:
        step()
    flops = counter.get_total_flops()
    for _ in range(warmup - 1):
        step()
    _sync(device)
    warm_seconds = time.perf_counter() - t_warm
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    step_seconds = (time.perf_counter() - t0) / steps

    val_loader = DeviceLoader(data.subset(0, batch), batch, device, train=False, channels_last=cfg.channels_last)
    t0 = time.perf_counter()
    evaluate(model, val_loader, cfg.eps, cfg.val_step(), cfg.val_attack_steps, autocast)
    _sync(device)
    val_seconds = time.perf_counter() - t0
    del model, step
    if device.type == 'cuda':
        torch.cuda.empty_cache()
    return Probe(images_per_second=batch / step_seconds, val_images_per_second=batch / val_seconds,
                 flops_per_image=flops / batch, setup_seconds=build_seconds + max(0., warm_seconds - warmup * step_seconds),
                 batch_size=batch)


def fit_epochs(seconds: float, epoch_seconds: float, setup_seconds: float, max_epochs: int) -> int:
    """The most whole epochs (at most max_epochs) that fit `seconds` after `setup_seconds`; 0 if none does."""
    if epoch_seconds <= 0:
        raise ValueError(f'epoch_seconds must be > 0, got {epoch_seconds}')
    return max(0, min(max_epochs, math.floor((seconds - setup_seconds) / epoch_seconds)))


def measured_epochs(run_dir: str) -> List[Dict[str, Any]]:
    """The epoch records of a run's log.jsonl (epoch, images, epoch_seconds, holdout accuracies), oldest first."""
    return [r for r in read_log(run_dir) if isinstance(r.get('epoch_seconds'), (int, float))]


OUTLIER = 3.0  # an epoch this many times the median of the recent ones was paused or disturbed once: not a forecast


def next_epoch_seconds(records: Sequence[Dict[str, Any]], fallback: float) -> float:
    """The time the next epoch is given: the slowest of the last three measured (a busy machine's slow epochs count),
    without the seconds their process was stopped (`stopped_seconds`, kill -STOP for a test run), and leaving out one
    over OUTLIER x their median (a stop from before the training logged it; a machine that stays busy slows two of
    three, which moves the median)."""
    recent = [r['epoch_seconds'] - r.get('stopped_seconds', 0.0) for r in records[-3:]]
    if not recent:
        return fallback
    typical = statistics.median(recent)
    return max(t for t in recent if t <= OUTLIER * typical)
