from .autoattack import AutoAttack
from .nfgsm import NFGSM
from .pgd import ATTACK_LOSSES, FGSM, KEEP, RANDOM_STARTS, LinfPGD, attack_loss, check_pixels, scored_logits
from .surrogates import HeadModeSurrogate, has_hpm_head, hpm_surrogates
from .router_attacks import ForcedRoutePGD, JointLossPGD, MixedSurrogateAttack, SignalMatchPGD, TwoPhaseAttack
from .router_aware import RouterAwarePGD
