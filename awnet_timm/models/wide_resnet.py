""" Wide Residual Networks for CIFAR: the robust teachers of MTARD / TRADES

Paper: `Wide Residual Networks` (Zagoruyko and Komodakis, BMVC 2016) - https://arxiv.org/abs/1605.07146

WRN-d-k: a 3x3 stem conv to 16 channels, three stages of n = (d - 4) / 6 pre-activation wide basic
blocks (BN-ReLU-conv3x3-BN-ReLU-dropout-conv3x3) of widths 16k, 32k, 64k, a final BN-ReLU, global
average pooling and a linear head. When a block changes the shape its 1x1 conv shortcut reads the
pre-activated input, as in the paper's code. `cifar_wrn34_10` (46.16M parameters) is the robust
teacher that MTARD distils AW-Net from; `cifar_wrn28_10` (36.48M) is the WRN of the paper.

As with AW-Net, inputs are pixels in [0, 1] and are normalized inside the model, so the pretrained
cfgs say mean=(0,0,0), std=(1,1,1).
"""
from functools import partial
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, LayerType, SelectAdaptivePool2d, calculate_drop_path_rates, get_act_layer, \
    get_device_dtype, get_norm_layer
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices

from ..layers import check_pixel_batch, check_pixel_values, checkpoint_module, input_check_mode
from .awnet import CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD, _stats
from .pretrained import check_weights_fit

__all__ = ['WideResNet', 'WideBasicBlock']


class WideBasicBlock(nn.Module):
    """ Pre-activation wide basic block: BN-ReLU-conv3x3(stride)-BN-ReLU-dropout-conv3x3, plus shortcut.

    The shortcut is the identity, or a 1x1 conv of the pre-activated input when stride or width change.
    """

    def __init__(
            self,
            in_chs: int,
            out_chs: int,
            stride: int = 1,
            drop_rate: float = 0.,
            drop_path: float = 0.,
            act_layer: LayerType = nn.ReLU,
            norm_layer: LayerType = nn.BatchNorm2d,
            device=None,
            dtype=None,
    ):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        self.bn1 = norm_layer(in_chs, **dd)
        self.act1 = act_layer(inplace=True)
        self.conv1 = nn.Conv2d(in_chs, out_chs, 3, stride=stride, padding=1, bias=False, **dd)
        self.bn2 = norm_layer(out_chs, **dd)
        self.act2 = act_layer(inplace=True)
        self.drop = nn.Dropout(drop_rate) if drop_rate > 0. else nn.Identity()
        self.conv2 = nn.Conv2d(out_chs, out_chs, 3, stride=1, padding=1, bias=False, **dd)
        if stride != 1 or in_chs != out_chs:
            self.shortcut = nn.Conv2d(in_chs, out_chs, 1, stride=stride, bias=False, **dd)
        else:
            self.shortcut = None
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.drop(self.act2(self.bn2(out)))
        out = self.conv2(out)
        return self.drop_path(out) + shortcut


class WideResNet(nn.Module):
    """ Pre-activation WRN-depth-widen_factor for 32x32 inputs.

    Args:
        depth: Total depth d; each of the 3 stages has (d - 4) / 6 blocks (34: 5 blocks, 28: 4 blocks).
        widen_factor: k; stage widths are 16k, 32k, 64k.
        num_classes: Classifier outputs (0 for none).
        in_chans: Input channels.
        global_pool: Pooling before the classifier ('avg', 'max', 'avgmax', '' for none).
        drop_rate: Dropout before the classifier.
        block_drop_rate: Dropout between the two convs of every block (the paper's dropout; 0 in TRADES).
        drop_path_rate: Stochastic depth, linearly increasing over the blocks.
        stem_chs: Width of the stem conv.
        norm_mean, norm_std: Input normalization applied inside the model.
        input_check: How eager calls check that inputs are finite pixels in [0, 1]: 'warn' (the first batch,
            one host sync, a PixelRangeWarning if it fails), 'error' (raise, until a batch passes), 'always'
            (every batch, raise) or 'off' (layers/pixel_input.py).
        act_layer, norm_layer: Activation and BatchNorm classes (or timm names).
    """

    def __init__(
            self,
            depth: int = 34,
            widen_factor: int = 10,
            num_classes: int = 10,
            in_chans: int = 3,
            global_pool: str = 'avg',
            drop_rate: float = 0.,
            block_drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            stem_chs: int = 16,
            norm_mean: Sequence[float] = CIFAR10_MEAN,
            norm_std: Sequence[float] = CIFAR10_STD,
            input_check: str = 'warn',
            act_layer: LayerType = nn.ReLU,
            norm_layer: LayerType = nn.BatchNorm2d,
            device=None,
            dtype=None,
    ):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        self.set_input_check(input_check)
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f'WRN depth must be 6n + 4 with n >= 1, got {depth}')
        act_layer = get_act_layer(act_layer)
        norm_layer = get_norm_layer(norm_layer)
        num_blocks = (depth - 4) // 6
        channels = [16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.grad_checkpointing = False
        self.register_buffer('norm_mean', _stats(norm_mean, in_chans).to(device=device), persistent=False)
        self.register_buffer('norm_std', _stats(norm_std, in_chans).to(device=device), persistent=False)

        self.stem = nn.Conv2d(in_chans, stem_chs, 3, stride=1, padding=1, bias=False, **dd)
        self.feature_info = [dict(num_chs=stem_chs, reduction=1, module='stem')]
        dpr = calculate_drop_path_rates(drop_path_rate, [num_blocks] * len(channels), stagewise=True)
        stages = []
        prev, reduction = stem_chs, 1
        for i, chs in enumerate(channels):
            stride = 1 if i == 0 else 2
            reduction *= stride
            stages.append(nn.Sequential(*[
                WideBasicBlock(
                    prev if j == 0 else chs, chs, stride if j == 0 else 1, drop_rate=block_drop_rate,
                    drop_path=dpr[i][j], act_layer=act_layer, norm_layer=norm_layer, **dd)
                for j in range(num_blocks)
            ]))
            self.feature_info.append(dict(num_chs=chs, reduction=reduction, module=f'stages.{i}'))
            prev = chs
        self.stages = nn.Sequential(*stages)

        self.num_features = self.head_hidden_size = prev
        self.norm = norm_layer(self.num_features, **dd)  # blocks are pre-activation: the trunk ends in BN-ReLU
        self.act = act_layer(inplace=True)
        self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=bool(global_pool))
        self.head = nn.Linear(self.num_features * self.global_pool.feat_mult(), num_classes, **dd) \
            if num_classes > 0 else nn.Identity()
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(
            stem=r'^stem\.',
            blocks=[
                (r'^stages\.(\d+)' if coarse else r'^stages\.(\d+)\.(\d+)', None),
                (r'^norm\.', (99999,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True):
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None):
        dd = get_device_dtype(self)
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=bool(global_pool))
            self.global_pool.train(self.training)
        self.head_hidden_size = self.num_features * self.global_pool.feat_mult()
        self.head = nn.Linear(self.head_hidden_size, num_classes, **dd) if num_classes > 0 else nn.Identity()
        self.head.train(self.training)

    @torch.jit.ignore
    def set_input_check(self, mode: str):
        """How eager calls check that inputs are finite pixels in [0, 1]: 'warn', 'error', 'always' or 'off'."""
        self.input_check = input_check_mode(mode)
        self.input_checked = False

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():
            check_pixel_values(self, x, self.in_chans, self.stem.weight.dtype)
        check_pixel_batch(x, self.in_chans)
        return (x - self.norm_mean.to(x.dtype)) / self.norm_std.to(x.dtype)

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """ Forward features that returns intermediates (stem, then each stage).

        Args:
            x: Input image tensor, pixels in [0, 1].
            indices: Take last n feature levels if int, all if None, select matching indices if sequence.
            norm: Apply the final BN-ReLU to the last stage's intermediate.
            stop_early: Stop iterating over stages when last desired intermediate hit.
            output_fmt: Shape of intermediate feature outputs, 'NCHW' only.
            intermediates_only: Only return intermediate features.
        """
        assert output_fmt == 'NCHW', 'Output shape must be NCHW.'
        intermediates = []
        take_indices, max_index = feature_take_indices(len(self.stages) + 1, indices)
        x = self.stem(self._normalize(x))
        if 0 in take_indices:
            intermediates.append(x)
        last_idx = len(self.stages)
        if torch.jit.is_scripting() or not stop_early:  # can't slice stages in torchscript
            stages = self.stages
        else:
            stages = self.stages[:max_index]
        feat_idx = 0
        for feat_idx, stage in enumerate(stages, start=1):
            if self.grad_checkpointing and not torch.jit.is_scripting():
                for block in stage:
                    x = checkpoint_module(block, x)
            else:
                x = stage(x)
            if feat_idx in take_indices:
                intermediates.append(self.act(self.norm(x)) if norm and feat_idx == last_idx else x)
        if intermediates_only:
            return intermediates
        if feat_idx == last_idx:
            x = self.act(self.norm(x))
        return x, intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ):
        """ Prune stages (and the final BN-ReLU) not required for the specified intermediates. """
        take_indices, max_index = feature_take_indices(len(self.stages) + 1, indices)
        prune_end = max_index < len(self.stages)
        if prune_norm or prune_end:
            self.norm = nn.Identity()  # the final BN is sized for (and only applied to) the last stage
            self.act = nn.Identity()
        self.stages = self.stages[:max_index]
        if prune_end:
            self.num_features = self.head_hidden_size = self.feature_info[max_index]['num_chs']
        if prune_head or prune_end:
            self.reset_classifier(0, '')
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Unpooled features after the final BN-ReLU, (B, num_features, H/4, W/4)."""
        x = self.stem(self._normalize(x))
        for stage in self.stages:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                for block in stage:
                    x = checkpoint_module(block, x)
            else:
                x = stage(x)
        return self.act(self.norm(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        if self.drop_rate > 0.:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x)
        x = self.forward_head(x)
        return x


def _cfg(**kwargs: Any) -> Dict[str, Any]:
    return {
        'num_classes': 10, 'input_size': (3, 32, 32), 'min_input_size': (3, 8, 8), 'pool_size': (8, 8),
        'crop_pct': 1.0, 'crop_mode': 'center', 'interpolation': 'bilinear',
        'mean': (0., 0., 0.), 'std': (1., 1., 1.),  # the model normalizes: inputs are pixels in [0, 1]
        'first_conv': 'stem', 'classifier': 'head',
        'label_names': CIFAR10_CLASSES, 'license': 'apache-2.0',
        'paper_ids': 'arXiv:1605.07146', 'paper_name': 'Wide Residual Networks',
        'origin_url': 'https://github.com/szagoruyko/wide-residual-networks',
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    'cifar_wrn34_10.untrained': _cfg(),
    'cifar_wrn28_10.untrained': _cfg(),
})


def _create_wide_resnet(variant: str, pretrained: bool = False, **kwargs: Any) -> WideResNet:
    return build_model_with_cfg(
        WideResNet, variant, pretrained,
        feature_cfg=dict(feature_cls='getter', out_indices=(0, 1, 2, 3), **kwargs.pop('feature_cfg', None) or {}),
        pretrained_filter_fn=partial(check_weights_fit, features_only=bool(kwargs.get('features_only'))),
        **kwargs,
    )


@register_model
def cifar_wrn34_10(pretrained: bool = False, **kwargs: Any) -> WideResNet:
    """WRN-34-10 (46.16M): the robust teacher of TRADES and MTARD."""
    model_args = dict(depth=34, widen_factor=10)
    return _create_wide_resnet('cifar_wrn34_10', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def cifar_wrn28_10(pretrained: bool = False, **kwargs: Any) -> WideResNet:
    """WRN-28-10 (36.48M): the CIFAR WRN of Zagoruyko and Komodakis."""
    model_args = dict(depth=28, widen_factor=10)
    return _create_wide_resnet('cifar_wrn28_10', pretrained=pretrained, **dict(model_args, **kwargs))
