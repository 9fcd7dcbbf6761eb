""" Cheaper training attacks (PGD-k, N-FGSM) and the budget-friendly lr schedules, against obvious references """
import math

import pytest
import torch
import torch.nn as nn

from awnet_timm.attacks import NFGSM, LinfPGD
from awnet_timm.training import TrainConfig, train
from awnet_timm.training.schedules import create_lr_scheduler
from awnet_timm.training.trainer import evaluate
from awnet_timm.data import DeviceLoader, load_dataset

from conftest import TINY, tiny_config


def _linear(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 5)).double()
    x = torch.rand(6, 3, 4, 4, dtype=torch.float64) * 0.8 + 0.1  # away from 0 and 1: clipping stays out of the way
    y = torch.randint(0, 5, (6,))
    return model, x, y


def _ce_grad(model, x, y):
    """d CE / dx of a linear model, written out: (softmax(Wx + b) - onehot(y)) W."""
    w, b = model[1].weight, model[1].bias
    p = torch.softmax(x.flatten(1) @ w.T + b, dim=1)
    return ((p - torch.nn.functional.one_hot(y, 5).double()) @ w).view_as(x)


def test_nfgsm_is_its_definition_on_a_linear_model():
    model, x, y = _linear()
    eps, k = 8 / 255, 2.0
    torch.manual_seed(1)
    x_adv = NFGSM(model, eps=eps, noise=k).perturb(x, y)
    torch.manual_seed(1)
    eta = torch.empty_like(x).uniform_(-k * eps, k * eps)  # the same draw
    start = (x + eta).clamp(0, 1)
    expected = (start + eps * _ce_grad(model, start, y).sign()).clamp(0, 1)  # alpha = eps, no projection
    assert torch.equal(x_adv, expected)
    assert (x_adv - x).abs().max() > eps  # not projected back onto the eps-ball
    assert (x_adv - x).abs().max() <= (k + 1) * eps + 1e-12
    torch.manual_seed(1)
    assert torch.equal(NFGSM(model, eps=eps, step_size=eps / 2, noise=k).perturb(x, y),
                       (start + eps / 2 * _ce_grad(model, start, y).sign()).clamp(0, 1))


@pytest.mark.parametrize('k', [1, 3, 7])
def test_pgd_k_is_its_definition_on_a_linear_model(k):
    model, x, y = _linear(k)
    eps = 8 / 255
    step = 2.5 * eps / k  # the zoo's step for PGD-k
    torch.manual_seed(2)
    x_adv = LinfPGD(model, eps=eps, step_size=step, steps=k, random_start='uniform').perturb(x, y)
    torch.manual_seed(2)
    ref = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1)
    for _ in range(k):
        ref = ref + step * _ce_grad(model, ref, y).sign()
        ref = torch.min(torch.max(ref, x - eps), x + eps).clamp(0, 1)
    assert torch.allclose(x_adv, ref, atol=1e-12, rtol=0)
    assert (x_adv - x).abs().max() <= eps + 1e-12


@pytest.mark.parametrize('sched', ['linear', 'cosine', 'onecycle'])
def test_schedules_follow_their_formulas(sched):
    cfg = TrainConfig(sched=sched, epochs=4, lr=0.4, onecycle_peak=0.25)
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    steps, total = 10, 40
    scheduler = create_lr_scheduler(cfg, opt, steps)
    for t in range(total):
        scheduler.step_update(t)
        if sched == 'linear':
            expected = 0.4 * (1 - t / total)
        elif sched == 'cosine':
            expected = 0.2 * (1 + math.cos(math.pi * t / total))
        else:
            rise = 10
            expected = 0.4 * t / rise if t < rise else 0.4 * (1 - (t - rise) / (total - rise))
        assert math.isclose(opt.param_groups[0]['lr'], expected, abs_tol=1e-12), (t, opt.param_groups[0]['lr'], expected)


@pytest.mark.parametrize('attack, steps', [('nfgsm', 1), ('pgd', 3)])
def test_cheap_training_attacks_keep_pgd20_accuracy(digits, tmp_path, attack, steps, outcome_seed):
    """PGD-AT with 1 (N-FGSM) or 3 PGD steps on digits keeps PGD-20 accuracy well above zero (no catastrophic
    overfitting). Measured (CPU, torch 2.14.1, seeds 0-4 by --outcome-seeds 5): N-FGSM clean 0.418-0.582 / PGD-20
    0.281-0.359; PGD-3 clean 0.445-0.574 / PGD-20 0.285-0.387 (10 classes: chance is 0.1)."""
    eps = 8 / 255
    common = dict(model='cifar_resnet18', model_kwargs=TINY, train_size=1024, val_size=256, epochs=6, batch_size=64,
                  lr=0.05, sched='onecycle', eps=eps, val_attack_steps=2, run_name=f'{attack}{steps}',
                  seed=outcome_seed)
    result = train(tiny_config(digits, tmp_path, recipe='pgd_at', attack=attack, attack_steps=steps,
                               attack_step=2.5 * eps / steps, **common))
    val = load_dataset('imagefolder', digits, 'val', limit=256)
    loader = DeviceLoader(val, 128, torch.device('cpu'), train=False)
    counts = evaluate(result.model, loader, eps, 2 / 255, 20)
    robust = (counts['correct_pgd'] / counts['count']).item()
    clean = (counts['correct_clean'] / counts['count']).item()
    print(f'{attack} k={steps}: clean {clean:.3f}, PGD-20 {robust:.3f} on 256 digits (eps 8/255)')
    assert robust > 0.2 and clean > 0.3


def test_mixed_attack_route_attacks_half_the_batch_through_each_bn_branch(digits):
    """attack_route='mixed': the first half of the batch is PGD in route adv, the rest PGD in route clean (same draws)."""
    import timm
    from awnet_timm.training.recipes import TrainForward, create_recipe
    from conftest import TINY_AWNET
    torch.manual_seed(0)
    model = timm.create_model('awnet_r18', num_classes=10, **TINY_AWNET).eval()
    cfg = tiny_config(digits, '.', recipe='pgd_at', attack_route='mixed', attack_steps=2, attack_step=4 / 255,
                      attack_start='uniform')
    recipe = create_recipe(cfg, model, TrainForward(model), None)
    x, y = torch.rand(6, 3, 16, 16), torch.arange(6) % 10
    torch.manual_seed(1)
    x_adv = recipe.adversarial(x, y)
    torch.manual_seed(1)
    common = dict(eps=cfg.eps, step_size=4 / 255, steps=2, random_start='uniform', check_range=False)
    adv = LinfPGD(model, route='adv', **common).perturb(x[:3], y[:3])
    clean = LinfPGD(model, route='clean', **common).perturb(x[3:], y[3:])
    assert torch.equal(x_adv, torch.cat([adv, clean]))
    torch.manual_seed(1)
    assert not torch.equal(LinfPGD(model, route='adv', **common).perturb(x[3:], y[3:]), clean)  # the routes differ
    static = timm.create_model('cifar_resnet18', num_classes=10, **TINY)
    assert create_recipe(cfg, static, TrainForward(static), None).attack_clean is None  # no routes: one attack


def test_a_collapse_of_holdout_robustness_is_flagged_and_the_best_checkpoint_kept(digits, tmp_path, monkeypatch, capsys):
    """Catastrophic overfitting: an epoch whose holdout PGD accuracy falls below half the best's is flagged in the log
    and said, and best.safetensors keeps the earlier epoch."""
    import json
    import os
    from awnet_timm.training import trainer
    from awnet_timm.training.trainer import robust_collapsed
    assert robust_collapsed(0.4, 0.19) and not robust_collapsed(0.4, 0.21) and not robust_collapsed(0.08, 0.0)
    pgd = iter([0.40, 0.05, 0.30])  # holdout PGD accuracy of epochs 1-3 (clean 0.6 each)

    def fake_evaluate(model, loader, *args, **kwargs):
        return {'correct_clean': torch.tensor(60.), 'correct_pgd': torch.tensor(100 * next(pgd)), 'count': torch.tensor(100.)}
    monkeypatch.setattr(trainer, 'evaluate', fake_evaluate)
    result = train(tiny_config(digits, tmp_path, model='cifar_resnet18', model_kwargs=TINY, recipe='standard', epochs=3,
                               val_size=64, train_size=256))
    log = [json.loads(line) for line in open(os.path.join(result.run_dir, 'log.jsonl'))]
    assert 'robust_collapse' not in log[0] and 'robust_collapse' not in log[2]
    assert log[1]['robust_collapse'] == {'best_epoch': 1, 'best_val_pgd_acc': 0.4}
    assert result.best['epoch'] == 1 and 'catastrophic overfitting?' in capsys.readouterr().out
