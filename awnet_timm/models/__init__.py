from .awnet import *
from .pretrained import PretrainedWeightsError
from .wide_resnet import *
