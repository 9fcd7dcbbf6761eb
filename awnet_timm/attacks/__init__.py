from .pgd import ATTACK_LOSSES, FGSM, RANDOM_STARTS, LinfPGD, attack_loss
