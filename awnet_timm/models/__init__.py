from .awnet import *
