"""awnet-timm: AW-Net (Adversarial Weight-Varied Network, TPAMI 2024) as timm models.

`import awnet_timm` registers with timm AW-Net (`awnet_r18`, `awnet_r34`), the static baselines
(`cifar_resnet18`, `cifar_resnet34`) and MTARD's teacher architectures (`cifar_resnet56`,
`cifar_wrn34_10`, `cifar_wrn28_10`); then `timm.create_model('awnet_r18')` builds one.
"""
from .layers import AdversarialRouter, MixBatchNorm2d, ModulatedConv2d, RouterOutput
from .models import AWNet, ROUTES, use_route

__version__ = '0.1.0'
