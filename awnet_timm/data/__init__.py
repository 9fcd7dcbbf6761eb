from .datasets import DATASETS, DatasetError, ImageTensors, held_out_split, load_dataset
from .device_loader import DeviceLoader, random_crop_flip
from .offline_cifar10 import OFFLINE_CIFAR10_FILES, load_offline_cifar10, to_pixels
from .digits import write_digits_imagefolder
