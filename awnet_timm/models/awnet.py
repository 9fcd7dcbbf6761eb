""" AW-Net: Adversarial Weight-Varied Network, and the static CIFAR ResNets it is compared with

Paper: `Revisiting the Trade-off between Accuracy and Robustness via Weight Distribution of Filters`
(Wei, Zhao and Li, TPAMI 2024) - https://arxiv.org/abs/2306.03430. The authors released no code;
the choices made where the paper is silent are listed in the README and in docs/design.md.

A router sub-network looks at each input and gives (1) P(clean), which blends a Clean BN and an
Adv BN at every norm site (MixBN, Eq. 14), and (2) one signal per modulated conv that scales its
filters per sample (Eq. 11-12, 19). `awnet_r18` is AW-Net (ResNet-18 classifier), `awnet_r34` is
AW-Net-L (ResNet-34 classifier); both use a ResNet-18 router. `cifar_resnet18/34` are the static
baselines: the same class with modulation, MixBN and the router off.

Inputs are pixels in [0, 1]; normalization happens inside the model, so attacks take eps in
pixel units (8/255) and the pretrained cfgs say mean=(0,0,0), std=(1,1,1).

Routes (`model.route`, or the `route=` argument of the forward methods):
- 'auto': the router decides P(clean) and omega (the default, in train and eval mode);
- 'clean' / 'adv': MixBN runs only its Clean / Adv BN (P fixed to 1 / 0); omega still comes from
  the router, whose type logits stay available for the type loss. Training uses these;
- 'detach': as 'auto', with the router's outputs detached from the graph (a straight-through
  view for attacks: gradients flow through the classifier only).
`router_out=` replaces the router's outputs with given ones (any route applies on top of them).

A sharper route at test time (not in the paper): `route_threshold=t` (or `model.set_route_threshold(t, T)`) blends
MixBN in routes 'auto' and 'detach' by 1[P(clean) > t] (temperature T = 0: each image runs one BN branch) or by
sigmoid((logit P(clean) - logit t) / T), instead of P(clean) itself. The router's outputs (`type_logits`, `p_clean`)
stay as the router gives them; only the blend changes. docs/design.md says why and what it measured.

Bounded routing (not in the paper; after Adaptive Smoothing's bounded mixing weight, Bai et al. 2024):
`clean_share_max=b` (or `model.set_clean_share_max(b)`) caps the Clean BN's share of every MixBN blend in routes
'auto' and 'detach' at b: the blend weight is b * P(clean) (after any route threshold), so at least 1 - b of each
norm site is the Adv BN however clean the router finds an input; b = 0 runs the Adv BN alone. It applies in
training too (to inputs sent down the router's own route). docs/adaptive_attacks.md measures it.
"""
import math
import numbers
from contextlib import contextmanager
from functools import partial
from typing import Any, Dict, Iterator, List, Optional, Sequence, Set, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import LayerType, SelectAdaptivePool2d, calculate_drop_path_rates, get_act_layer, \
    get_device_dtype, get_norm_layer
from timm.models import PretrainedCfg, build_model_with_cfg, generate_default_cfgs, list_models, register_model, \
    resolve_pretrained_cfg
from timm.models._features import feature_take_indices

from ..layers import AdversarialRouter, AWStage, ConvNormAct, HPMHead, RouterOutput, check_pixel_batch, \
    check_pixel_values, input_check_mode
from .pretrained import check_weights_fit, explain_load_errors, may_be_served

__all__ = ['AWNet', 'ROUTES', 'use_route', 'sharpen_p_clean', 'PUBLISHED_WEIGHTS', 'RELEASED_WEIGHTS', 'CIFAR10_MEAN',
           'CIFAR10_STD', 'CIFAR10_CLASSES', 'registered_variant']

ROUTES = ('auto', 'clean', 'adv', 'detach')
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)
CIFAR10_CLASSES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck')

# `arch.tag` names whose weights are on the Hub. A tag with an hf_hub_id that is not listed here is
# planned but unpublished, and `pretrained=True` fails at once with a message saying so.
PUBLISHED_WEIGHTS: Set[str] = set()
# `arch.tag` names whose weights are released in this repository (hub/releases, listed in its README.md with
# their sha256 and commit; `awnet mirror hub/releases` serves them) but not yet uploaded to the Hub.
RELEASED_WEIGHTS: Set[str] = {
    'cifar_resnet18_025.pgd_at_cifar10', 'cifar_resnet18_025.standard_cifar10',  # the CPU campaign's
    'awnet_r18.mtard_cifar10', 'cifar_resnet18.mtard_cifar10',  # a GPU window's students
    'cifar_resnet18.pgd_at_cifar10', 'cifar_resnet18.standard_cifar10',  # and their teachers
}


def _check_route(route: str) -> None:
    if route != 'auto' and route != 'clean' and route != 'adv' and route != 'detach':
        raise ValueError(f"unknown route '{route}': expected one of 'auto', 'clean', 'adv', 'detach'")


def _is_number(value: Any) -> bool:
    """A real number, numpy scalars included (a threshold read from an array), booleans excluded."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_route_threshold(threshold: Optional[float], temperature: float) -> None:
    if threshold is not None and not (_is_number(threshold) and 0. < threshold < 1.):
        raise ValueError(f'route_threshold must be a number strictly between 0 and 1 (a P(clean) level), or None, '
                         f'got {threshold!r}')
    if not (_is_number(temperature) and 0. <= temperature < float('inf')):
        raise ValueError(f'route_temperature must be a finite number >= 0 (0: a hard threshold), got {temperature!r}')


def _check_clean_share_max(value: float) -> None:
    if not _is_number(value) or not 0. <= value <= 1.:
        raise ValueError(f"clean_share_max must be a number in [0, 1] (the Clean BN's largest share of a MixBN blend; "
                         f"1: the paper's blend, 0: Adv BN only), got {value!r}")


def sharpen_p_clean(p_clean: torch.Tensor, threshold: float, temperature: float = 0.,
                    type_logits: Optional[torch.Tensor] = None) -> torch.Tensor:
    """MixBN's blend weight from P(clean) and a threshold t: 1[p > t] at temperature 0 (no gradient), else
    sigmoid((logit p - logit t) / temperature); in p_clean's dtype. With the router's `type_logits` ([adv, clean]),
    logit p is their difference in float32, which keeps its resolution where p itself rounds to 1 (a t of 0.9999
    under bf16 autocast)."""
    if type_logits is not None:
        z = type_logits[:, 1].float() - type_logits[:, 0].float()
    else:
        tiny = 1.1920928955078125e-07  # float32's eps (TorchScript has no torch.finfo)
        z = torch.logit(p_clean.float().clamp(tiny, 1. - tiny))
    z_t = math.log(threshold / (1. - threshold))
    if temperature == 0.:
        return (z > z_t).to(p_clean.dtype)
    return torch.sigmoid((z - z_t) / temperature).to(p_clean.dtype)


def _stats(values: Sequence[float], in_chans: int) -> torch.Tensor:
    """Per-channel normalization stats; their mean is repeated when in_chans differs from len(values)."""
    t = torch.tensor(values, dtype=torch.float32)
    if t.numel() != in_chans:
        t = t.mean().repeat(in_chans)
    return t.reshape(1, in_chans, 1, 1)


class AWNet(nn.Module):
    """ AW-Net classifier, router and heads; with `modulate=False, mix_bn=False` a static CIFAR ResNet.

    Args:
        layers: Basic blocks per stage (2-2-2-2 ResNet-18, 3-4-6-3 ResNet-34).
        channels: Width of each stage.
        num_classes: Classifier outputs (0 for none).
        in_chans: Input channels.
        global_pool: Pooling before the classifier ('avg', 'max', 'avgmax', '' for none).
        drop_rate: Dropout before the classifier.
        drop_path_rate: Stochastic depth, linearly increasing over the blocks.
        mix_bn: Clean BN + Adv BN at every norm site (False: one BN; the paper's ablation (1)).
        modulate: Filter-wise modulation of the block convs (False: ablation without dynamic weights).
        type_head: Blend MixBN by the router's P(clean) (False: MixBN in training, Adv BN at test;
            the paper's ablation (2)).
        modulate_stem_shortcut: Also modulate the stem and 1x1 shortcut convs.
        router_layers: Blocks per stage of the router's trunk.
        router_channels: Width of each router stage.
        router_feature: psi from every router stage ('stages', d=960) or the last ('last', d=512).
        beta: Exponent of the signal heads, Eq. 19.
        signal_init: 'zeros' (omega = 1 at init) or 'default'.
        norm_mean, norm_std: Input normalization applied inside the model.
        input_check: How eager calls check that inputs are finite pixels in [0, 1]: 'warn' (the first batch,
            one host sync, a PixelRangeWarning if it fails), 'error' (raise, until a batch passes), 'always'
            (every batch, raise) or 'off' (layers/pixel_input.py).
        head: Classifier: 'fc' (nn.Linear) or 'hpm' (an FC plus the HPM l2-reclassifier, layers/hpm_head.py).
        head_args: Arguments of the HPM head (stable_weight, momentum, scale).
        act_layer, norm_layer: Activation and BatchNorm classes (or timm names).
        route_threshold: Blend MixBN by P(clean) sharpened at this level (test time, not in the paper; None: by
            P(clean) itself, as the paper does).
        route_temperature: 0: each image runs the Clean BN if P(clean) > route_threshold, else the Adv BN; T > 0:
            the blend weight is sigmoid((logit P(clean) - logit route_threshold) / T).
        clean_share_max: The Clean BN's largest share of a MixBN blend (bounded routing, not in the paper): the blend
            weight is clean_share_max * P(clean). 1: the paper's blend; 0: Adv BN only.
    """
    stage_omega_start: List[int]
    stage_omega_count: List[int]
    route_threshold: Optional[float]
    clean_share_max: float

    def __init__(
            self,
            layers: Sequence[int] = (2, 2, 2, 2),
            channels: Sequence[int] = (64, 128, 256, 512),
            num_classes: int = 10,
            in_chans: int = 3,
            global_pool: str = 'avg',
            drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            mix_bn: bool = True,
            modulate: bool = True,
            type_head: bool = True,
            modulate_stem_shortcut: bool = False,
            router_layers: Sequence[int] = (2, 2, 2, 2),
            router_channels: Sequence[int] = (64, 128, 256, 512),
            router_feature: str = 'stages',
            beta: float = 3.0,
            signal_init: str = 'zeros',
            norm_mean: Sequence[float] = CIFAR10_MEAN,
            norm_std: Sequence[float] = CIFAR10_STD,
            input_check: str = 'warn',
            head: str = 'fc',
            head_args: Optional[Dict[str, Any]] = None,
            act_layer: LayerType = nn.ReLU,
            norm_layer: LayerType = nn.BatchNorm2d,
            route_threshold: Optional[float] = None,
            route_temperature: float = 0.,
            clean_share_max: float = 1.,
            device=None,
            dtype=None,
    ):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        for what, depths, widths in (('', layers, channels), ('router_', router_layers, router_channels)):
            if len(depths) != len(widths):  # zip() would silently build fewer stages than asked for
                raise ValueError(f'{what}layers {list(depths)} and {what}channels {list(widths)} must have one entry per '
                                 f'stage each, got {len(depths)} and {len(widths)}')
        self.set_input_check(input_check)
        act_layer = get_act_layer(act_layer)
        norm_layer = get_norm_layer(norm_layer)
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.grad_checkpointing = False
        self.mix_bn = mix_bn
        self.route = 'auto'
        self.register_buffer('norm_mean', _stats(norm_mean, in_chans).to(device=device), persistent=False)
        self.register_buffer('norm_std', _stats(norm_std, in_chans).to(device=device), persistent=False)

        unit = dict(mix_bn=mix_bn, act_layer=act_layer, norm_layer=norm_layer, **dd)
        self.stem = ConvNormAct(in_chans, channels[0], 3, 1, modulate=modulate and modulate_stem_shortcut, **unit)
        self.feature_info = [dict(num_chs=channels[0], reduction=1, module='stem')]
        dpr = calculate_drop_path_rates(drop_path_rate, list(layers), stagewise=True)
        self.stages = nn.ModuleList()
        prev, reduction = channels[0], 1
        for i, (depth, chs) in enumerate(zip(layers, channels)):
            stride = 1 if i == 0 else 2
            reduction *= stride
            self.stages.append(AWStage(
                prev, chs, depth, stride, drop_path_rates=dpr[i], modulate=modulate,
                modulate_shortcut=modulate_stem_shortcut, **unit))
            self.feature_info.append(dict(num_chs=chs, reduction=reduction, module=f'stages.{i}'))
            prev = chs

        # omega is one list over the modulated convs: the stem's first, then each stage's in order
        signal_channels = [channels[0]] if self.stem.modulate else []
        self.stage_omega_start = []
        self.stage_omega_count = []
        for stage in self.stages:
            self.stage_omega_start.append(len(signal_channels))
            self.stage_omega_count.append(len(stage.modulated_channels))
            signal_channels += stage.modulated_channels

        self.use_type_head = mix_bn and type_head
        if signal_channels or self.use_type_head:
            self.router = AdversarialRouter(
                signal_channels, in_chans, router_layers, router_channels, type_head=self.use_type_head, beta=beta,
                feature=router_feature, signal_init=signal_init, act_layer=act_layer, norm_layer=norm_layer, **dd)
        else:
            self.router = None
        self.route_threshold = None
        self.route_temperature = 0.
        if route_threshold is not None or route_temperature != 0.:
            self.set_route_threshold(route_threshold, route_temperature)
        self.clean_share_max = 1.
        self.set_clean_share_max(clean_share_max)

        self.num_features = self.head_hidden_size = prev
        self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=bool(global_pool))
        if head not in ('fc', 'hpm'):
            raise ValueError(f"unknown head '{head}': expected 'fc' or 'hpm'")
        self.head_type, self.head_args = head, dict(head_args or {})
        self.head = self._make_head(self.num_features * self.global_pool.feat_mult(), num_classes, dd)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')

    @torch.jit.ignore
    def set_route(self, route: str):
        """Set the route a plain `model(x)` takes: 'auto', 'clean', 'adv' or 'detach'."""
        _check_route(route)
        self.route = route

    @torch.jit.ignore
    def set_route_threshold(self, threshold: Optional[float], temperature: float = 0.):
        """Blend MixBN by P(clean) sharpened at `threshold` (the module docstring says how); None: by P(clean), as the
        paper does."""
        _check_route_threshold(threshold, temperature)
        if threshold is not None and not self.use_type_head:
            raise ValueError('route_threshold needs a router with a type head (P(clean)); this model has none '
                             f'(mix_bn={self.mix_bn}, type_head={self.use_type_head})')
        if threshold is None and temperature != 0.:
            raise ValueError(f'route_temperature {temperature} sharpens P(clean) at a route_threshold: give one too')
        self.route_threshold = None if threshold is None else float(threshold)  # a numpy scalar as a plain float
        self.route_temperature = float(temperature)

    @torch.jit.ignore
    def set_clean_share_max(self, value: float):
        """Cap the Clean BN's share of every MixBN blend at `value` (bounded routing; 1: the paper's blend)."""
        _check_clean_share_max(value)
        if value != 1 and not self.use_type_head:
            raise ValueError('clean_share_max bounds the blend by P(clean), and this model has no router type head '
                             f'(mix_bn={self.mix_bn}, type_head={self.use_type_head})')
        self.clean_share_max = float(value)

    @torch.jit.ignore
    def set_input_check(self, mode: str):
        """How eager calls check that inputs are finite pixels in [0, 1]: 'warn', 'error', 'always' or 'off'."""
        self.input_check = input_check_mode(mode)
        self.input_checked = False

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(
            router=r'^router\.',
            stem=r'^stem\.',
            blocks=r'^stages\.(\d+)' if coarse else r'^stages\.(\d+)\.blocks\.(\d+)',
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True):
        self.grad_checkpointing = enable
        for stage in self.stages:
            stage.grad_checkpointing = enable
        if self.router is not None:
            for stage in self.router.stages:
                stage.grad_checkpointing = enable

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
        self.head = self._make_head(self.head_hidden_size, num_classes, dd)
        self.head.train(self.training)

    def _make_head(self, in_features: int, num_classes: int, dd: Dict[str, Any]) -> nn.Module:
        if num_classes <= 0:
            return nn.Identity()
        if self.head_type == 'hpm':
            return HPMHead(in_features, num_classes, **self.head_args, **dd)
        return nn.Linear(in_features, num_classes, **dd)

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():
            check_pixel_values(self, x, self.in_chans, self.stem.conv.weight.dtype)
        check_pixel_batch(x, self.in_chans)
        return (x - self.norm_mean.to(x.dtype)) / self.norm_std.to(x.dtype)

    def _prepare(
            self,
            x: torch.Tensor,
            route: Optional[str],
            router_out: Optional[RouterOutput],
    ) -> Tuple[torch.Tensor, List[torch.Tensor], Optional[torch.Tensor], str, Optional[RouterOutput]]:
        """Normalize x and turn the route into (omega list, P(clean), MixBN branch)."""
        route = self.route if route is None else route
        _check_route(route)
        x = self._normalize(x)
        given = router_out
        if self.router is None:  # static, or MixBN without a type head: a forced route picks its BN, else Adv BN
            return x, [], None, route if route == 'clean' or route == 'adv' else 'adv', None
        if router_out is None:
            router_out = self.router(x)
        elif len(router_out.omega) != len(self.router.signal_channels):
            raise ValueError(
                f'router_out.omega has {len(router_out.omega)} signals, but this model modulates '
                f'{len(self.router.signal_channels)} convs (channels {self.router.signal_channels})')
        omega = router_out.omega
        p_clean = router_out.p_clean
        if route == 'detach':
            omega = [o.detach() for o in omega]
            if p_clean is not None:
                p_clean = p_clean.detach()
        if route == 'clean' or route == 'adv':
            branch = route
        elif not self.use_type_head:
            branch = 'adv'  # ablation (2): MixBN trained, Adv BN at test
        elif p_clean is None:
            raise ValueError('router_out.p_clean is None, but this model blends MixBN by P(clean)')
        else:
            branch = 'mix'
            threshold = self.route_threshold
            if threshold is not None:  # from the router's own logits; a given p_clean (router_out=) is taken as it is
                type_logits = router_out.type_logits if given is None else None
                if type_logits is not None and route == 'detach':
                    type_logits = type_logits.detach()
                p_clean = sharpen_p_clean(p_clean, threshold, self.route_temperature, type_logits)
            if self.clean_share_max != 1.:
                p_clean = p_clean * self.clean_share_max
        return x, omega, p_clean, branch, router_out

    def _stage_omega(self, omega: List[torch.Tensor], i: int) -> List[torch.Tensor]:
        start = self.stage_omega_start[i]
        return omega[start:start + self.stage_omega_count[i]]

    def _forward_trunk(
            self,
            x: torch.Tensor,
            route: Optional[str] = None,
            router_out: Optional[RouterOutput] = None,
    ) -> Tuple[torch.Tensor, Optional[RouterOutput]]:
        x, omega, p_clean, branch, router_out = self._prepare(x, route, router_out)
        x = self.stem(x, omega[0] if self.stem.modulate else None, p_clean, branch)
        for i, stage in enumerate(self.stages):
            x = stage(x, self._stage_omega(omega, i), p_clean, branch)
        return x, router_out

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
            route: Optional[str] = None,
            router_out: Optional[RouterOutput] = None,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """ Forward features that returns intermediates (stem, then each stage).

        Args:
            x: Input image tensor, pixels in [0, 1].
            indices: Take last n feature levels if int, all if None, select matching indices if sequence.
            norm: Unused (no final norm in this architecture); kept for timm's signature.
            stop_early: Stop iterating over stages when last desired intermediate hit.
            output_fmt: Shape of intermediate feature outputs, 'NCHW' only.
            intermediates_only: Only return intermediate features.
            route, router_out: As for `forward_features`.
        """
        assert output_fmt == 'NCHW', 'Output shape must be NCHW.'
        intermediates = []
        take_indices, max_index = feature_take_indices(len(self.stages) + 1, indices)
        x, omega, p_clean, branch, _ = self._prepare(x, route, router_out)
        x = self.stem(x, omega[0] if self.stem.modulate else None, p_clean, branch)
        if 0 in take_indices:
            intermediates.append(x)
        last = len(self.stages) if torch.jit.is_scripting() or not stop_early else max_index
        for i, stage in enumerate(self.stages[:last]):
            x = stage(x, self._stage_omega(omega, i), p_clean, branch)
            if i + 1 in take_indices:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ):
        """ Prune stages (and their signal heads) not required for the specified intermediates. """
        take_indices, max_index = feature_take_indices(len(self.stages) + 1, indices)
        prune_end = max_index < len(self.stages)
        self.stages = self.stages[:max_index]
        self.stage_omega_start = self.stage_omega_start[:max_index]
        self.stage_omega_count = self.stage_omega_count[:max_index]
        if self.router is not None:
            self.router.prune_signal_head(int(self.stem.modulate) + sum(self.stage_omega_count))
        if prune_end:
            self.num_features = self.head_hidden_size = self.feature_info[max_index]['num_chs']
        if prune_head or prune_end:
            self.reset_classifier(0, '')
        return take_indices

    def forward_features(
            self,
            x: torch.Tensor,
            route: Optional[str] = None,
            router_out: Optional[RouterOutput] = None,
    ) -> torch.Tensor:
        """Unpooled features (B, num_features, H/8, W/8); `route` defaults to `self.route`."""
        return self._forward_trunk(x, route, router_out)[0]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        if self.drop_rate > 0.:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.head(x)

    @torch.jit.export
    def forward_router(self, x: torch.Tensor) -> Optional[RouterOutput]:
        """The router's outputs for pixel inputs x (None for static models), e.g. to pass as `router_out`."""
        x = self._normalize(x)
        if self.router is None:
            return None
        return self.router(x)

    @torch.jit.export
    def forward_with_router(
            self,
            x: torch.Tensor,
            route: Optional[str] = None,
            router_out: Optional[RouterOutput] = None,
    ) -> Tuple[torch.Tensor, Optional[RouterOutput]]:
        """Logits and the router's outputs (P(clean) per sample, type logits, omega) in one pass.

        The router output is None for static models, and is `router_out` itself when one is given.
        """
        x, router_out = self._forward_trunk(x, route, router_out)
        return self.forward_head(x), router_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x)
        x = self.forward_head(x)
        return x


@contextmanager
def use_route(model: nn.Module, route: str) -> Iterator[nn.Module]:
    """Temporarily set the route of an AW-Net (e.g. to attack it in forced-adv mode)."""
    if not isinstance(model, AWNet):
        raise TypeError(f'use_route needs an AWNet, got {type(model).__name__}')
    previous = model.route
    model.set_route(route)
    try:
        yield model
    finally:
        model.route = previous


def _cfg(**kwargs: Any) -> Dict[str, Any]:
    return {
        'num_classes': 10, 'input_size': (3, 32, 32), 'min_input_size': (3, 8, 8), 'pool_size': (4, 4),
        'crop_pct': 1.0, 'crop_mode': 'center', 'interpolation': 'bilinear',
        'mean': (0., 0., 0.), 'std': (1., 1., 1.),  # the model normalizes: inputs are pixels in [0, 1]
        'first_conv': ('stem.conv', 'router.stem.conv'), 'classifier': 'head',
        'label_names': CIFAR10_CLASSES, 'license': 'apache-2.0',
        'paper_ids': 'arXiv:2306.03430',
        'paper_name': 'Revisiting the Trade-off between Accuracy and Robustness via Weight Distribution of Filters',
        'origin_url': 'https://github.com/zhaoshiji123/AW-Net',
        **kwargs,
    }


HUB_ORG = 'awnet-timm'
QUARTER_WIDTHS = (16, 32, 64, 128)
# the compact entrypoints as their base model with constructor arguments (a run trained as the base with these
# arguments holds the compact model's weights, key for key)
COMPACT_VARIANTS = {
    'awnet_r18_025': ('awnet_r18', dict(channels=QUARTER_WIDTHS, router_channels=QUARTER_WIDTHS)),
    'cifar_resnet18_025': ('cifar_resnet18', dict(channels=QUARTER_WIDTHS)),
}


def registered_variant(model: str, model_args: Dict[str, Any]) -> Tuple[str, Dict[str, Any]]:
    """The registered name of `model` built with `model_args`, and the arguments left: ('cifar_resnet18_025', {}) for
    ('cifar_resnet18', {'channels': [16, 32, 64, 128]}); the model and its arguments as given when no variant fits."""
    for variant, (base, fixed) in COMPACT_VARIANTS.items():
        if model == base and all(k in model_args and tuple(model_args[k]) == tuple(v) for k, v in fixed.items()):
            return variant, {k: v for k, v in model_args.items() if k not in fixed}
    return model, dict(model_args)

default_cfgs = generate_default_cfgs({
    'awnet_r18.mtard_cifar10': _cfg(hf_hub_id=f'{HUB_ORG}/awnet_r18.mtard_cifar10'),
    'awnet_r34.mtard_cifar10': _cfg(hf_hub_id=f'{HUB_ORG}/awnet_r34.mtard_cifar10'),
    'cifar_resnet18.mtard_cifar10': _cfg(hf_hub_id=f'{HUB_ORG}/cifar_resnet18.mtard_cifar10', first_conv='stem.conv'),
    'cifar_resnet18.pgd_at_cifar10': _cfg(hf_hub_id=f'{HUB_ORG}/cifar_resnet18.pgd_at_cifar10', first_conv='stem.conv'),
    'cifar_resnet18.standard_cifar10': _cfg(hf_hub_id=f'{HUB_ORG}/cifar_resnet18.standard_cifar10', first_conv='stem.conv'),
    # CPU-sized compact models (timm's width suffix: _025 = a quarter of every width), trained on 2 CPU cores
    'awnet_r18_025.mtard_cifar10': _cfg(hf_hub_id=f'{HUB_ORG}/awnet_r18_025.mtard_cifar10'),
    'cifar_resnet18_025.mtard_cifar10': _cfg(hf_hub_id=f'{HUB_ORG}/cifar_resnet18_025.mtard_cifar10', first_conv='stem.conv'),
    'cifar_resnet18_025.pgd_at_cifar10': _cfg(hf_hub_id=f'{HUB_ORG}/cifar_resnet18_025.pgd_at_cifar10', first_conv='stem.conv'),
    'cifar_resnet18_025.standard_cifar10': _cfg(hf_hub_id=f'{HUB_ORG}/cifar_resnet18_025.standard_cifar10', first_conv='stem.conv'),
    'cifar_resnet34.untrained': _cfg(first_conv='stem.conv'),
    'cifar_resnet56.untrained': _cfg(first_conv='stem.conv', pool_size=(8, 8)),
})


def _resolve_cfg(variant: str, kwargs: Dict[str, Any], pretrained: bool) -> PretrainedCfg:
    """The pretrained cfg timm will use; an unknown tag or unpublished weights fail here with what to do."""
    try:
        cfg = resolve_pretrained_cfg(variant, kwargs.get('pretrained_cfg'), kwargs.get('pretrained_cfg_overlay'))
    except RuntimeError as e:
        if 'Invalid pretrained tag' not in str(e):
            raise
        known = ', '.join(list_models(variant, include_tags=True))
        published = ', '.join(sorted(n for n in PUBLISHED_WEIGHTS if n.split('.')[0] == variant)) or 'none yet'
        raise RuntimeError(f'{e} Its tags: {known} (with published weights: {published}). Use one of them, '
                           f"an hf-hub:org/repo or local-dir:folder name, or pretrained_cfg_overlay=dict(file=...)") from None
    if not pretrained or cfg.source == 'hf-hub' or cfg.file or cfg.state_dict or cfg.url or not cfg.hf_hub_id:
        return cfg  # an explicit source, or no source at all (timm then says no weights exist)
    name = f'{variant}.{cfg.tag}'
    if name not in PUBLISHED_WEIGHTS and not may_be_served(cfg, kwargs.get('cache_dir')):
        raise RuntimeError(
            f"No weights for '{name}' have been published yet (planned Hub repo: {cfg.hf_hub_id}). "
            f"Use pretrained=False for a randomly initialised model, or load local weights: an export folder with "
            f"timm.create_model('local-dir:path/to/folder', pretrained=True), or a file with "
            f"pretrained=True, pretrained_cfg_overlay=dict(file='path/to/model.safetensors'), or serve a folder of "
            f"release folders with `awnet mirror FOLDER` and set HF_ENDPOINT to it before Python starts."
            + _released_hint())
    return cfg


def _released_hint() -> str:
    released = sorted(RELEASED_WEIGHTS | PUBLISHED_WEIGHTS)
    if not released:
        return ''
    return (f" Trained weights exist for: {', '.join(released)} (in this repository's hub/releases, served by "
            f"`awnet mirror hub/releases`).")


def _fill_hpm_state(fits, state_dict: Dict[str, torch.Tensor], model: AWNet) -> Dict[str, torch.Tensor]:
    if isinstance(model.head, HPMHead):
        state_dict = model.head.fill_missing_state(state_dict, 'head.')
    return fits(state_dict, model)


def _create_awnet(variant: str, pretrained: bool = False, **kwargs: Any) -> AWNet:
    cfg = _resolve_cfg(variant, kwargs, pretrained)
    # features_only goes through forward_intermediates: stages take the route as extra arguments
    levels = 1 + len(kwargs.get('layers', (2, 2, 2, 2)))  # the stem and every stage
    feature_cfg = dict(feature_cls='getter', out_indices=tuple(range(levels)), **kwargs.pop('feature_cfg', None) or {})
    fits = partial(check_weights_fit, features_only=bool(kwargs.get('features_only')))
    if kwargs.get('head') == 'hpm':  # an FC checkpoint loads into the HPM head: its prototypes start empty
        fits = partial(_fill_hpm_state, fits)
    with explain_load_errors(f'{variant}.{cfg.tag}' if cfg.tag else variant, cfg, kwargs.get('cache_dir')):
        return build_model_with_cfg(
            AWNet, variant, pretrained,
            feature_cfg=feature_cfg,
            pretrained_filter_fn=fits,
            **kwargs,
        )


@register_model
def awnet_r18(pretrained: bool = False, **kwargs: Any) -> AWNet:
    """AW-Net: ResNet-18 classifier with MixBN and modulated convs, ResNet-18 router."""
    model_args = dict(layers=(2, 2, 2, 2))
    return _create_awnet('awnet_r18', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def awnet_r34(pretrained: bool = False, **kwargs: Any) -> AWNet:
    """AW-Net-L: ResNet-34 classifier with MixBN and modulated convs, ResNet-18 router."""
    model_args = dict(layers=(3, 4, 6, 3))
    return _create_awnet('awnet_r34', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def awnet_r18_025(pretrained: bool = False, **kwargs: Any) -> AWNet:
    """AW-Net at a quarter of the widths (16-32-64-128), its router likewise (as AW-Net's equals its classifier)."""
    model_args = dict(layers=(2, 2, 2, 2), channels=QUARTER_WIDTHS, router_channels=QUARTER_WIDTHS)
    return _create_awnet('awnet_r18_025', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def cifar_resnet18(pretrained: bool = False, **kwargs: Any) -> AWNet:
    """Static CIFAR ResNet-18 (3x3 stem, no max-pool): AW-Net's baseline."""
    model_args = dict(layers=(2, 2, 2, 2), mix_bn=False, modulate=False)
    return _create_awnet('cifar_resnet18', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def cifar_resnet18_025(pretrained: bool = False, **kwargs: Any) -> AWNet:
    """Static CIFAR ResNet-18 at a quarter of the widths (16-32-64-128): awnet_r18_025's baseline and teachers."""
    model_args = dict(layers=(2, 2, 2, 2), channels=QUARTER_WIDTHS, mix_bn=False, modulate=False)
    return _create_awnet('cifar_resnet18_025', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def cifar_resnet34(pretrained: bool = False, **kwargs: Any) -> AWNet:
    """Static CIFAR ResNet-34 (3x3 stem, no max-pool): AW-Net-L's baseline."""
    model_args = dict(layers=(3, 4, 6, 3), mix_bn=False, modulate=False)
    return _create_awnet('cifar_resnet34', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def cifar_resnet56(pretrained: bool = False, **kwargs: Any) -> AWNet:
    """CIFAR ResNet-56 (He et al. 2016: 3 stages of 9 basic blocks, 16/32/64 wide): MTARD's clean teacher."""
    model_args = dict(layers=(9, 9, 9), channels=(16, 32, 64), mix_bn=False, modulate=False)
    return _create_awnet('cifar_resnet56', pretrained=pretrained, **dict(model_args, **kwargs))
