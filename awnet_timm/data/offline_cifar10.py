""" The offline CIFAR-10 copy: npz files of plain arrays (no pickles)

Files in `root` (see the project's data README; the path is always an option):
- `cifar10-train-jpeg.npz`, `cifar10-test-jpeg.npz`: JPEG (quality 75) copies of the 50,000 / 10,000
  images in official order, as `jpeg` (concatenated bytes), `offsets` (N+1) and `y`. NOT bit-exact.
- `cifar10-test-exact.npz`: `x` (N, 32, 32, 3) uint8 and `y`, the first 1017 official test images
  with their original pixels.
"""
import io
import os
from typing import Optional, Tuple

import numpy as np
import torch
from PIL import Image

__all__ = ['OFFLINE_CIFAR10_FILES', 'load_offline_cifar10', 'to_pixels']

OFFLINE_CIFAR10_FILES = {
    'train': 'cifar10-train-jpeg.npz',
    'test': 'cifar10-test-jpeg.npz',
    'test-exact': 'cifar10-test-exact.npz',
}


def load_offline_cifar10(root: str, split: str = 'test-exact', limit: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
    """The first `limit` images (all if None) of a split as (N, 32, 32, 3) uint8 and (N,) int64 labels."""
    if split not in OFFLINE_CIFAR10_FILES:
        raise ValueError(f"unknown split '{split}': expected one of {', '.join(OFFLINE_CIFAR10_FILES)}")
    path = os.path.join(root, OFFLINE_CIFAR10_FILES[split]) if os.path.isdir(root) else root
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"no CIFAR-10 file for split '{split}' at '{path}': expected a directory holding "
            f"{OFFLINE_CIFAR10_FILES[split]} (the offline copy), or the path of that file")
    with np.load(path) as data:
        if 'x' in data.files:
            x, y = data['x'], data['y']
            if limit is not None:
                x, y = x[:limit], y[:limit]
        elif {'jpeg', 'offsets', 'y'} <= set(data.files):
            jpeg, offsets, y = data['jpeg'], data['offsets'], data['y']
            n = len(y) if limit is None else min(limit, len(y))
            x = np.stack([np.asarray(Image.open(io.BytesIO(jpeg[offsets[i]:offsets[i + 1]].tobytes())).convert('RGB'))
                          for i in range(n)])
            y = y[:n]
        else:
            raise ValueError(f"'{path}' holds arrays {data.files}: expected x and y, or jpeg, offsets and y")
    if x.ndim != 4 or x.shape[1:] != (32, 32, 3) or x.dtype != np.uint8 or len(x) != len(y):
        raise ValueError(f"'{path}' is not CIFAR-10: got images {x.shape} {x.dtype} and {len(y)} labels")
    return x, y.astype(np.int64)


def to_pixels(x: np.ndarray) -> torch.Tensor:
    """(N, H, W, C) uint8 -> (N, C, H, W) float32 pixels in [0, 1], the models' input."""
    return torch.from_numpy(x).permute(0, 3, 1, 2).float().div_(255.)
