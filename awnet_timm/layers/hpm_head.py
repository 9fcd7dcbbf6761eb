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
- Eval mode is the training head at an unbounded batch, as BatchNorm's running statistics are: a class's
  batch-level prototype is then its expected value, the mean feature of the class as the FC predicts it,
  which the dataset-level prototype mu_k tracks (its EMA). So `c_k = mu_k` and `logits_ik = -scale ||z_i - mu_k||^2`:
  batch-independent, and equal to the training formula whenever the batch's class means are the prototypes
  (a test holds them equal at momentum 0). The FC and the STE are training devices: the evaluated head is the
  l2 head, differentiable, so white-box attacks see its true gradient. (A sample that formed its own batch,
  our first rule, put itself in its FC class's prototype and the head gave the FC's prediction.)
- `mode='fc'` gives the FC logits: the differentiable surrogate the Mixed Surrogate Attack transfers from;
  'hpm' is the head itself.
- Defaults: alpha (`stable_weight`) 0.5, EMA momentum m 0.9 (BatchNorm's running-statistics rate),
  scale 0.1 (with scale 1 the l2 logits' gradients, about 10x an FC's, wrecked the backbone in a digits
  fine-tune at lr 0.01; at 0.1 and 0.02 it kept its accuracy).
"""
from typing import Dict

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ['HPMHead', 'HPM_MODES']

HPM_MODES = ('hpm', 'fc')


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
        """'hpm' (the head) or 'fc' (its FC logits, a surrogate for transfer attacks)."""
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
        mu = self.prototypes.float()
        if not self.training:  # the batch-level prototypes' expected value is mu: c_k = mu_k
            return (-self.scale * _squared_distances(z, mu)).to(fc.dtype)
        p = F.softmax(fc.float(), dim=1)
        onehot = F.one_hot(fc.argmax(1), self.out_features).float()
        a = onehot + p - p.detach()  # STE: hard forward, softmax backward
        self._update_prototypes(z.detach(), onehot)
        mu = self.prototypes.float()
        counts = onehot.sum(0)
        batch = (a.T @ z) / counts.clamp(min=1)[:, None]
        mixed = mu + (1 - self.stable_weight) * (counts > 0).float()[:, None] * (batch - mu)
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
