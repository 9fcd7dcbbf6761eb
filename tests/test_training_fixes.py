""" Issue 18: resume to more epochs, label smoothing per recipe, warm-up before the schedule, the training
attack's BN mode, --head on fine-tunes and on other models, and stage lists of different lengths. """
import copy
import dataclasses
import json
import math
import os

import pytest
import timm
import torch
import torch.nn as nn
from safetensors.torch import load_file

from awnet_timm.attacks import NFGSM
from awnet_timm.cli import main
from awnet_timm.layers import HPMHead
from awnet_timm.training import ConfigError, TrainConfig, TrainForward, create_recipe, load_teacher, train
from awnet_timm.training.checkpoint import load_train_state
from awnet_timm.training.schedules import create_lr_scheduler
from conftest import TINY, TINY_AWNET, tiny_config

SCHEDULES = ('multistep', 'cosine', 'linear', 'onecycle')


def _lrs(cfg: TrainConfig, steps_per_epoch: int):
    """The lr of every step, as the trainer drives the scheduler (step(epoch), then step_update before each step)."""
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    scheduler = create_lr_scheduler(cfg, opt, steps_per_epoch)
    lrs = []
    for epoch in range(cfg.epochs):
        scheduler.step(epoch)
        for step in range(steps_per_epoch):
            scheduler.step_update(epoch * steps_per_epoch + step)
            lrs.append(opt.param_groups[0]['lr'])
    return lrs


def _log(run_dir):
    return [json.loads(line) for line in open(os.path.join(run_dir, 'log.jsonl'))]


# 1. resuming with more epochs --------------------------------------------------------------------------------
@pytest.mark.parametrize('sched', SCHEDULES)
def test_resume_with_more_epochs_follows_the_schedule_of_the_new_length(digits, tmp_path, sched):
    # multistep's milestones are absolute epochs (more epochs alone change no lr): here the milestone ahead of the
    # run moves with it (2 -> 3), as a plan shaped for 3 epochs would put it
    moved = (3,) if sched == 'multistep' else (2,)
    common = dict(model='cifar_resnet18', model_kwargs=TINY, recipe='standard', val_size=0, sched=sched)
    first = train(tiny_config(digits, tmp_path, epochs=1, decay_milestones=(2,), **common))
    longer = tiny_config(digits, tmp_path, epochs=3, decay_milestones=moved, **common)
    resumed = train(dataclasses.replace(longer, resume=first.run_dir))
    assert resumed.finished and resumed.epochs_done == 3
    steps = 128 // 32
    expected = _lrs(longer, steps)  # the 3-epoch schedule, from its step 4 on
    log = _log(resumed.run_dir)
    assert [r['epoch'] for r in log] == [1, 2, 3]
    for r in log[1:]:
        assert math.isclose(r['lr'], expected[r['epoch'] * steps - 1], rel_tol=1e-12), (sched, r['lr'], expected)
    assert log[1]['lr'] > 0.009  # not the finished 1-epoch schedule's 0
    assert log[1]['schedule_was'] == {'epochs': 1, 'decay_milestones': [2]} and 'schedule_was' not in log[2]
    meta = load_train_state(os.path.join(resumed.run_dir, 'last.state.safetensors'))[3]
    assert meta['schedule'] == {'epochs': 3, 'decay_milestones': list(moved)}
    assert meta['schedule_changes'] == [{'epoch': 1, 'from': {'epochs': 1, 'decay_milestones': [2]},
                                         'to': {'epochs': 3, 'decay_milestones': list(moved)}}]
    assert json.load(open(os.path.join(resumed.run_dir, 'config.json')))['epochs'] == 3


def test_resume_refuses_to_move_a_milestone_the_run_has_passed(digits, tmp_path):
    cfg = tiny_config(digits, tmp_path, model='cifar_resnet18', model_kwargs=TINY, recipe='standard', val_size=0,
                      epochs=2, decay_milestones=(2,))
    run = train(cfg).run_dir
    with pytest.raises(ConfigError, match=r'decay_milestones: saved \(2,\), given \(3,\).*after the 2 epoch\(s\) done'):
        train(dataclasses.replace(cfg, resume=run, epochs=4, decay_milestones=(3,)))


# 2. label smoothing ------------------------------------------------------------------------------------------
def _loss(cfg, model, x, y, smoothing):
    torch.manual_seed(1)
    model = copy.deepcopy(model)
    recipe = create_recipe(dataclasses.replace(cfg, label_smoothing=smoothing), model, TrainForward(model))
    return recipe.loss(x, y)


@pytest.mark.parametrize('recipe, model_name, kwargs, other', [
    ('trades', 'awnet_r18', TINY_AWNET, 'loss_robust'),
    ('trades', 'cifar_resnet18', TINY, 'loss_robust'),
    ('arat', 'cifar_resnet18', dict(TINY, mix_bn=True, type_head=False), 'loss_invariance'),
])
def test_label_smoothing_acts_on_the_cross_entropy_of_trades_and_arat(digits, recipe, model_name, kwargs, other):
    cfg = tiny_config(digits, '.', recipe=recipe, model=model_name, model_kwargs=kwargs, arat_auto_balance=False)
    model = timm.create_model(model_name, num_classes=10, **kwargs).train()
    x, y = torch.rand(16, 3, 16, 16), torch.arange(16) % 10
    plain, plain_metrics = _loss(cfg, model, x, y, 0.0)
    smooth, smooth_metrics = _loss(cfg, model, x, y, 0.1)
    assert smooth.item() != pytest.approx(plain.item(), abs=1e-4)
    assert torch.equal(plain_metrics[other], smooth_metrics[other])  # the KL / invariance term is unchanged


def test_label_smoothing_is_refused_by_mtard():
    cfg = TrainConfig(recipe='mtard', teacher_nat='cifar_resnet18', teacher_adv='cifar_resnet18', data_dir='d',
                      label_smoothing=0.1)
    with pytest.raises(ConfigError, match='label_smoothing 0.1 has nothing to act on in recipe mtard'):
        cfg.validate()


# 3. warm-up before the schedule ------------------------------------------------------------------------------
@pytest.mark.parametrize('sched', ('multistep', 'cosine', 'linear'))
def test_warmup_comes_before_the_schedule_and_reaches_the_peak(sched):
    cfg = TrainConfig(sched=sched, epochs=3, warmup_epochs=1, lr=0.1, decay_milestones=(3,))
    steps = 10
    lrs = _lrs(cfg, steps)
    assert max(lrs) == pytest.approx(0.1, rel=1e-12) and lrs[steps] == pytest.approx(0.1, rel=1e-12)  # first step after it
    assert all(a <= b for a, b in zip(lrs[:steps], lrs[1:steps + 1]))  # rising during the warm-up
    assert all(a >= b for a, b in zip(lrs[steps:], lrs[steps + 1:]))  # then the schedule, from its start
    if sched == 'multistep':  # per epoch: lr / 100, then lr, then lr / 10 from the (absolute) milestone 3
        assert lrs[::steps] == pytest.approx([0.001, 0.1, 0.01])
    else:  # cosine and linear decay over the 20 steps after the warm-up: half-way at step 10 of them
        assert lrs[steps + 10] == pytest.approx(0.05, rel=1e-9)


def test_onecycle_peaks_at_lr_and_schedules_that_cannot_warm_up_are_refused():
    lrs = _lrs(TrainConfig(sched='onecycle', epochs=4, onecycle_peak=0.25), 10)
    assert max(lrs) == pytest.approx(0.1, rel=1e-12) and lrs.index(max(lrs)) == 10
    with pytest.raises(ConfigError, match="'onecycle' rises over its own warm-up"):
        TrainConfig(sched='onecycle', warmup_epochs=1, recipe='standard', data_dir='d').validate()
    with pytest.raises(ConfigError, match=r'decay_milestones \(2, 5\) decay the lr by epoch 2'):
        TrainConfig(sched='multistep', warmup_epochs=1, decay_milestones=(2, 5), recipe='standard', data_dir='d').validate()
    with pytest.raises(ConfigError, match='warmup_epochs 3 leaves no epoch of the schedule out of 3'):
        TrainConfig(sched='cosine', warmup_epochs=3, epochs=3, recipe='standard', data_dir='d').validate()


# 4. the training attack's BN mode ----------------------------------------------------------------------------
@pytest.mark.parametrize('attack_bn', ('eval', 'train'))
def test_training_attack_runs_in_the_asked_bn_mode(digits, attack_bn):
    cfg = tiny_config(digits, '.', recipe='pgd_at', model='cifar_resnet18', model_kwargs=TINY, attack='nfgsm',
                      attack_bn=attack_bn)
    model = timm.create_model('cifar_resnet18', num_classes=10, **TINY).train()
    model.stages[0].eval()  # a frozen part stays as it is
    recipe = create_recipe(cfg, model, TrainForward(model))
    x, y = torch.rand(16, 3, 16, 16), torch.arange(16) % 10
    reference = copy.deepcopy(model)
    before = model.stem.bn.running_mean.clone()
    torch.manual_seed(3)
    x_adv = recipe.attack.perturb(x, y)
    assert model.training and not model.stages[0].training  # modes restored
    assert torch.equal(model.stem.bn.running_mean, before) == (attack_bn == 'eval')
    torch.manual_seed(3)
    if attack_bn == 'eval':
        assert torch.equal(x_adv, NFGSM(reference, eps=cfg.eps, check_range=False).perturb(x, y))
    else:  # de Jorge et al.'s step, with the model in train mode (batch statistics)
        eta = (x + torch.empty_like(x).uniform_(-2 * cfg.eps, 2 * cfg.eps)).clamp(0, 1).requires_grad_(True)
        grad, = torch.autograd.grad(nn.functional.cross_entropy(reference(eta), y, reduction='sum'), eta)
        assert torch.equal(x_adv, (eta.detach() + cfg.eps * grad.sign()).clamp(0, 1))
    with pytest.raises(ConfigError, match="unknown attack_bn 'batch'"):
        dataclasses.replace(cfg, attack_bn='batch').validate()


# 5, 6. --head ------------------------------------------------------------------------------------------------
def test_finetune_with_head_fc_of_an_hpm_run_builds_and_saves_an_fc_head(digits, tmp_path):
    common = dict(model='cifar_resnet18', model_kwargs=TINY, recipe='standard', val_size=0)
    src = train(tiny_config(digits, tmp_path / 'src', head='hpm', **common)).run_dir
    assert 'head.prototypes' in load_file(os.path.join(src, 'last.safetensors'))
    result = train(tiny_config(digits, tmp_path / 'ft', pretrained=src, head='fc', **dict(common, model_kwargs={})))
    saved = json.load(open(os.path.join(result.run_dir, 'config.json')))
    assert saved['head'] == 'fc' and saved['model_kwargs'].get('head', 'fc') == 'fc'
    assert type(result.model.head) is nn.Linear
    weights = load_file(os.path.join(result.run_dir, 'last.safetensors'))
    assert not [k for k in weights if k.startswith('head.') and k not in ('head.weight', 'head.bias')]
    # and back: --head hpm on the FC fine-tune's weights
    back = train(tiny_config(digits, tmp_path / 'back', pretrained=result.run_dir, head='hpm', **dict(common, model_kwargs={})))
    assert isinstance(back.model.head, HPMHead)


def test_head_or_unknown_model_arguments_on_another_model_are_one_line_errors(digits, tmp_path, capsys):
    args = ['train', '--recipe', 'standard', '--dataset', 'imagefolder', '--data-dir', digits, '--val-split', 'val',
            '--output', str(tmp_path), '--no-progress']
    assert main(args + ['--head', 'hpm', '--model', 'cifar_wrn34_10']) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and "head 'hpm' is a classifier option of the awnet_* / cifar_resnet* models" in err, err
    assert main(args + ['--model', 'cifar_resnet18', '--model-kwargs', '{"layer": [1, 1, 1, 1]}', '--train-size', '64',
                        '--batch-size', '32']) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and "model 'cifar_resnet18' does not take the arguments" in err, err
    assert os.listdir(tmp_path) == []


# 7. stage lists ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize('name, kwargs, message', [
    ('cifar_resnet18', dict(layers=[1, 1, 1], channels=[8, 16, 32, 64]), r'layers \[1, 1, 1\] and channels \[8, 16, 32, 64\]'),
    ('awnet_r18', dict(TINY, channels=[8, 16, 32]), r'layers \[1, 1, 1, 1\] and channels \[8, 16, 32\]'),
    ('awnet_r18', dict(TINY, router_layers=[1, 1, 1]), r'router_layers \[1, 1, 1\] and router_channels \[64, 128, 256, 512\]'),
    ('awnet_r18', dict(TINY_AWNET, router_channels=[8, 8, 16, 16, 16]), 'got 4 and 5'),
])
def test_stage_lists_of_different_lengths_are_refused(name, kwargs, message):
    with pytest.raises(ValueError, match=message):
        timm.create_model(name, **kwargs)
    timm.create_model('awnet_r18', layers=[1, 1], channels=[8, 16], router_layers=[1, 1], router_channels=[8, 8])  # any equal lengths
