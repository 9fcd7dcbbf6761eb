""" scikit-learn's handwritten digits (1,797 8x8 images, shipped inside the package) as an ImageFolder

A small real dataset that needs no download: the fine-tuning example and the tests use it to show
`awnet finetune` on an ImageFolder with another class count and input size. Needs scikit-learn
(`pip install awnet-timm[examples]`).
"""
import os

import numpy as np
from PIL import Image

__all__ = ['write_digits_imagefolder']


def write_digits_imagefolder(root: str, img_size: int = 32, val_fraction: float = 0.2) -> str:
    """Write root/{train,val}/<digit>/<index>.png (RGB, img_size x img_size); the last val_fraction is val."""
    from sklearn.datasets import load_digits
    digits = load_digits()
    images = (digits.images / 16. * 255).round().astype(np.uint8)
    n_val = int(round(len(images) * val_fraction))
    for i, (image, label) in enumerate(zip(images, digits.target)):
        split = 'val' if i >= len(images) - n_val else 'train'
        folder = os.path.join(root, split, str(label))
        os.makedirs(folder, exist_ok=True)
        im = Image.fromarray(image).resize((img_size, img_size), Image.BICUBIC).convert('RGB')
        im.save(os.path.join(folder, f'{i:04d}.png'))
    return root
