"""FGSM and L-inf PGD: analytic optimum on a linear model, accuracy drop on a trained model, bounds."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from awnet_timm import AWNet
from awnet_timm.attacks import FGSM, LinfPGD, attack_loss


def _linear_model():
    torch.manual_seed(1)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 2))


@pytest.mark.parametrize('loss', ['ce', 'cw'])
@pytest.mark.parametrize('attack', ['pgd', 'fgsm'])
def test_linf_attack_reaches_the_analytic_worst_case_of_a_linear_model(attack, loss):
    model = _linear_model()
    x = 0.3 + 0.4 * torch.rand(6, 3, 4, 4)  # eps-ball stays inside [0, 1]
    y = torch.randint(0, 2, (6,))
    eps = 0.05
    w = model[1].weight
    direction = (w[1 - y] - w[y]).reshape(6, 3, 4, 4)  # gradient of the margin z_other - z_y
    best = (x + eps * direction.sign()).clamp(0, 1)
    adv = (LinfPGD(model, eps, step_size=eps / 4, steps=10, loss=loss) if attack == 'pgd' else FGSM(model, eps, loss=loss)).perturb(x, y)
    torch.testing.assert_close(adv, best)
    with torch.no_grad():
        margin = lambda z: z.gather(1, (1 - y)[:, None]) - z.gather(1, y[:, None])  # noqa: E731
        analytic = margin(model(x)).squeeze(1) + eps * direction.abs().flatten(1).sum(1)
        torch.testing.assert_close(margin(model(adv)).squeeze(1), analytic, rtol=1e-5, atol=1e-5)


def _templates():
    g = torch.Generator().manual_seed(3)
    return torch.randn(4, 3, 8, 8, generator=g).sign()


def _data(n, seed):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    x = (0.5 + 0.08 * _templates()[y] + 0.05 * torch.randn(n, 3, 8, 8, generator=g)).clamp(0, 1)
    return x, y


@pytest.fixture(scope='module')
def trained_model(outcome_seed):
    torch.manual_seed(outcome_seed)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(64, 4))
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    x, y = _data(512, seed=0)
    for _ in range(150):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


def _acc(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


@pytest.mark.parametrize('make', [
    lambda m: FGSM(m, eps=0.1),
    lambda m: LinfPGD(m, eps=0.1, step_size=0.02, steps=10, loss='ce'),
    lambda m: LinfPGD(m, eps=0.1, step_size=0.02, steps=10, loss='cw'),
    lambda m: LinfPGD(m, eps=0.1, step_size=0.02, steps=10, loss='kl', random_start='normal'),
], ids=['fgsm', 'pgd-ce', 'pgd-cw', 'pgd-kl'])
def test_attacks_lower_the_accuracy_of_a_trained_model(trained_model, make):
    x, y = _data(256, seed=1)
    clean = _acc(trained_model, x, y)
    assert clean > 0.95
    adv = make(trained_model).perturb(x, y)
    assert _acc(trained_model, adv, y) < clean - 0.5


def test_more_pgd_steps_do_not_help_the_model(trained_model):
    x, y = _data(256, seed=2)
    torch.manual_seed(0)
    weak = _acc(trained_model, LinfPGD(trained_model, 0.05, 0.05, steps=1, random_start='none').perturb(x, y), y)
    strong = _acc(trained_model, LinfPGD(trained_model, 0.05, 0.0125, steps=20, random_start='none').perturb(x, y), y)
    assert strong <= weak


@pytest.mark.parametrize('loss', ['ce', 'kl', 'cw'])
@pytest.mark.parametrize('random_start', ['uniform', 'normal', 'none'])
def test_adversarial_examples_stay_within_eps_and_pixel_range(trained_model, loss, random_start):
    x, y = _data(32, seed=4)
    x[:4] = 0.  # corners of the pixel range
    x[4:8] = 1.
    adv = LinfPGD(trained_model, eps=8 / 255, step_size=3 / 255, steps=5, loss=loss, random_start=random_start).perturb(x, y)
    assert (adv - x).abs().max() <= 8 / 255 + 1e-6
    assert adv.min() >= 0 and adv.max() <= 1


def test_attack_restores_mode_and_leaves_parameters_without_gradients(trained_model):
    trained_model.zero_grad(set_to_none=True)
    trained_model.train()
    trained_model[0].eval()  # a frozen part stays in eval mode
    LinfPGD(trained_model, steps=2).perturb(*_data(8, seed=5))
    assert [m.training for m in trained_model] == [False] + [True] * 4
    assert all(p.grad is None for p in trained_model.parameters())
    trained_model.eval()


def test_attack_losses_match_their_definitions():
    z = torch.randn(5, 4)
    y = torch.tensor([0, 1, 2, 3, 0])
    p = torch.softmax(torch.randn(5, 4), 1)
    torch.testing.assert_close(attack_loss(z, y, 'kl', p), (p * (p.log() - torch.log_softmax(z, 1))).sum(1))
    cw = torch.stack([max(z[i, j] for j in range(4) if j != y[i]) - z[i, y[i]] for i in range(5)])
    torch.testing.assert_close(attack_loss(z, y, 'cw'), cw)
    torch.testing.assert_close(attack_loss(z, y, 'ce'), F.cross_entropy(z, y, reduction='none'))


def test_awnet_is_attacked_in_the_chosen_route():
    model = AWNet(layers=(1, 1), channels=(8, 16), router_layers=(1, 1), router_channels=(8, 8)).eval()
    x, y = torch.rand(3, 3, 16, 16), torch.tensor([0, 1, 2])
    seen = []
    model.stem.bn.register_forward_pre_hook(lambda m, args: seen.append(args[2]))  # MixBN's branch argument
    LinfPGD(model, steps=2, route='adv').perturb(x, y)
    assert seen and set(seen) == {'adv'} and model.route == 'auto'
    seen.clear()
    LinfPGD(model, steps=2).perturb(x, y)
    assert set(seen) == {'mix'}


def test_bad_attack_arguments_fail_clearly(trained_model):
    with pytest.raises(ValueError, match="unknown attack loss 'l2'"):
        LinfPGD(trained_model, loss='l2')
    with pytest.raises(ValueError, match="unknown random_start 'zeros'"):
        LinfPGD(trained_model, random_start='zeros')
    with pytest.raises(ValueError, match='pixel units'):
        LinfPGD(trained_model, eps=8)
    with pytest.raises(TypeError, match='needs an AWNet'):
        LinfPGD(trained_model, route='adv')
    with pytest.raises(ValueError, match=r'pixels in \[0, 1\]'):
        LinfPGD(trained_model).perturb(torch.randn(2, 3, 8, 8) * 3, torch.zeros(2, dtype=torch.long))
    LinfPGD(trained_model, steps=1, check_range=False).perturb(torch.full((2, 3, 8, 8), 1.5), torch.zeros(2, dtype=torch.long))


class WindowModel(nn.Module):
    """Forward: class 1 wins only while the mean pixel is in (0.525, 0.555). Backward: the CE loss for
    class 0 always grows with the mean pixel, so PGD walks the mean up, through the window and out of it."""

    def forward(self, x):
        t = x.mean((1, 2, 3))
        g = 10 * torch.stack([-t, t], 1)
        inside = ((t > 0.525) & (t < 0.555)).float()
        f = torch.stack([torch.zeros_like(t), 2 * inside - 1], 1)
        return g + (f - g).detach()  # the value of f, the gradient of g


def test_best_iterate_keeps_a_success_that_the_last_iterate_lost():
    model = WindowModel()
    x, y = torch.full((2, 3, 4, 4), 0.5), torch.zeros(2, dtype=torch.long)
    make = lambda keep: LinfPGD(model, eps=0.1, step_size=0.01, steps=10, random_start='none', keep=keep)  # noqa: E731
    last, best = make('last').perturb(x, y), make('best').perturb(x, y)
    with torch.no_grad():
        assert (model(x).argmax(1) == y).all()  # clean: correct
        assert (model(last).argmax(1) == y).all()  # the last iterate (mean 0.6) is outside the window
        assert (model(best).argmax(1) != y).all()  # an earlier one fooled the model: it is kept
    torch.testing.assert_close(best.mean((1, 2, 3)), torch.full((2,), 0.53))  # the first fooling iterate (step 3)
    assert LinfPGD(model).keep == 'last'  # training attacks are unchanged
    with pytest.raises(ValueError, match="unknown keep 'first'"):
        LinfPGD(model, keep='first')


def test_best_iterate_is_judged_as_the_evaluator_scores_in_route_auto():
    model = AWNet(layers=(1, 1), channels=(8, 16), router_layers=(1, 1), router_channels=(8, 8)).eval()
    x, y = torch.rand(3, 3, 16, 16), torch.tensor([0, 1, 2])
    calls = []
    original = model.forward_with_router
    model.forward_with_router = lambda inp, route=None, router_out=None: calls.append(route) or original(inp, route, router_out)
    LinfPGD(model, eps=2 / 255, step_size=1 / 255, steps=2, route='adv', keep='best').perturb(x, y)
    assert calls.count('auto') == 3  # the start and each of 2 iterates, in route auto although attacked in route adv


@pytest.mark.parametrize('bad', [float('nan'), float('inf')])
def test_non_finite_pixels_are_refused(trained_model, bad):
    x = torch.rand(2, 3, 8, 8)
    x[1, 0, 0, 0] = bad
    with pytest.raises(ValueError, match=r'pixels in \[0, 1\], got non-finite values'):
        LinfPGD(trained_model).perturb(x, torch.zeros(2, dtype=torch.long))
