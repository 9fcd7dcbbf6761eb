""" Image datasets as uint8 tensors: CIFAR-10/100 (torchvision), the offline CIFAR-10 copy, ImageFolder

Training keeps a whole dataset as one (N, C, H, W) uint8 tensor (CIFAR-10's train split is 150 MB), so
batches are sliced and augmented on the device without DataLoader workers (see `device_loader.py`).

Dataset names:
- 'cifar10', 'cifar100': torchvision's datasets under `root` (`download=True` fetches them the
  usual torchvision way); splits 'train' and 'test'.
- 'cifar10-offline': the npz copy of CIFAR-10 (`offline_cifar10.py`); splits 'train' and 'test'
  (JPEG copies, not bit-exact) and 'test-exact' (the first 1017 test images, exact pixels).
- 'imagefolder': `root/<split>/<class>/<image>`, decoded once to `in_chans` channels (1: grayscale,
  3: RGB) and resized to `img_size`. Having no official order, a `limit` takes a fixed random subset
  (seed 0) rather than the first classes.
"""
import os
from typing import NamedTuple, Optional, Tuple

import numpy as np
import torch
from PIL import Image

from .offline_cifar10 import OFFLINE_CIFAR10_FILES, load_offline_cifar10

__all__ = ['ImageTensors', 'DATASETS', 'DatasetError', 'load_dataset', 'held_out_split']

DATASETS = ('cifar10', 'cifar100', 'cifar10-offline', 'imagefolder')


def held_out_split(dataset: str) -> str:
    """The split a run evaluates on after each epoch (and picks its best checkpoint on) by default: 'holdout', the
    last --val-size training images, for every dataset, so that the split `awnet eval` then reports on (test, or an
    ImageFolder's val) never chose the checkpoint it scores."""
    return 'holdout'


_PIL_MODES = {1: 'L', 3: 'RGB'}  # ImageFolder decoding by channel count
_CIFAR10_CLASSES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck')


class DatasetError(ValueError):
    """A dataset, split or option that cannot be loaded as asked, with what was expected."""


class ImageTensors(NamedTuple):
    """A labelled image set held in memory: `images` (N, C, H, W) uint8, `labels` (N,) int64."""
    images: torch.Tensor
    labels: torch.Tensor
    classes: Tuple[str, ...]

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, start: int = 0, stop: Optional[int] = None) -> 'ImageTensors':
        return ImageTensors(self.images[start:stop], self.labels[start:stop], self.classes)


def _from_nhwc(x: np.ndarray, y, classes) -> ImageTensors:
    images = torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).contiguous()
    return ImageTensors(images, torch.as_tensor(np.asarray(y), dtype=torch.int64), tuple(classes))


def _load_torchvision_cifar(name: str, root: str, split: str, download: bool) -> ImageTensors:
    from torchvision.datasets import CIFAR10, CIFAR100
    if split not in ('train', 'test'):
        raise DatasetError(f"unknown split '{split}' for {name}: expected 'train' or 'test'")
    cls = CIFAR10 if name == 'cifar10' else CIFAR100
    try:
        ds = cls(root, train=split == 'train', download=download)
    except RuntimeError as e:
        raise FileNotFoundError(
            f"{name} not found under '{root}' ({e}). Pass download=True (--download) to fetch it, or "
            f"dataset 'cifar10-offline' for the offline npz copy") from None
    return _from_nhwc(ds.data, ds.targets, ds.classes)


def _decode(path: str, img_size: Optional[int], in_chans: int) -> np.ndarray:
    """One ImageFolder image as (H, W, in_chans) uint8; an unreadable file stops the load naming it (skipping it
    would silently train or score on another set than the folder holds)."""
    try:
        with Image.open(path) as im:
            im = im.convert(_PIL_MODES[in_chans])
    except (OSError, SyntaxError, ValueError) as e:  # PIL's UnidentifiedImageError is an OSError; truncated: OSError
        raise DatasetError(f"'{path}' is not an image PIL can read ({e}): the run stops, no image is skipped; "
                           f"replace or remove that file") from None
    if img_size is not None and im.size != (img_size, img_size):
        im = im.resize((img_size, img_size), Image.BICUBIC)
    return np.asarray(im).reshape(im.size[1], im.size[0], in_chans)


def _load_imagefolder(root: str, split: str, img_size: Optional[int], in_chans: int) -> ImageTensors:
    from torchvision.datasets import ImageFolder
    split_dir = os.path.join(root, split)
    if not os.path.isdir(split_dir):
        found = sorted(d for d in os.listdir(root)) if os.path.isdir(root) else []
        raise FileNotFoundError(
            f"no '{split}' folder in '{root}': an ImageFolder dataset is root/<split>/<class>/<image> "
            f"(found {found or 'nothing'})")
    ds = ImageFolder(split_dir)
    if not ds.samples:
        raise DatasetError(f"'{split_dir}' has class folders but no images")
    images = [_decode(path, img_size, in_chans) for path, _ in ds.samples]
    sizes = {im.shape for im in images}
    if len(sizes) > 1:
        raise DatasetError(f"images in '{split_dir}' have different sizes {sorted(sizes)}: pass img_size to resize them")
    return _from_nhwc(np.stack(images), ds.targets, ds.classes)


def load_dataset(
        name: str,
        root: str,
        split: str = 'train',
        download: bool = False,
        img_size: Optional[int] = None,
        limit: Optional[int] = None,
        in_chans: int = 3,
) -> ImageTensors:
    """The first `limit` images (all if None) of a dataset split, as uint8 tensors in official order.

    `in_chans` is the model's channel count: ImageFolder images are decoded to it (1: grayscale, 3: RGB);
    the CIFAR sets are RGB only.
    """
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset '{name}': expected one of {', '.join(DATASETS)}")
    if not root:
        raise DatasetError(f"dataset '{name}' needs a root directory (--data-dir)")
    if in_chans not in _PIL_MODES or (name != 'imagefolder' and in_chans != 3):
        kinds = 'RGB images (in_chans 3)' if name != 'imagefolder' else 'grayscale (in_chans 1) or RGB (in_chans 3) images'
        raise DatasetError(f"dataset '{name}' gives {kinds}, but the model takes in_chans={in_chans}")
    if name in ('cifar10', 'cifar100'):
        data = _load_torchvision_cifar(name, root, split, download)
    elif name == 'cifar10-offline':
        if split not in OFFLINE_CIFAR10_FILES:
            raise DatasetError(f"unknown split '{split}' for cifar10-offline: expected one of {', '.join(OFFLINE_CIFAR10_FILES)}")
        x, y = load_offline_cifar10(root, split, limit)
        data = _from_nhwc(x, y, _CIFAR10_CLASSES)
    else:
        data = _load_imagefolder(root, split, img_size, in_chans)
        if limit is not None and limit < len(data):
            # folders are read class by class: a limit takes a fixed random subset, not the first classes
            keep = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))[:limit].sort().values
            data = ImageTensors(data.images[keep], data.labels[keep], data.classes)
    data = data.subset(0, limit)
    if img_size is not None and data.images.shape[-2:] != (img_size, img_size):
        data = ImageTensors(_resize_uint8(data.images, img_size), data.labels, data.classes)
    return data


def _resize_uint8(images: torch.Tensor, size: int) -> torch.Tensor:
    x = torch.nn.functional.interpolate(images.float(), size=(size, size), mode='bicubic', align_corners=False)
    return x.round_().clamp_(0, 255).to(torch.uint8)
