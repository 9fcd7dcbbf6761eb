""" ARAT's pieces: the asymmetric invariance loss, the representations it aligns, and the static export

From `Rethinking Invariance Regularization in Adversarial Training to Improve Robustness-Accuracy
Trade-off` (AR-AT / ARAT, Waseda, Chang and Echizen, ICLR 2025, arXiv:2402.14648); code futakw/AR-AT.

- Invariance loss: per aligned site l, `1 - cos(h_l(z_l(x_adv)), sg(z_l(x_nat)))`, averaged over the
  batch and the sites and weighted by gamma. The stop-gradient sg is on the clean side and the predictor
  h_l (SimSiam's bottleneck MLP) on the adversarial side, so the clean branch is never pulled toward
  adversarial representations (the paper's answer to the "gradient conflict").
- Sites: the ReLU of every main-path norm output of the last stage, global-average-pooled (the released
  ResNet-18 setting aligns layer4's bn1/bn2 outputs after ReLU: 4 sites of 512 channels).
- Split BN: the student has MixBN (routes 'clean' and 'adv'); at test only the Adv BN runs, so the
  deployed network is static and `deploy_adv_bn` turns it into one BN per site.
"""
from contextlib import contextmanager
from typing import Iterator, List, Sequence

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..layers import MixBatchNorm2d

__all__ = ['Predictor', 'AsymmetricInvariance', 'SiteFeatures', 'adv_bn_state_dict', 'deploy_adv_bn']


class Predictor(nn.Sequential):
    """SimSiam's predictor h: Linear(d, d * ratio, no bias) -> BatchNorm1d -> ReLU -> Linear(d * ratio, d)."""

    def __init__(self, dim: int, hidden_ratio: float = 0.25, device=None, dtype=None):
        dd = {'device': device, 'dtype': dtype}
        hidden = max(1, int(dim * hidden_ratio))
        super().__init__(
            nn.Linear(dim, hidden, bias=False, **dd), nn.BatchNorm1d(hidden, **dd), nn.ReLU(inplace=True),
            nn.Linear(hidden, dim, **dd))


class AsymmetricInvariance(nn.Module):
    """ ARAT's invariance term: mean over sites of `1 - cos(h_l(z_adv_l), sg(z_nat_l))` (the batch mean inside).

    Args:
        dims: Channels of each aligned site.
        hidden_ratio: Predictor bottleneck width relative to the site's (1/4 in the paper's code).
    """

    def __init__(self, dims: Sequence[int], hidden_ratio: float = 0.25, device=None, dtype=None):
        super().__init__()
        self.predictors = nn.ModuleList([Predictor(d, hidden_ratio, device=device, dtype=dtype) for d in dims])

    def forward(self, z_adv: Sequence[torch.Tensor], z_nat: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(z_adv) != len(self.predictors) or len(z_nat) != len(self.predictors):
            raise ValueError(f'expected {len(self.predictors)} sites on each side, got {len(z_adv)} and {len(z_nat)}')
        losses = [1 - F.cosine_similarity(h(a.float()), n.detach().float(), dim=1).mean()
                  for h, a, n in zip(self.predictors, z_adv, z_nat)]
        return torch.stack(losses).mean()


class SiteFeatures:
    """ The aligned representations of an AW-Net-family model: ReLU of each main-path MixBN of the last stage, pooled.

    `capture()` registers forward hooks for one training forward and yields the list they fill, one (B, C)
    tensor per site per forward, in call order; the hooks are gone afterwards (the attack's forwards add nothing).
    """

    def __init__(self, model: nn.Module):
        blocks = model.stages[-1].blocks
        self.sites = [unit.bn for block in blocks for unit in (block.conv1, block.conv2)]
        self.dims = [site.num_features for site in self.sites]

    @contextmanager
    def capture(self) -> Iterator[List[torch.Tensor]]:
        outputs: List[torch.Tensor] = []

        def hook(module, args, out):
            outputs.append(F.relu(out).mean((2, 3)))  # a new tensor: the block's in-place ReLU does not touch it

        handles = [site.register_forward_hook(hook) for site in self.sites]
        try:
            yield outputs
        finally:
            for h in handles:
                h.remove()


def adv_bn_state_dict(model: nn.Module) -> dict:
    """The model's state dict with each MixBN replaced by its Adv BN (`x.bn.adv.*` -> `x.bn.*`, Clean BN dropped)."""
    mix = {name for name, m in model.named_modules() if isinstance(m, MixBatchNorm2d)}
    state = {}
    for key, value in model.state_dict().items():
        site, _, rest = key.rpartition('.')
        parent, _, branch = site.rpartition('.')
        if parent in mix:
            if branch == 'adv':
                state[f'{parent}.{rest}'] = value
            continue
        state[key] = value
    return state


def deploy_adv_bn(model: nn.Module, architecture: str, **model_args) -> nn.Module:
    """ The static network ARAT deploys: `architecture` with one BN per site (`mix_bn=False`) holding the Adv BN.

    `model` is the split-BN student (an AWNet with MixBN and no type head, which runs the Adv BN at test);
    `model_args` are the arguments it was built with. The result computes the same eval-mode function and
    is a plain timm model (its factory records `mix_bn=False`, so `save_for_hf` exports it as such).
    """
    if not getattr(model, 'mix_bn', False) or getattr(model, 'use_type_head', True):
        raise ValueError('deploy_adv_bn needs a split-BN model that runs its Adv BN alone at test '
                         '(an AW-Net-family model with mix_bn=True and type_head=False)')
    args = {k: v for k, v in model_args.items() if k not in ('mix_bn', 'type_head', 'num_classes', 'in_chans')}
    static = timm.create_model(architecture, mix_bn=False, num_classes=model.num_classes, in_chans=model.in_chans,
                               **args)
    static.load_state_dict(adv_bn_state_dict(model))
    return static.to(next(model.parameters()).device).train(model.training)
