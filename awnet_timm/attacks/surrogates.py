""" Differentiable surrogates of a model with an HPM head, for the Mixed Surrogate Attack

The HPM head (layers/hpm_head.py; arXiv:2606.01746) classifies through a straight-through estimator, so
its gradients are unreliable; its paper evaluates it with MSA: AutoAttack on several differentiable
surrogates, each example scored on the real model. The surrogates here share the model's weights:
- `hpm_fc`: the same backbone with its FC classifier;
- `hpm_soft`: the same backbone with the l2 head without the STE (soft assignments in the forward too).
"""
from typing import Dict

import torch
import torch.nn as nn

from ..layers import HPMHead

__all__ = ['HeadModeSurrogate', 'hpm_surrogates', 'has_hpm_head']


def has_hpm_head(model: nn.Module) -> bool:
    get = getattr(model, 'get_classifier', None)
    return callable(get) and isinstance(get(), HPMHead)


class HeadModeSurrogate(nn.Module):
    """ `model` with its HPM head switched to `mode` ('fc' or 'soft') for the duration of each forward. """

    def __init__(self, model: nn.Module, mode: str):
        super().__init__()
        if not has_hpm_head(model):
            raise ValueError(f'HeadModeSurrogate needs a model with an HPM head, got {type(model).__name__}')
        if mode not in ('fc', 'soft'):
            raise ValueError(f"HeadModeSurrogate: mode must be 'fc' or 'soft', got '{mode}'")
        self.model = model
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        head = self.model.get_classifier()
        previous = head.mode
        head.set_mode(self.mode)
        try:
            return self.model(x)
        finally:
            head.mode = previous


def hpm_surrogates(model: nn.Module) -> Dict[str, nn.Module]:
    """{'hpm_fc': FC head, 'hpm_soft': l2 head without the STE}, sharing `model`'s weights."""
    return {'hpm_fc': HeadModeSurrogate(model, 'fc'), 'hpm_soft': HeadModeSurrogate(model, 'soft')}
