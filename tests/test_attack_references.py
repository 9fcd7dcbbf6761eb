""" Our attacks against an independent implementation: torchattacks (FGSM, PGD, TPGD) on the same model and seed.

tests/setup_tools.sh installs torchattacks (it is not a dependency of the package). Where torchattacks has the same
attack, ours must give the same adversarial examples: same start (the same RNG draws, in the same order), same
loss, same signed step and projection. AutoAttack and Square run through pyautoattack itself, so they have no
second implementation of ours to compare.
"""
import pytest
import timm
import torch
import torchattacks

from awnet_timm.attacks import FGSM, LinfPGD

from conftest import TINY, TINY_AWNET

EPS, STEP, STEPS = 8 / 255, 2 / 255, 10
# torchattacks projects as x + clamp(x_adv - x, -eps, eps), we as min(max(x_adv, x - eps), x + eps): the same
# point up to a float rounding (measured: at most 3.7e-9). A different sign in any gradient moves a pixel by 2/255.
ATOL = 1e-7


@pytest.fixture(scope='module', params=[('cifar_resnet18', TINY), ('awnet_r18', TINY_AWNET)], ids=['static', 'awnet'])
def model_and_batch(request):
    name, kwargs = request.param
    torch.manual_seed(0)
    model = timm.create_model(name, **kwargs).eval()  # an AW-Net in eval mode runs its own route (auto), as model(x)
    x = torch.rand(32, 3, 32, 32)
    with torch.no_grad():
        y = model(x).argmax(1)  # every point starts correctly classified, so every step has a gradient to follow
    return model, x, y


def _same(ours: torch.Tensor, theirs: torch.Tensor, x: torch.Tensor):
    assert (ours - x).abs().max() > STEP / 2  # the attacks moved the points
    torch.testing.assert_close(ours, theirs, rtol=0, atol=ATOL)


def test_fgsm_equals_torchattacks(model_and_batch):
    model, x, y = model_and_batch
    _same(FGSM(model, EPS).perturb(x, y), torchattacks.FGSM(model, eps=EPS)(x, y), x)


@pytest.mark.parametrize('start', ['uniform', 'none'])
def test_pgd_equals_torchattacks_from_the_same_start(model_and_batch, start):
    model, x, y = model_and_batch
    torch.manual_seed(1)
    ours = LinfPGD(model, EPS, STEP, STEPS, loss='ce', random_start=start).perturb(x, y)
    torch.manual_seed(1)
    theirs = torchattacks.PGD(model, eps=EPS, alpha=STEP, steps=STEPS, random_start=start == 'uniform')(x, y)
    _same(ours, theirs, x)


def test_trades_pgd_equals_torchattacks_tpgd(model_and_batch):
    """PGD on KL(p(x) || p(x_adv)) from x + 0.001 N(0, 1): the paper's PGD-trades and TRADES' training attack."""
    model, x, y = model_and_batch
    torch.manual_seed(2)
    ours = LinfPGD(model, EPS, STEP, STEPS, loss='kl', random_start='normal').perturb(x, y)
    torch.manual_seed(2)
    theirs = torchattacks.TPGD(model, eps=EPS, alpha=STEP, steps=STEPS)(x, y)
    _same(ours, theirs, x)
