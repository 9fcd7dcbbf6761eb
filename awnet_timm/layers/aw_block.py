""" AW-Net block: a ResNet basic block with modulated convs and MixBN

From `Revisiting the Trade-off between Accuracy and Robustness via Weight Distribution of Filters`
(AW-Net, Wei, Zhao and Li, TPAMI 2024, arXiv:2306.03430), Eq. 15-16:
`phi_j = relu(F2(relu(F1(psi_j))) + psi_j)` with `F(x) = MixBN(W_hat * x)`.

With `modulate=False` and `mix_bn=False` the same classes build a plain CIFAR ResNet: the static
baselines and the router's trunk are made of them too. Every unit takes the route as arguments:
`omega` (one (B, C_out) signal per modulated conv, in order), `p_clean` (B,) and the MixBN `branch`.
"""
from typing import List, Optional, Type

import torch
import torch.nn as nn
from torch.jit import Final
from timm.layers import DropPath

from .checkpoint import checkpoint_module
from .mix_bn import MixBatchNorm2d
from .modulated_conv import ModulatedConv2d

__all__ = ['ConvNormAct', 'AWBasicBlock', 'AWStage']


class ConvNormAct(nn.Module):
    """ Modulated conv -> MixBN (or one BN) -> optional activation.

    With MixBN the conv's omega is handed to MixBN as its input scale, which is the same product
    (a test holds the two equal) and lets eval mode fuse omega, the blend and the BN into one affine.
    """
    mix_bn: Final[bool]
    modulate: Final[bool]

    def __init__(
            self,
            in_chs: int,
            out_chs: int,
            kernel_size: int = 3,
            stride: int = 1,
            mix_bn: bool = True,
            modulate: bool = True,
            apply_act: bool = True,
            act_layer: Type[nn.Module] = nn.ReLU,
            norm_layer: Type[nn.Module] = nn.BatchNorm2d,
            device=None,
            dtype=None,
    ):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        self.mix_bn = mix_bn
        self.modulate = modulate
        self.out_chs = out_chs
        self.conv = ModulatedConv2d(
            in_chs, out_chs, kernel_size, stride=stride, padding=kernel_size // 2, bias=False, **dd)
        self.bn = MixBatchNorm2d(out_chs, norm_layer=norm_layer, **dd) if mix_bn else norm_layer(out_chs, **dd)
        self.act = act_layer(inplace=True) if apply_act else nn.Identity()

    def forward(
            self,
            x: torch.Tensor,
            omega: Optional[torch.Tensor] = None,
            p_clean: Optional[torch.Tensor] = None,
            branch: str = 'mix',
    ) -> torch.Tensor:
        omega = omega if self.modulate else None
        if self.mix_bn:  # MixBN applies omega (Eq. 11-12) itself: in eval it folds into its affine
            x = self.bn(self.conv(x), p_clean, branch, omega)
        else:
            x = self.bn(self.conv(x, omega))
        return self.act(x)


class AWBasicBlock(nn.Module):
    """ Two 3x3 ConvNormAct units and a shortcut (1x1 ConvNormAct when the shape changes), Eq. 16.

    `num_modulated` omegas are consumed in order: conv1, conv2, then the shortcut conv when
    `modulate_shortcut` and the block has one.
    """
    num_modulated: Final[int]
    modulated_channels: List[int]

    def __init__(
            self,
            in_chs: int,
            out_chs: int,
            stride: int = 1,
            mix_bn: bool = True,
            modulate: bool = True,
            modulate_shortcut: bool = False,
            drop_path: float = 0.,
            act_layer: Type[nn.Module] = nn.ReLU,
            norm_layer: Type[nn.Module] = nn.BatchNorm2d,
            device=None,
            dtype=None,
    ):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        unit = dict(mix_bn=mix_bn, act_layer=act_layer, norm_layer=norm_layer, **dd)
        self.conv1 = ConvNormAct(in_chs, out_chs, 3, stride, modulate=modulate, **unit)
        self.conv2 = ConvNormAct(out_chs, out_chs, 3, 1, modulate=modulate, apply_act=False, **unit)
        if stride != 1 or in_chs != out_chs:
            self.downsample = ConvNormAct(
                in_chs, out_chs, 1, stride, modulate=modulate and modulate_shortcut, apply_act=False, **unit)
        else:
            self.downsample = None
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.act = act_layer(inplace=True)
        self.modulated_channels = []
        for m in (self.conv1, self.conv2, self.downsample):
            if m is not None and m.modulate:
                self.modulated_channels.append(m.out_chs)
        self.num_modulated = len(self.modulated_channels)

    def forward(
            self,
            x: torch.Tensor,
            omega: List[torch.Tensor],
            p_clean: Optional[torch.Tensor] = None,
            branch: str = 'mix',
    ) -> torch.Tensor:
        o1: Optional[torch.Tensor] = None
        o2: Optional[torch.Tensor] = None
        o3: Optional[torch.Tensor] = None
        if self.num_modulated > 0:
            o1, o2 = omega[0], omega[1]
        if self.num_modulated > 2:
            o3 = omega[2]
        shortcut = x
        x = self.conv1(x, o1, p_clean, branch)
        x = self.conv2(x, o2, p_clean, branch)
        if self.downsample is not None:
            shortcut = self.downsample(shortcut, o3, p_clean, branch)
        return self.act(self.drop_path(x) + shortcut)


class AWStage(nn.Module):
    """ A sequence of AWBasicBlocks at one resolution; hands each block its slice of omega. """
    modulated_channels: List[int]

    def __init__(
            self,
            in_chs: int,
            out_chs: int,
            depth: int,
            stride: int = 1,
            drop_path_rates: Optional[List[float]] = None,
            **block_kwargs,
    ):
        super().__init__()
        dpr = drop_path_rates or [0.] * depth
        self.grad_checkpointing = False
        self.blocks = nn.ModuleList([
            AWBasicBlock(in_chs if i == 0 else out_chs, out_chs, stride if i == 0 else 1, drop_path=dpr[i], **block_kwargs)
            for i in range(depth)
        ])
        self.modulated_channels = [c for b in self.blocks for c in b.modulated_channels]

    def forward(
            self,
            x: torch.Tensor,
            omega: List[torch.Tensor],
            p_clean: Optional[torch.Tensor] = None,
            branch: str = 'mix',
    ) -> torch.Tensor:
        i = 0
        for block in self.blocks:
            block_omega = omega[i:i + block.num_modulated]
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint_module(block, x, block_omega, p_clean, branch)
            else:
                x = block(x, block_omega, p_clean, branch)
            i += block.num_modulated
        return x
