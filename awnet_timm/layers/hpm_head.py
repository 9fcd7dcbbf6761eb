""" HPM head: an l2-reclassifier with Hybrid Prototype Mixing on top of a fully connected classifier

From `Sensitivity as a Double-Edged Sword: A Trade-off Between Discriminability and Adversarial
Robustness` (arXiv:2606.01746, 2026). Only the abstract is public: it classifies by l2 distance to class
prototypes that fuse (1) stable dataset-level prototypes updated by EMA and (2) dynamic batch-level
prototypes built from the FC classifier's predictions through a straight-through estimator (STE), and
is fine-tuned briefly on an adversarially trained backbone. Everything else is our choice, all here:

- Features z are the pooled pre-logits; the FC is this module's own `weight`/`bias` (an `nn.Linear`,
  so an FC checkpoint's `head.weight`/`head.bias` load into it and its prototypes start empty).
- Assignment: `a = onehot(argmax FC(z))` in the forward, `softmax(FC(z))`'s gradient in the backward (STE).
- Dataset-level prototypes mu (a buffer): in training, per class present in the batch (by the FC's
  prediction: the head sees no labels), `mu_k <- m mu_k + (1 - m) mean(z_j : a_jk = 1)` with detached z;
  a class seen for the first time takes the batch mean. The update runs before the batch is classified.
- Batch-level prototypes: `b_k = sum_j a_jk z_j / sum_j onehot_jk` (STE weights: the forward is the mean
  of the features assigned to k, the backward reaches the FC). Mixed: `c_k = mu_k + (1 - alpha) (b_k - mu_k)`
  for classes present in the batch, `mu_k` otherwise.
- Logits: `-scale * ||z - c_k||^2`.
- FC supervision: in training the FC also receives the loss's gradient on the l2 logits, as if it had
  produced them (`logits + fc - sg(fc)`: the forward is unchanged). With only the STE reaching it, the FC
  drifted during fine-tuning and collapsed to one class in our digits run (and the head with it).
- Eval mode classifies each sample as a batch of one, so the output does not depend on the batch:
  `c_k = mu_k + (1 - alpha) a_ik (z_i - mu_k)`, i.e. `logits_ik = -scale (1 - (1 - alpha) a_ik)^2 ||z_i - mu_k||^2`
  (a test holds this equal to the training formula on a batch of one).
- `mode` gives the differentiable surrogates the Mixed Surrogate Attack needs: 'fc' (the FC logits) and
  'soft' (the l2 head without the STE: `a = softmax(FC(z))` in the forward too); 'hpm' is the head itself.
- Defaults: alpha (`stable_weight`) 0.5, EMA momentum m 0.9 (BatchNorm's running-statistics rate),
  scale 0.1 (with scale 1 the l2 logits' gradients, about 10x an FC's, wrecked the backbone in a digits
  fine-tune at lr 0.01; at 0.1 and 0.02 it kept its accuracy).
"""
from typing import Dict

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ['HPMHead', 'HPM_MODES']

HPM_MODES = ('hpm', 'fc', 'soft')


def _squared_distances(z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """(B, K) squared l2 distances between rows of z (B, D) and c (K, D), without a (B, K, D) tensor."""
    return (z.pow(2).sum(1, keepdim=True) - 2 * z @ c.T + c.pow(2).sum(1)[None]).clamp(min=0)


class HPMHead(nn.Linear):
    """ FC classifier plus HPM l2-reclassifier; `forward` gives the l2 logits (`mode='hpm'`).

    Args:
        in_features: Width of the pooled features.
        num_classes: Classes.
        stable_weight: alpha, the share of the dataset-level prototype in a mixed prototype.
        momentum: EMA factor m of the dataset-level prototypes.
        scale: Logits are `-scale` times the squared distance.
    """

    def __init__(
            self,
            in_features: int,
            num_classes: int,
            stable_weight: float = 0.5,
            momentum: float = 0.9,
            scale: float = 0.1,
            device=None,
            dtype=None,
    ):
        super().__init__(in_features, num_classes, device=device, dtype=dtype)
        if not 0 <= stable_weight <= 1 or not 0 <= momentum < 1 or scale <= 0:
            raise ValueError(f'HPMHead: stable_weight must be in [0, 1], momentum in [0, 1) and scale > 0, '
                             f'got {stable_weight}, {momentum}, {scale}')
        self.stable_weight = stable_weight
        self.momentum = momentum
        self.scale = scale
        self.mode = 'hpm'
        self.register_buffer('prototypes', torch.zeros(num_classes, in_features, device=device, dtype=dtype))
        self.register_buffer('initialized', torch.zeros(num_classes, dtype=torch.bool, device=device))

    def set_mode(self, mode: str):
        """'hpm' (the head), 'fc' (its FC logits) or 'soft' (the l2 head without the STE): the latter two are surrogates."""
        if mode not in HPM_MODES:
            raise ValueError(f"unknown HPM mode '{mode}': expected one of {', '.join(HPM_MODES)}")
        self.mode = mode

    @torch.no_grad()
    def _update_prototypes(self, z: torch.Tensor, onehot: torch.Tensor):
        counts = onehot.sum(0)
        present = counts > 0
        means = (onehot.T @ z.to(onehot.dtype)) / counts.clamp(min=1)[:, None]
        ema = self.momentum * self.prototypes + (1 - self.momentum) * means.to(self.prototypes.dtype)
        new = torch.where(self.initialized[:, None], ema, means.to(self.prototypes.dtype))
        self.prototypes.copy_(torch.where(present[:, None], new, self.prototypes))
        self.initialized |= present

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fc = super().forward(x)
        if self.mode == 'fc':
            return fc
        z = x.float()
        p = F.softmax(fc.float(), dim=1)
        onehot = F.one_hot(fc.argmax(1), self.out_features).float()
        a = p if self.mode == 'soft' else onehot + p - p.detach()  # STE: hard forward, softmax backward
        if self.training:
            self._update_prototypes(z.detach(), onehot)
        mu = self.prototypes.float()
        keep = 1 - self.stable_weight
        if not self.training:  # each sample is its own batch: c_k = mu_k + (1 - alpha) a_ik (z_i - mu_k)
            dist = _squared_distances(z, mu)
            return (-self.scale * (1 - keep * a).pow(2) * dist).to(fc.dtype)
        counts = onehot.sum(0)
        batch = (a.T @ z) / counts.clamp(min=1)[:, None]
        mixed = mu + keep * (counts > 0).float()[:, None] * (batch - mu)
        logits = -self.scale * _squared_distances(z, mixed)
        # the FC gets the loss's gradient on these logits as if it had made them (the forward is unchanged)
        return (logits + (fc.float() - fc.float().detach())).to(fc.dtype)

    def fill_missing_state(self, state_dict: Dict[str, torch.Tensor], prefix: str) -> Dict[str, torch.Tensor]:
        """`state_dict` with this head's prototype buffers added (empty) where absent or of another class count.

        An FC checkpoint then loads into an HPM model: its classifier becomes the FC, the prototypes start empty.
        """
        state_dict = dict(state_dict)
        for name, value in (('prototypes', self.prototypes), ('initialized', self.initialized)):
            key = prefix + name
            if key not in state_dict or state_dict[key].shape != value.shape:
                state_dict[key] = torch.zeros_like(value)
        return state_dict
