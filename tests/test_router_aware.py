""" Router-aware adversarial training: the attack against its definition, the recipe's routes and statistics, errors """
import pytest
import timm
import torch
import torch.nn.functional as F

from awnet_timm import RouterOutput
from awnet_timm.attacks import RouterAwarePGD
from awnet_timm.layers import MixBatchNorm2d
from awnet_timm.training import ConfigError
from awnet_timm.training.recipes import TrainForward, create_recipe
from conftest import TINY, TINY_AWNET, tiny_config


def _awnet(**kwargs):
    model = timm.create_model('awnet_r18', num_classes=10, **dict(TINY_AWNET, signal_init='default', **kwargs))
    model.train()
    with torch.no_grad():  # Clean and Adv BN statistics apart, as after training
        model.forward_features(torch.rand(8, 3, 16, 16) * 0.5, route='clean')
        model.forward_features(torch.rand(8, 3, 16, 16), route='adv')
    return model.eval()


def _reference(model, x, y, eps, step_ratio, steps, weight_max, scale):
    """RouterAwarePGD written out: the same draws, the router's outputs detached by hand for the classifier term."""
    low, high = scale
    eps_i = (eps * (low + (high - low) * torch.rand(len(x), 1, 1, 1))).clamp(max=1.)
    weight = weight_max * torch.rand(len(x))
    x_adv = (x + (2 * torch.rand_like(x) - 1) * eps_i).clamp(0, 1)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        r = model.forward_router(x_adv)
        held = RouterOutput(r.type_logits.detach(), r.p_clean.detach(), [o.detach() for o in r.omega])
        logits, _ = model.forward_with_router(x_adv, route='auto', router_out=held)
        loss = F.cross_entropy(logits, y, reduction='none') + weight * F.log_softmax(r.type_logits, 1)[:, 1]
        grad, = torch.autograd.grad(loss.sum(), x_adv)
        x_adv = x_adv.detach() + eps_i * step_ratio * grad.sign()
        x_adv = torch.min(torch.max(x_adv, x - eps_i), x + eps_i).clamp(0, 1)
    return x_adv, eps_i


def test_router_aware_pgd_is_its_definition():
    model = _awnet()
    x, y = torch.rand(6, 3, 16, 16), torch.arange(6) % 10
    eps = 8 / 255
    torch.manual_seed(3)
    x_adv = RouterAwarePGD(model, eps=eps, step_size=eps / 2, steps=3).perturb(x, y)
    torch.manual_seed(3)
    expected, eps_i = _reference(model, x, y, eps, 0.5, 3, 0.4, (0.4, 1.1))
    torch.testing.assert_close(x_adv, expected, rtol=0, atol=1e-6)
    reach = (x_adv - x).abs().flatten(1).amax(1)
    assert (reach <= eps_i.flatten() + 1e-6).all() and (eps_i >= 0.4 * eps).all() and (eps_i <= 1.1 * eps).all()
    assert reach.max() - reach.min() > 0.1 * eps  # each sample its own radius
    torch.manual_seed(3)  # the P(clean) term changes the examples
    assert not torch.equal(RouterAwarePGD(model, eps=eps, step_size=eps / 2, steps=3, weight_max=0.).perturb(x, y), x_adv)


def test_router_aware_pgd_refuses_models_without_a_router_type_head_and_bad_numbers():
    with pytest.raises(TypeError, match='attacks the router of an AW-Net'):
        RouterAwarePGD(timm.create_model('cifar_resnet18', num_classes=10, **TINY))
    with pytest.raises(TypeError, match='no router type head'):
        RouterAwarePGD(timm.create_model('awnet_r18', num_classes=10, type_head=False, **TINY_AWNET))
    with pytest.raises(ValueError, match='eps_scale'):
        RouterAwarePGD(_awnet(), eps_scale=(1.1, 0.4))


def test_the_router_route_in_training_keeps_the_clean_statistics_and_moves_the_adv_ones():
    model = _awnet().train()
    mixbns = [m for m in model.modules() if isinstance(m, MixBatchNorm2d)]
    clean = [m.clean.running_mean.clone() for m in mixbns]
    adv = [m.adv.running_mean.clone() for m in mixbns]
    out = TrainForward(model)([(torch.rand(4, 3, 16, 16), 'adv'), (torch.rand(3, 3, 16, 16), 'auto')])
    assert [o[0].shape for o in out] == [(4, 10), (3, 10)]
    assert all(torch.equal(m.clean.running_mean, c) for m, c in zip(mixbns, clean))
    assert all(not torch.equal(m.adv.running_mean, a) for m, a in zip(mixbns, adv))
    assert all(m.clean.training and m.adv.training for m in mixbns)  # modes restored
    TrainForward(model)([(torch.rand(4, 3, 16, 16), 'clean')])
    assert all(not torch.equal(m.clean.running_mean, c) for m, c in zip(mixbns, clean))


@pytest.mark.parametrize('recipe', ['mtard', 'pgd_at'])
def test_router_aware_rows_are_labelled_adversarial_and_train_the_router_through_its_blend(digits, recipe):
    model = _awnet(modulate=False).train()  # P(clean) is the router's only way into the logits
    cfg = tiny_config(digits, '.', recipe=recipe, router_aware=0.5, type_loss_weight=0.0, attack_steps=2,
                      attack_step=4 / 255, attack_start='uniform', teacher_nat='t', teacher_adv='t')
    teachers = [timm.create_model('cifar_resnet18', num_classes=10, **TINY).eval() for _ in range(2)]
    r = create_recipe(cfg, model, TrainForward(model), teachers if recipe == 'mtard' else None)
    x, y = torch.rand(8, 3, 16, 16), torch.arange(8) % 10
    seen = []
    original = r.forward.forward
    r.forward.forward = lambda inputs: seen.append([(len(x), route) for x, route in inputs]) or original(inputs)
    loss, metrics = r.loss(x, y)
    assert seen == [[(8, 'clean'), (8, 'adv'), (4, 'auto')]]
    assert 'type_acc_ra' in metrics
    loss.backward()
    trunk = sum(p.grad.abs().sum() for p in model.router.stages.parameters() if p.grad is not None)
    assert trunk > 0  # the task loss on the router's route reaches the router although the type loss weighs 0
    paper = create_recipe(tiny_config(digits, '.', recipe=recipe, teacher_nat='t', teacher_adv='t'), model,
                          TrainForward(model), teachers if recipe == 'mtard' else None)
    assert paper.attack_router is None and paper.router_aware(x, y) is None


def test_router_aware_configs_that_cannot_work_fail_clearly(digits):
    for change, match in ((dict(router_aware=1.5), r'router_aware is a share of each batch, in \[0, 1\]'),
                          (dict(router_aware=0.5, recipe='trades'), "mtard and pgd_at, not 'trades'")):
        with pytest.raises(ConfigError, match=match):
            tiny_config(digits, '.', **change).validate()
    static = timm.create_model('cifar_resnet18', num_classes=10, **TINY)
    with pytest.raises(ConfigError, match='router_aware trains the router of an AW-Net'):
        create_recipe(tiny_config(digits, '.', recipe='pgd_at', router_aware=0.5), static, TrainForward(static))
