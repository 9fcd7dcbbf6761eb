from .autoattack import AutoAttack
from .pgd import ATTACK_LOSSES, FGSM, RANDOM_STARTS, LinfPGD, attack_loss
from .router_attacks import ForcedRoutePGD, JointLossPGD, MixedSurrogateAttack, SignalMatchPGD, TwoPhaseAttack
