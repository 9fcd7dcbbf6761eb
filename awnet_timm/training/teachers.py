""" Teachers for MTARD: any timm model (name + checkpoint, or a Hub id), frozen, taking [0, 1] pixels

The paper's teachers (MTARD's setting) are a clean CIFAR ResNet-56 and a robust WideResNet-34-10,
registered here as `cifar_resnet56` and `cifar_wrn34_10`; no teacher weights can be downloaded, so
they are trained with `awnet train --recipe standard` and `--recipe trades` (or `pgd_at`).
"""
import torch
import torch.nn as nn

from .checkpoint import create_model_with_weights

__all__ = ['PixelInput', 'load_teacher']


class PixelInput(nn.Module):
    """Normalises [0, 1] pixels with the model's own mean/std (for timm models trained on normalised inputs)."""

    def __init__(self, model: nn.Module, mean, std):
        super().__init__()
        self.model = model
        self.register_buffer('mean', torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer('std', torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean) / self.std)


def load_teacher(name: str, checkpoint: str = '', num_classes: int = 10, device='cpu') -> nn.Module:
    """A frozen teacher in eval mode mapping [0, 1] pixels to logits over `num_classes` classes."""
    if not checkpoint and not (name.startswith('hf-hub:') or '.' in name):
        raise ValueError(f"teacher '{name}' has no weights: give a checkpoint (--teacher-*-checkpoint) or a "
                         f"tagged / hf-hub: name with published weights")
    model = create_model_with_weights(name, checkpoint)
    if getattr(model, 'num_classes', num_classes) != num_classes:
        raise ValueError(f"teacher '{name}' ({checkpoint or 'pretrained'}) predicts {model.num_classes} classes, "
                         f"the student {num_classes}")
    cfg = getattr(model, 'pretrained_cfg', {}) or {}
    mean, std = tuple(cfg.get('mean', (0., 0., 0.))), tuple(cfg.get('std', (1., 1., 1.)))
    if any(m != 0 for m in mean) or any(s != 1 for s in std):
        model = PixelInput(model, mean, std)
    model.requires_grad_(False)
    return model.to(device).eval()
