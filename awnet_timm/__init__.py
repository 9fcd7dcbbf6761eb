"""awnet-timm: AW-Net (Adversarial Weight-Varied Network, TPAMI 2024) as timm models.

`import awnet_timm` registers `awnet_r18`, `awnet_r34`, `cifar_resnet18` and `cifar_resnet34` with
timm; then `timm.create_model('awnet_r18')` builds one.
"""
from .layers import AdversarialRouter, MixBatchNorm2d, ModulatedConv2d, RouterOutput
from .models import AWNet, ROUTES, use_route

__version__ = '0.1.0'
