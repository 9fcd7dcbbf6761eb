import os

os.environ.setdefault('HF_HUB_OFFLINE', '1')  # tests never reach the network; set before timm imports huggingface_hub

import pytest
import timm
import torch

import awnet_timm  # noqa: F401  registers the models
from awnet_timm.data import write_digits_imagefolder
from awnet_timm.training import TrainConfig, train

torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))

AWNET_MODELS = timm.list_models('awnet*', include_tags=True)
BASELINE_MODELS = timm.list_models('cifar_resnet*', include_tags=True)
TEACHER_MODELS = timm.list_models('cifar_wrn*', include_tags=True)
ALL_MODELS = AWNET_MODELS + BASELINE_MODELS + TEACHER_MODELS


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pytest_addoption(parser):
    parser.addoption('--cifar10-root', default=os.environ.get('AWNET_CIFAR10_ROOT', os.path.join(REPO, '..', 'shared', 'data', 'cifar10')),
                     help='directory of the offline CIFAR-10 copy (tests that need it skip when it is absent)')
    parser.addoption('--outcome-seeds', type=int, default=1,
                     help='run every test of a training outcome (a test taking the outcome_seed fixture) with seeds '
                          '0..N-1; the thresholds in those tests hold over at least 5 seeds (default 1: seed 0 only)')


def pytest_generate_tests(metafunc):
    if 'outcome_seed' in metafunc.fixturenames:
        metafunc.parametrize('outcome_seed', range(metafunc.config.getoption('--outcome-seeds')), scope='session',
                             ids=lambda s: f'seed{s}')


@pytest.fixture
def cifar10_root(request):
    root = request.config.getoption('--cifar10-root')
    if not os.path.isfile(os.path.join(root, 'cifar10-test-exact.npz')):
        pytest.skip(f'offline CIFAR-10 copy not found at {root}')
    return root


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


TINY = dict(layers=[1, 1, 1, 1], channels=[8, 16, 32, 64])
TINY_AWNET = dict(TINY, router_layers=[1, 1, 1, 1], router_channels=[8, 8, 16, 16])


@pytest.fixture(scope='session')
def digits(tmp_path_factory):
    """scikit-learn's digits as an ImageFolder at 16x16: real images, offline, small."""
    return write_digits_imagefolder(str(tmp_path_factory.mktemp('digits')), img_size=16)


def tiny_config(digits, tmp_path, **overrides):
    """A TrainConfig for a 1-epoch run of a tiny model on a few digits (fast on CPU)."""
    base = dict(model='awnet_r18', model_kwargs=TINY_AWNET, dataset='imagefolder', data_dir=digits, val_split='val',
                train_size=128, val_size=32, batch_size=32, epochs=1, attack_steps=2, val_attack_steps=2,
                output=str(tmp_path), run_name='run', progress=False)
    return TrainConfig(**dict(base, **overrides))


@pytest.fixture(scope='session')
def teacher_run(digits, tmp_path_factory):
    """A small static teacher trained by the standard recipe (the way the project's teachers are made)."""
    out = tmp_path_factory.mktemp('teacher')
    cfg = tiny_config(digits, out, model='cifar_resnet18', model_kwargs=TINY, recipe='standard', train_size=512, epochs=2)
    return train(cfg).run_dir
