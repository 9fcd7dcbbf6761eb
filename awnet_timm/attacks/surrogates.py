""" The differentiable surrogate of a model with an HPM head, for transfer attacks and the Mixed Surrogate Attack

The HPM head (layers/hpm_head.py; arXiv:2606.01746) is trained through a straight-through estimator, and its
paper evaluates it with MSA: AutoAttack on differentiable surrogates, each example scored on the real model.
Here the evaluated head is the l2 head, differentiable itself (white-box attacks run on it); the surrogate is
the other classifier the same features were trained for, sharing the model's weights:
- `hpm_fc`: the same backbone with its FC classifier.
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
    """ `model` with its HPM head switched to `mode` ('fc') for the duration of each forward. """

    def __init__(self, model: nn.Module, mode: str = 'fc'):
        super().__init__()
        if not has_hpm_head(model):
            raise ValueError(f'HeadModeSurrogate needs a model with an HPM head, got {type(model).__name__}')
        if mode != 'fc':
            raise ValueError(f"HeadModeSurrogate: mode must be 'fc', got '{mode}'")
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
    """{'hpm_fc': the FC head}, sharing `model`'s weights."""
    return {'hpm_fc': HeadModeSurrogate(model, 'fc')}
