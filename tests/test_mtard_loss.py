"""MTARD's loss terms against hand computations."""
import math

import pytest
import timm
import torch

from awnet_timm.training import AdaptiveTeacherWeights, distill_kl, type_loss


def test_adaptive_weights_follow_the_update_rule_by_hand():
    weights = AdaptiveTeacherWeights(eta=0.025)
    steps = [((2.0, 4.0), 1.0), ((1.0, 3.0), 1.0), ((0.5, 2.0), 0.1)]  # ((KL_nat, KL_adv), lr / base lr)
    w = 0.5
    first = steps[0][0]
    for (nat, adv), lr_scale in steps:
        assert math.isclose(weights.loss(torch.tensor(nat), torch.tensor(adv)).item(), w * nat + (1 - w) * adv, rel_tol=1e-6)
        l_nat, l_adv = nat / first[0], adv / first[1]
        w = w - 0.025 * lr_scale * (w - l_nat / (l_nat + l_adv))
        weights.update(torch.tensor(nat), torch.tensor(adv), lr_scale)
        assert math.isclose(weights.w_nat.item(), w, rel_tol=1e-6)
        assert math.isclose(weights.w_adv.item(), 1 - w, rel_tol=1e-6)
    # step 2 by hand: L_hat = (0.5, 0.75) -> target 0.4; w = 0.5 - 0.025 * (0.5 - 0.5) = 0.5, then
    # 0.5 - 0.025 * (0.5 - 0.4) = 0.4975; step 3: L_hat = (0.25, 0.5) -> 1/3, w -= 0.0025 * (0.4975 - 1/3)
    assert math.isclose(weights.w_nat.item(), 0.4975 - 0.0025 * (0.4975 - 1 / 3), rel_tol=1e-6)


def test_adaptive_weights_resume_from_state_dict():
    a = AdaptiveTeacherWeights()
    a.update(torch.tensor(2.0), torch.tensor(1.0))
    a.update(torch.tensor(1.0), torch.tensor(1.0))
    b = AdaptiveTeacherWeights()
    b.load_state_dict(a.state_dict())
    a.update(torch.tensor(0.7), torch.tensor(0.9))
    b.update(torch.tensor(0.7), torch.tensor(0.9))
    assert torch.equal(a.w_nat, b.w_nat) and torch.equal(a.first_nat, torch.tensor(2.0))


def test_distill_kl_matches_mtard_convention():
    s, t = torch.randn(3, 4), torch.randn(3, 4)
    for tau in (1.0, 5.0):
        ref = 0.0
        for i in range(3):
            p = torch.softmax(t[i], 0)
            q = torch.log_softmax(s[i] / tau, 0)
            ref += sum(p[j] * (math.log(p[j] + 1e-5) - q[j]) for j in range(4))
        assert math.isclose(distill_kl(s, t, tau).item(), float(ref) / 12, rel_tol=1e-5)
        # the per-sample KL: summed over the 4 classes, averaged over the 3 samples
        assert math.isclose(distill_kl(s, t, tau, 'batchmean').item(), float(ref) / 3, rel_tol=1e-5)
    with pytest.raises(ValueError, match="'mean' or 'batchmean'"):
        distill_kl(s, t, 1.0, 'sum')


def test_mtard_recipe_uses_the_configured_kl_reduction(digits, teacher_run):
    from awnet_timm.training import create_recipe
    from awnet_timm.training.config import ConfigError
    from awnet_timm.training.trainer import TrainForward
    from awnet_timm.training.teachers import load_teacher
    from conftest import TINY, tiny_config
    kl = {}
    for reduction in ('mean', 'batchmean'):
        torch.manual_seed(0)
        cfg = tiny_config(digits, '.', recipe='mtard', model='cifar_resnet18', model_kwargs=TINY, kl_reduction=reduction,
                          teacher_nat='cifar_resnet18', teacher_nat_checkpoint=teacher_run,
                          teacher_adv='cifar_resnet18', teacher_adv_checkpoint=teacher_run)
        model = timm.create_model('cifar_resnet18', num_classes=10, **TINY).train()
        teachers = [load_teacher('cifar_resnet18', teacher_run, 10) for _ in range(2)]
        recipe = create_recipe(cfg, model, TrainForward(model), teachers)
        x, y = torch.rand(8, 3, 16, 16), torch.arange(8)
        kl[reduction] = recipe.loss(x, y)[1]['kl_nat'].item()
    assert math.isclose(kl['batchmean'], 10 * kl['mean'], rel_tol=1e-4)  # 10 classes
    with pytest.raises(ConfigError, match="unknown kl_reduction 'sum'"):
        tiny_config(digits, '.', kl_reduction='sum').validate()


def test_type_loss_is_bce_of_p_clean():
    logits = torch.randn(5, 2)
    p_clean = torch.softmax(logits, 1)[:, 1]
    torch.testing.assert_close(type_loss(logits, True), -p_clean.log().mean())
    torch.testing.assert_close(type_loss(logits, False), -(1 - p_clean).log().mean())
