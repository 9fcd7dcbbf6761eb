from .offline_cifar10 import OFFLINE_CIFAR10_FILES, load_offline_cifar10, to_pixels
