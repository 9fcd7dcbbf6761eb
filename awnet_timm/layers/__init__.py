from .checkpoint import checkpoint_module
from .aw_block import AWBasicBlock, AWStage, ConvNormAct
from .hpm_head import HPM_MODES, HPMHead
from .mix_bn import MIX_BRANCHES, MixBatchNorm2d
from .modulated_conv import ModulatedConv2d
from .router import AdversarialRouter, RouterOutput
from .pixel_input import INPUT_CHECKS, PixelRangeWarning, check_pixel_batch, check_pixel_values, input_check_mode
