""" Adversarial router: predicts per sample whether the input is adversarial, and the filter signals

From `Revisiting the Trade-off between Accuracy and Robustness via Weight Distribution of Filters`
(AW-Net, Wei, Zhao and Li, TPAMI 2024, arXiv:2306.03430), Sec. 4.3, Eq. 17-19:
- feature extractor D: psi = D(x), a 1-D feature "composed of multiple intermediate layers";
- type head: `P_type = softmax(W_type psi)`, W_type in R^{2 x d};
- one signal head per modulated conv: `omega_j = (tanh(W_j psi) + 1) ** beta`, omega in (0, 2^beta).

Choices where the paper is silent (see docs/design.md, sections 4 and 7):
- D is a CIFAR ResNet trunk (ResNet-18 layout by default) built from the static AW-Net blocks, and
  psi concatenates the global-average-pooled outputs of its stages (d = 64+128+256+512 = 960);
  `feature='last'` uses the last stage only (d = 512).
- Type logits are ordered [adversarial, clean], so P(clean) = softmax(logits)[:, 1] and the type
  loss target is 1 for clean inputs, as in the paper's BCE.
- The signal heads W_j are stacked row-wise into one Linear (one matmul instead of one per conv)
  and the output is split per conv. They start at zero (`signal_init='zeros'`), so omega = 1 and
  AW-Net starts as its static network; `signal_init='default'` keeps PyTorch's Linear init.
"""
from typing import List, NamedTuple, Optional, Sequence, Type

import torch
import torch.nn as nn

from .aw_block import AWStage, ConvNormAct

__all__ = ['AdversarialRouter', 'RouterOutput']


class RouterOutput(NamedTuple):
    """What the router says about a batch. Fields are None / empty where the head is absent."""
    type_logits: Optional[torch.Tensor]  # (B, 2), columns [adversarial, clean]
    p_clean: Optional[torch.Tensor]  # (B,), P(clean) = softmax(type_logits)[:, 1]
    omega: List[torch.Tensor]  # one (B, C_out) regulation signal per modulated conv, Eq. 19


class AdversarialRouter(nn.Module):
    """ CIFAR ResNet trunk -> psi -> type head and stacked signal heads.

    Args:
        signal_channels: Output channels of each modulated conv, in the order the classifier
            consumes them; empty for no signal heads.
        in_chans: Input channels.
        layers: Blocks per stage of the trunk.
        channels: Width of each trunk stage.
        type_head: Build the type head.
        beta: Exponent of Eq. 19.
        feature: 'stages' (pooled output of every stage) or 'last' (last stage only).
        signal_init: 'zeros' (omega starts at 1) or 'default' (PyTorch Linear init).
    """
    signal_channels: List[int]

    def __init__(
            self,
            signal_channels: Sequence[int],
            in_chans: int = 3,
            layers: Sequence[int] = (2, 2, 2, 2),
            channels: Sequence[int] = (64, 128, 256, 512),
            type_head: bool = True,
            beta: float = 3.0,
            feature: str = 'stages',
            signal_init: str = 'zeros',
            act_layer: Type[nn.Module] = nn.ReLU,
            norm_layer: Type[nn.Module] = nn.BatchNorm2d,
            device=None,
            dtype=None,
    ):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        if feature not in ('stages', 'last'):
            raise ValueError(f"router feature must be 'stages' or 'last', got '{feature}'")
        if signal_init not in ('zeros', 'default'):
            raise ValueError(f"signal_init must be 'zeros' or 'default', got '{signal_init}'")
        static = dict(mix_bn=False, modulate=False, act_layer=act_layer, norm_layer=norm_layer, **dd)
        self.beta = beta
        self.feature = feature
        self.signal_channels = list(signal_channels)
        self.stem = ConvNormAct(in_chans, channels[0], 3, 1, **static)
        self.stages = nn.ModuleList()
        prev = channels[0]
        for i, (depth, chs) in enumerate(zip(layers, channels)):
            self.stages.append(AWStage(prev, chs, depth, stride=1 if i == 0 else 2, **static))
            prev = chs
        self.feature_dim = sum(channels) if feature == 'stages' else channels[-1]
        self.type_head = nn.Linear(self.feature_dim, 2, **dd) if type_head else None
        if self.signal_channels:
            self.signal_head = nn.Linear(self.feature_dim, sum(self.signal_channels), **dd)
            if signal_init == 'zeros':
                nn.init.zeros_(self.signal_head.weight)
                nn.init.zeros_(self.signal_head.bias)
        else:
            self.signal_head = None

    def forward_psi(self, x: torch.Tensor) -> torch.Tensor:
        """psi (B, feature_dim), Eq. 17."""
        x = self.stem(x)
        pooled: List[torch.Tensor] = []
        for stage in self.stages:
            x = stage(x, [])
            if self.feature == 'stages':
                pooled.append(x.mean((2, 3)))
        if self.feature == 'last':
            pooled.append(x.mean((2, 3)))
        return torch.cat(pooled, dim=1)

    def forward(self, x: torch.Tensor) -> RouterOutput:
        psi = self.forward_psi(x)
        type_logits: Optional[torch.Tensor] = None
        p_clean: Optional[torch.Tensor] = None
        omega: List[torch.Tensor] = []
        if self.type_head is not None:
            type_logits = self.type_head(psi)
            p_clean = type_logits.softmax(dim=1)[:, 1]  # Eq. 18
        if self.signal_head is not None:
            signal = (torch.tanh(self.signal_head(psi)) + 1.) ** self.beta  # Eq. 19
            start = 0
            for c in self.signal_channels:  # python-int slices keep the split FX-traceable
                omega.append(signal[:, start:start + c])
                start += c
        return RouterOutput(type_logits, p_clean, omega)

    @torch.jit.ignore
    def prune_signal_head(self, num_convs: int):
        """Keep the signal heads of the first `num_convs` modulated convs only."""
        if self.signal_head is None:
            return
        keep = sum(self.signal_channels[:num_convs])
        head = nn.Linear(self.feature_dim, keep, device=self.signal_head.weight.device, dtype=self.signal_head.weight.dtype)
        with torch.no_grad():
            head.weight.copy_(self.signal_head.weight[:keep])
            head.bias.copy_(self.signal_head.bias[:keep])
        self.signal_channels = self.signal_channels[:num_convs]
        self.signal_head = head if keep > 0 else None
