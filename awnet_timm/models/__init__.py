from .awnet import *
from .wide_resnet import *
