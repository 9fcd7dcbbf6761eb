import os

os.environ.setdefault('HF_HUB_OFFLINE', '1')  # tests never reach the network; set before timm imports huggingface_hub

import pytest
import timm
import torch

import awnet_timm  # noqa: F401  registers the models

torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))

AWNET_MODELS = timm.list_models('awnet*', include_tags=True)
BASELINE_MODELS = timm.list_models('cifar_resnet*', include_tags=True)
ALL_MODELS = AWNET_MODELS + BASELINE_MODELS


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pytest_addoption(parser):
    parser.addoption('--cifar10-root', default=os.environ.get('AWNET_CIFAR10_ROOT', os.path.join(REPO, '..', 'shared', 'data', 'cifar10')),
                     help='directory of the offline CIFAR-10 copy (tests that need it skip when it is absent)')


@pytest.fixture
def cifar10_root(request):
    root = request.config.getoption('--cifar10-root')
    if not os.path.isfile(os.path.join(root, 'cifar10-test-exact.npz')):
        pytest.skip(f'offline CIFAR-10 copy not found at {root}')
    return root


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
