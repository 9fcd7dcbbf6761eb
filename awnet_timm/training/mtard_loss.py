""" MTARD's loss terms: distillation KL, the router's type loss, and the adaptive teacher weights

MTARD: Zhao et al., `Enhanced Accuracy and Robustness via Multi-Teacher Adversarial Distillation`
(ECCV 2022); AW-Net (TPAMI 2024) trains with it plus a type loss:
`L = BCE(P_type, type) + w_nat * KL(S(x_nat) || T_nat(x_nat)) + w_adv * KL(S(x_adv) || T_adv(x_adv))`.

- KL convention of MTARD's code: `p_T * (log(p_T + 1e-5) - log_softmax(z_S / tau))`, averaged over
  batch x classes; the temperature tau applies to the student. `reduction='batchmean'` sums it over the classes
  instead (the per-sample KL: 10x for CIFAR-10), which short CPU runs need (docs/design.md).
- Type loss: binary cross-entropy of P(clean) against the batch type (clean = 1), which for the
  2-way softmax type head is cross-entropy on its [adversarial, clean] logits.
- Adaptive weights: w_nat = w_adv = 0.5 at the start; each step the two KL losses are normalised by
  their values at the first step, L_hat = L / L_first, and
  `w_nat <- w_nat - eta * (w_nat - L_hat_nat / (L_hat_nat + L_hat_adv))`, `w_adv = 1 - w_nat`,
  with eta = 0.025 scaled by lr / base lr. A step's loss uses the weights before its update.
  Everything stays on the device: no host sync per step.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ['distill_kl', 'type_loss', 'AdaptiveTeacherWeights']


def distill_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, tau: float = 1.0,
               reduction: str = 'mean') -> torch.Tensor:
    """MTARD's KL(teacher || tempered student): 'mean' over batch x classes (MTARD's code), or 'batchmean' (summed
    over classes, mean over the batch: the per-sample KL, classes times larger)."""
    p_teacher = F.softmax(teacher_logits.float(), dim=1)
    log_student = F.log_softmax(student_logits.float() / tau, dim=1)
    kl = p_teacher * (torch.log(p_teacher + 1e-5) - log_student)
    if reduction == 'mean':
        return kl.mean()
    if reduction == 'batchmean':
        return kl.sum(1).mean()
    raise ValueError(f"reduction must be 'mean' or 'batchmean', got {reduction!r}")


def type_loss(type_logits: torch.Tensor, is_clean: bool) -> torch.Tensor:
    """BCE of the router's P(clean) against the batch type (clean = 1, adversarial = 0)."""
    target = torch.full((type_logits.shape[0],), int(is_clean), dtype=torch.long, device=type_logits.device)
    return F.cross_entropy(type_logits.float(), target)


class AdaptiveTeacherWeights(nn.Module):
    """ The weights of the clean and robust teachers' KL terms, adapted each step.

    A module so that its state (weight, first losses) travels with `state_dict` for exact resume.

    Args:
        eta: Base step of the weight update (MTARD: 0.025).
        init_nat: Starting weight of the clean teacher's term.
    """

    def __init__(self, eta: float = 0.025, init_nat: float = 0.5):
        super().__init__()
        self.eta = eta
        self.register_buffer('w_nat', torch.tensor(init_nat))
        self.register_buffer('first_nat', torch.tensor(float('nan')))
        self.register_buffer('first_adv', torch.tensor(float('nan')))

    @property
    def w_adv(self) -> torch.Tensor:
        return 1 - self.w_nat

    def loss(self, kl_nat: torch.Tensor, kl_adv: torch.Tensor) -> torch.Tensor:
        """w_nat * KL_nat + w_adv * KL_adv with the current weights."""
        return self.w_nat * kl_nat + self.w_adv * kl_adv

    @torch.no_grad()
    def update(self, kl_nat: torch.Tensor, kl_adv: torch.Tensor, lr_scale: float = 1.0):
        """One MTARD weight step from this step's KL values; lr_scale = current lr / base lr."""
        kl_nat, kl_adv = kl_nat.detach().float(), kl_adv.detach().float()
        self.first_nat.copy_(torch.where(torch.isnan(self.first_nat), kl_nat, self.first_nat))
        self.first_adv.copy_(torch.where(torch.isnan(self.first_adv), kl_adv, self.first_adv))
        l_nat, l_adv = kl_nat / self.first_nat, kl_adv / self.first_adv
        self.w_nat.sub_(self.eta * lr_scale * (self.w_nat - l_nat / (l_nat + l_adv)))
