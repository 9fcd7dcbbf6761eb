""" MixBN: a Clean BN and an Adv BN at one norm site

From `Revisiting the Trade-off between Accuracy and Robustness via Weight Distribution of Filters`
(AW-Net, Wei, Zhao and Li, TPAMI 2024, arXiv:2306.03430), Sec. 4.2, after the gated BN of AdvProp.

- Training (Eq. 13): the caller states the batch's type; only that branch runs, so only its
  running statistics move (`branch='clean'` or `'adv'`).
- Test (Eq. 14): `MixBN(z) = (1 - P) * BN_adv(z) + P * BN_clean(z)` per sample, P = the router's
  probability that the sample is clean (`branch='mix'`). With running statistics both BNs are
  affine, so the blend is one per-sample affine: `z * (P a_c + (1-P) a_a) + (P b_c + (1-P) b_a)`.
- `branch='mix'` in training mode runs both BNs on batch statistics and blends their outputs, so a
  plain forward/backward reaches every parameter.
- `scale` (B, C), the omega of a preceding modulated conv, is applied to the input first:
  `MixBN(z * scale)`. In eval mode it folds into the per-sample affine, saving a pass over z.
"""
from typing import Optional, Tuple, Type

import torch
import torch.nn as nn

__all__ = ['MixBatchNorm2d', 'MIX_BRANCHES']

MIX_BRANCHES = ('clean', 'adv', 'mix')


def _bn_affine(
        mean: torch.Tensor,
        var: torch.Tensor,
        weight: Optional[torch.Tensor],
        bias: Optional[torch.Tensor],
        eps: float,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) such that eval-mode BN(z) = z * scale + shift."""
    scale = torch.rsqrt(var + eps)
    if weight is not None:
        scale = scale * weight
    shift = -mean * scale
    if bias is not None:
        shift = shift + bias
    return scale, shift


class MixBatchNorm2d(nn.Module):
    """ Two BatchNorms, `clean` and `adv`, selected by the batch's type or blended by P(clean).

    Args:
        num_features: Channels of the input.
        eps, momentum, affine, track_running_stats: As for `nn.BatchNorm2d`, shared by both branches.
        norm_layer: BatchNorm class of each branch (e.g. `nn.SyncBatchNorm` for DDP).
    """

    def __init__(
            self,
            num_features: int,
            eps: float = 1e-5,
            momentum: float = 0.1,
            affine: bool = True,
            track_running_stats: bool = True,
            norm_layer: Type[nn.Module] = nn.BatchNorm2d,
            device=None,
            dtype=None,
    ):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        self.num_features = num_features
        self.clean = norm_layer(num_features, eps, momentum, affine, track_running_stats, **dd)
        self.adv = norm_layer(num_features, eps, momentum, affine, track_running_stats, **dd)

    def forward(
            self,
            x: torch.Tensor,
            p_clean: Optional[torch.Tensor] = None,
            branch: str = 'mix',
            scale: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        if branch != 'clean' and branch != 'adv' and branch != 'mix':
            raise ValueError(f"MixBatchNorm2d: branch must be one of 'clean', 'adv', 'mix', got '{branch}'")
        if branch == 'mix' and p_clean is None:
            raise ValueError("MixBatchNorm2d: branch='mix' needs p_clean, a (B,) tensor of P(clean) per sample")
        fused = not self.training and self.clean.running_mean is not None and self.adv.running_mean is not None
        if not fused or (scale is None and branch != 'mix'):
            if scale is not None:
                x = x * scale.to(x.dtype)[:, :, None, None]
            if branch == 'clean':
                return self.clean(x)
            if branch == 'adv':
                return self.adv(x)
            assert p_clean is not None
            return torch.lerp(self.adv(x), self.clean(x), p_clean.reshape(-1, 1, 1, 1).to(x.dtype))
        a, b = self.eval_affine(p_clean, branch)  # eval: one per-sample affine, Eq. 14
        if scale is not None:
            a = a * scale.to(a.dtype)
        return torch.addcmul(b.to(x.dtype)[..., None, None], x, a.to(x.dtype)[..., None, None])

    def eval_affine(self, p_clean: Optional[torch.Tensor], branch: str) -> Tuple[torch.Tensor, torch.Tensor]:
        """(scale, shift) of eval-mode MixBN: (C,) for one branch, (B, C) blended by P(clean) for 'mix'."""
        c_mean, c_var = self.clean.running_mean, self.clean.running_var
        a_mean, a_var = self.adv.running_mean, self.adv.running_var
        assert c_mean is not None and c_var is not None and a_mean is not None and a_var is not None
        if branch == 'clean':
            return _bn_affine(c_mean, c_var, self.clean.weight, self.clean.bias, self.clean.eps)
        a_a, b_a = _bn_affine(a_mean, a_var, self.adv.weight, self.adv.bias, self.adv.eps)
        if branch == 'adv':
            return a_a, b_a
        assert p_clean is not None
        a_c, b_c = _bn_affine(c_mean, c_var, self.clean.weight, self.clean.bias, self.clean.eps)
        p = p_clean.reshape(-1, 1).to(a_c.dtype)
        return torch.lerp(a_a, a_c, p), torch.lerp(b_a, b_c, p)
