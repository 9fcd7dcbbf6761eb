from .aw_block import AWBasicBlock, AWStage, ConvNormAct
from .mix_bn import MIX_BRANCHES, MixBatchNorm2d
from .modulated_conv import ModulatedConv2d
from .router import AdversarialRouter, RouterOutput
