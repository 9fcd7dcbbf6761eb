from .mtard_loss import AdaptiveTeacherWeights, distill_kl, type_loss
