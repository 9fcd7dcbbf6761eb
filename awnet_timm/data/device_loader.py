""" Batches from a uint8 image tensor held on the device, with the CIFAR augmentation done there

The standard CIFAR training augmentation (random crop with 4-pixel zero padding, horizontal flip;
timm has no such recipe) runs batched on the device: no DataLoader workers and no per-sample Python.
The shuffle order and the augmentation of an epoch are a function of (seed, epoch) only, so a run
resumed at an epoch boundary sees exactly the batches it would have seen. Under DDP each rank takes
its shard of one shared permutation (as torch's DistributedSampler does).
"""
import math
from typing import Iterator, Optional, Tuple

import torch
import torch.nn.functional as F

from .datasets import ImageTensors

__all__ = ['DeviceLoader', 'random_crop_flip']


def random_crop_flip(
        images: torch.Tensor,
        pad: int = 4,
        flip: bool = True,
        generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Random crop of the zero-padded batch back to its size, then random horizontal flip (uint8 or float)."""
    b, _, h, w = images.shape
    if pad > 0:
        padded = F.pad(images, (pad, pad, pad, pad))
        dy = torch.randint(0, 2 * pad + 1, (b,), device=images.device, generator=generator)
        dx = torch.randint(0, 2 * pad + 1, (b,), device=images.device, generator=generator)
        rows = (dy[:, None] + torch.arange(h, device=images.device))[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w, device=images.device))[:, None, None, :]
        batch = torch.arange(b, device=images.device)[:, None, None, None]
        channel = torch.arange(images.shape[1], device=images.device)[None, :, None, None]
        images = padded[batch, channel, rows, cols]
    if flip:
        mirror = torch.rand(b, device=images.device, generator=generator) < 0.5
        images = torch.where(mirror[:, None, None, None], images.flip(3), images)
    return images


class DeviceLoader:
    """ Iterates (pixels in [0, 1], labels) batches of an in-memory dataset on `device`.

    Args:
        data: The dataset (uint8 images). Copied to `device` once when `resident`.
        batch_size: Images per batch on this rank.
        device: Where batches are produced.
        train: Shuffle, augment and drop the last partial batch (eval: fixed order, keep it).
        pad, flip: The augmentation (train only); pad 0 and flip False turn it off.
        seed: Seed of the shuffle and augmentation streams.
        rank, world_size: This process's shard under DDP.
        resident: Keep the dataset on `device` (False: keep it in host memory, move each batch).
        channels_last: Return batches in channels_last memory format.
    """

    def __init__(
            self,
            data: ImageTensors,
            batch_size: int,
            device: torch.device,
            train: bool,
            pad: int = 4,
            flip: bool = True,
            seed: int = 0,
            rank: int = 0,
            world_size: int = 1,
            resident: bool = True,
            channels_last: bool = False,
    ):
        if data.images.dtype != torch.uint8 or data.images.ndim != 4:
            raise ValueError(f'DeviceLoader takes (N, C, H, W) uint8 images, got {tuple(data.images.shape)} {data.images.dtype}')
        if batch_size < 1:
            raise ValueError(f'batch_size must be >= 1, got {batch_size}')
        self.device = torch.device(device)
        self.images = data.images.to(self.device) if resident else data.images
        self.labels = data.labels.to(self.device)
        self.batch_size = batch_size
        self.train = train
        self.pad, self.flip = pad, flip
        self.seed = seed
        self.rank, self.world_size = rank, world_size
        self.channels_last = channels_last
        self.epoch = 0
        n = len(self.labels)
        # train: every rank gets the same number of samples (the permutation wraps); eval: a plain split
        self.num_samples = math.ceil(n / world_size) if train else len(range(rank, n, world_size))
        if train and self.num_samples < batch_size:
            raise ValueError(f'{n} training images give {self.num_samples} per rank, fewer than one batch of {batch_size}')

    def set_epoch(self, epoch: int):
        self.epoch = epoch

    def __len__(self) -> int:
        if self.train:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    def _indices(self) -> Tuple[torch.Tensor, Optional[torch.Generator]]:
        n = len(self.labels)
        if not self.train:
            return torch.arange(self.rank, n, self.world_size, device=self.device), None
        shuffle = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        perm = torch.randperm(n, generator=shuffle)
        perm = perm.repeat(math.ceil(self.num_samples * self.world_size / n))[:self.num_samples * self.world_size]
        augment = torch.Generator(device=self.device).manual_seed((self.seed * 100_003 + self.epoch) * 1009 + self.rank)
        return perm[self.rank::self.world_size].to(self.device), augment

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        indices, augment = self._indices()
        for i in range(len(self)):
            idx = indices[i * self.batch_size:(i + 1) * self.batch_size]
            x = self.images[idx.to(self.images.device)].to(self.device, non_blocking=True)
            if self.train:
                x = random_crop_flip(x, self.pad, self.flip, augment)
            x = x.float().div_(255)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, self.labels[idx]
