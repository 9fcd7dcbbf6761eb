""" ARAT (recipe, invariance loss, static export) and the HPM head, each against a slow reference. """
import hashlib
import json
import os

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

from awnet_timm.layers import MixBatchNorm2d
from awnet_timm.training import ConfigError, TrainConfig, TrainForward, create_model_with_weights, create_recipe, train
from awnet_timm.training.arat import AsymmetricInvariance, deploy_adv_bn
from conftest import TINY, tiny_config

SMALL = dict(layers=(1, 1), channels=(8, 16))
SPLIT_BN = dict(mix_bn=True, type_head=False)
STUDENTS = [
    ('cifar_resnet18', dict(SMALL, **SPLIT_BN)),
    ('awnet_r18', dict(SMALL, router_layers=(1, 1), router_channels=(8, 8), **SPLIT_BN)),
]


def _student(name='cifar_resnet18', kwargs=STUDENTS[0][1]):
    return timm.create_model(name, num_classes=10, **kwargs)


def _batch(n=8, size=16):
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 3, size, size, generator=g), torch.randint(0, 10, (n,), generator=g)


def _predictor_by_hand(h: nn.Sequential, z: torch.Tensor) -> torch.Tensor:
    """Linear (no bias) -> batch norm on batch statistics (biased variance) -> ReLU -> Linear, written out."""
    lin1, bn, _, lin2 = h
    a = z @ lin1.weight.T
    a = (a - a.mean(0)) / torch.sqrt(a.var(0, unbiased=False) + bn.eps) * bn.weight + bn.bias
    return a.clamp(min=0) @ lin2.weight.T + lin2.bias


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))


def _invariance_by_hand(inv: AsymmetricInvariance, z_adv, z_nat) -> torch.Tensor:
    terms = [1 - _cos(_predictor_by_hand(h, a), n.detach()).mean() for h, a, n in zip(inv.predictors, z_adv, z_nat)]
    return sum(terms) / len(terms)


def test_invariance_loss_equals_a_hand_computation_and_stops_the_clean_gradient():
    dims = (16, 12)
    inv = AsymmetricInvariance(dims, hidden_ratio=0.25).train()
    z_adv = [torch.randn(6, d, requires_grad=True) for d in dims]
    z_nat = [torch.randn(6, d, requires_grad=True) for d in dims]
    loss = inv(z_adv, z_nat)
    assert [h[0].out_features for h in inv.predictors] == [4, 3]
    torch.testing.assert_close(loss, _invariance_by_hand(inv, z_adv, z_nat))
    loss.backward()
    assert all(z.grad is None for z in z_nat)  # stop-gradient on the clean side
    assert all(z.grad.abs().sum() > 0 for z in z_adv)
    assert all(p.grad is not None for p in inv.parameters())


def _sites_by_hand(model, x, route):
    """The recipe's aligned representations, by walking the last stage's blocks by hand."""
    h = model.forward_intermediates(x, route=route, intermediates_only=True)[-2]  # the last stage's input
    sites = []
    for block in model.stages[-1].blocks:
        shortcut = h
        a = block.conv1.bn(block.conv1.conv(h), None, route)
        sites.append(a.clamp(min=0).mean((2, 3)))
        b = block.conv2.bn(block.conv2.conv(a.clamp(min=0)), None, route)
        sites.append(b.clamp(min=0).mean((2, 3)))
        if block.downsample is not None:
            shortcut = block.downsample.bn(block.downsample.conv(shortcut), None, route)
        h = (b + shortcut).clamp(min=0)
    return sites


@pytest.mark.parametrize('name, kwargs', STUDENTS[:1])
def test_arat_loss_equals_the_sum_of_its_terms_by_hand(name, kwargs):
    model = _student(name, kwargs).train()
    cfg = TrainConfig(recipe='arat', model=name, attack_steps=2)
    recipe = create_recipe(cfg, model, TrainForward(model))
    x, y = _batch()
    x_adv = (x + 0.03 * torch.randn_like(x)).clamp(0, 1)
    recipe.attack.perturb = lambda x_, y_: x_adv
    loss, metrics = recipe.loss(x, y)

    nat = model.forward_with_router(x, route='clean')[0]
    adv = model.forward_with_router(x_adv, route='adv')[0]
    inv = _invariance_by_hand(recipe.state.invariance, _sites_by_hand(model, x_adv, 'adv'), _sites_by_hand(model, x, 'clean'))
    acc = 1 / 10  # no epoch seen yet: an untrained model's accuracy
    expected = acc * F.cross_entropy(adv, y) + (1 - acc) * F.cross_entropy(nat, y) + 30.0 * inv
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(metrics['loss_invariance'], inv.detach())


def _grads(model, which):
    return {n: p.grad.clone() if p.grad is not None else torch.zeros_like(p)
            for n, p in model.named_parameters() if f'.bn.{which}.' in n}


def test_arat_trains_each_bn_branch_with_its_own_inputs_only():
    model = _student().train()
    recipe = create_recipe(TrainConfig(recipe='arat', model='cifar_resnet18', attack_steps=2), model, TrainForward(model))
    x, y = _batch()
    x_adv = recipe.attack.perturb(x, y)  # eval mode: moves no statistics
    recipe.attack.perturb = lambda x_, y_: x_adv
    assert torch.all(model.stem.bn.clean.running_mean == 0) and torch.all(model.stem.bn.adv.running_mean == 0)
    loss, _ = recipe.loss(x, y)
    loss.backward()
    conv = model.stem.conv
    for branch, inputs in (('clean', x), ('adv', x_adv)):  # momentum 0.1 from zero: 0.1 * the batch mean of its own inputs
        z = conv(model._normalize(inputs))
        torch.testing.assert_close(getattr(model.stem.bn, branch).running_mean, 0.1 * z.mean((0, 2, 3)))
    clean_total, adv_total = _grads(model, 'clean'), _grads(model, 'adv')

    # the clean branch gets only w_nat * CE(x_nat): neither CE(x_adv) nor the invariance term reaches it
    model.zero_grad()
    nat = model.forward_with_router(x, route='clean')[0]
    (0.9 * F.cross_entropy(nat, y)).backward()
    for n, g in _grads(model, 'clean').items():
        torch.testing.assert_close(clean_total[n], g, msg=n)
    # ... and the adversarial branch the rest
    model.zero_grad()
    with recipe.sites.capture() as z:
        nat, adv = model.forward_with_router(x, route='clean')[0], model.forward_with_router(x_adv, route='adv')[0]
    n_sites = len(recipe.sites.dims)
    (0.1 * F.cross_entropy(adv, y) + 30.0 * recipe.state.invariance(z[n_sites:], z[:n_sites])).backward()
    for n, g in _grads(model, 'adv').items():
        torch.testing.assert_close(adv_total[n], g, msg=n)
    assert all(g.abs().sum() > 0 for g in adv_total.values())


@pytest.mark.parametrize('name, kwargs', [('cifar_resnet18', SMALL), ('awnet_r18', dict(SMALL, router_layers=(1, 1), router_channels=(8, 8)))])
def test_arat_refuses_a_student_without_a_static_adv_bn(name, kwargs):
    model = timm.create_model(name, num_classes=10, **kwargs)  # one BN, or MixBN blended by a type head
    with pytest.raises(ConfigError, match='split-BN student'):
        create_recipe(TrainConfig(recipe='arat', model=name), model, TrainForward(model))


@pytest.mark.parametrize('name, kwargs', STUDENTS)
def test_deploying_the_adv_bn_keeps_the_eval_function_with_one_bn_per_site(name, kwargs):
    model = _student(name, kwargs)
    with torch.no_grad():  # give the two branches different statistics and affines
        for m in model.modules():
            if isinstance(m, MixBatchNorm2d):
                for bn in (m.clean, m.adv):
                    bn.running_mean.normal_()
                    bn.running_var.uniform_(0.5, 2)
                    bn.weight.normal_()
    model.eval()
    static = deploy_adv_bn(model, name, **kwargs).eval()
    sites = sum(isinstance(m, MixBatchNorm2d) for m in model.modules())
    assert not any(isinstance(m, MixBatchNorm2d) for m in static.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in static.stages.modules()) + isinstance(static.stem.bn, nn.BatchNorm2d) \
        == sites
    assert not any('.clean.' in k or '.adv.' in k for k in static.state_dict())
    x, _ = _batch()
    torch.testing.assert_close(static(x), model(x))
    assert not torch.allclose(model.forward_with_router(x, route='clean')[0], model(x))  # the clean BN really differed


def test_an_arat_run_exports_a_static_timm_model_that_survives_save_and_load(digits, tmp_path):
    from awnet_timm.hub.export import export_checkpoint
    kwargs = dict(TINY, **SPLIT_BN)
    cfg = tiny_config(digits, tmp_path, model='cifar_resnet18', model_kwargs=kwargs, recipe='arat')
    result = train(cfg)
    with open(os.path.join(result.run_dir, 'log.jsonl')) as f:
        record = json.loads(f.readline())
    assert 'train_loss_invariance' in record and 0 <= record['train_w_adv'] <= 1
    trained = create_model_with_weights('cifar_resnet18', result.run_dir).eval()
    assert isinstance(trained.stem.bn, MixBatchNorm2d)  # the run keeps both branches (resume, evaluation)

    out = export_checkpoint(result.run_dir, str(tmp_path / 'export'), tag='arat_digits')
    with open(os.path.join(out.folder, 'config.json')) as f:
        assert json.load(f)['model_args']['mix_bn'] is False
    loaded = timm.create_model(f'local-dir:{out.folder}', pretrained=True).eval()
    assert not any(isinstance(m, MixBatchNorm2d) for m in loaded.modules())
    assert not any('predictor' in k or '.clean.' in k for k in loaded.state_dict())
    x = torch.rand(4, 3, 16, 16)
    torch.testing.assert_close(loaded(x), trained(x))


def _hpm_head(k=4, d=6, **kwargs):
    from awnet_timm.layers import HPMHead
    head = HPMHead(d, k, **kwargs)
    with torch.no_grad():
        head.weight.normal_()
    return head


def _hpm_logits_by_hand(head, z):
    """Training-mode HPM logits written out per class and sample (prototypes as they are after the update)."""
    pred = (z @ head.weight.T + head.bias).argmax(1)
    rows = []
    for i in range(len(z)):
        row = []
        for k in range(head.out_features):
            members = z[pred == k]
            c = head.prototypes[k]
            if len(members):
                c = head.stable_weight * c + (1 - head.stable_weight) * members.mean(0)
            row.append(-head.scale * ((z[i] - c) ** 2).sum())
        rows.append(torch.stack(row))
    return torch.stack(rows)


def test_hpm_prototypes_update_as_defined_and_training_logits_match_a_hand_computation():
    head = _hpm_head(momentum=0.8, stable_weight=0.3, scale=0.5).train()
    z1, z2 = torch.randn(10, 6), torch.randn(10, 6)
    pred1, pred2 = [(z @ head.weight.T + head.bias).argmax(1) for z in (z1, z2)]
    logits = head(z1)
    for k in range(4):  # first sight of a class: its batch mean
        if (pred1 == k).any():
            torch.testing.assert_close(head.prototypes[k], z1[pred1 == k].mean(0))
        else:
            assert not head.initialized[k] and torch.all(head.prototypes[k] == 0)
    assert torch.equal(head.initialized, torch.stack([(pred1 == k).any() for k in range(4)]))
    torch.testing.assert_close(logits, _hpm_logits_by_hand(head, z1))
    before = head.prototypes.clone()
    head(z2)
    for k in range(4):  # then the EMA: m * mu + (1 - m) * batch mean
        members = z2[pred2 == k]
        if len(members) and (pred1 == k).any():
            expected = 0.8 * before[k] + 0.2 * members.mean(0)
        elif len(members):
            expected = members.mean(0)
        else:
            expected = before[k]
        torch.testing.assert_close(head.prototypes[k], expected)


def test_hpm_eval_output_is_batch_independent_and_is_the_training_formula_at_the_prototypes():
    head = _hpm_head(momentum=0.0).train()  # momentum 0: the prototypes become this batch's class means
    z = torch.randn(32, 6)
    trained = head(z)
    head.eval()
    out = head(z)
    torch.testing.assert_close(out, trained)  # the training formula, once the batch prototypes are the prototypes
    torch.testing.assert_close(out, -head.scale * ((z[:, None] - head.prototypes[None]) ** 2).sum(-1))
    torch.testing.assert_close(out[2:5], head(z[2:5]))  # batch-independent
    torch.testing.assert_close(out[3:4], head(torch.cat([z[3:4], torch.randn(20, 6)]))[:1])
    z_req = z[:5].clone().requires_grad_(True)
    head(z_req)[:, 1].sum().backward()  # differentiable: the attacks' gradient is the l2 head's own
    torch.testing.assert_close(z_req.grad, -2 * head.scale * (z[:5] - head.prototypes[1]))
    assert head.weight.grad is None


def test_hpm_evaluates_the_head_it_trains_not_its_fc(outcome_seed):
    """Features in 4 clusters, a random FC: the FC and the l2 head disagree on a part of the samples; the evaluated
    head follows the l2 head (not the FC, which a sample in its own batch-level prototype made it follow) and
    agrees with the training-mode head on a large batch."""
    g = torch.Generator().manual_seed(outcome_seed)
    torch.manual_seed(outcome_seed)
    head = _hpm_head(k=4, d=6)
    centers = 3 * torch.randn(4, 6, generator=g)

    def sample(n):
        return centers[torch.randint(0, 4, (n,), generator=g)] + torch.randn(n, 6, generator=g)
    head.train()
    for _ in range(30):
        head(sample(256))
    z = sample(512)
    fc = (z @ head.weight.T + head.bias).argmax(1)
    l2 = ((z[:, None] - head.prototypes[None]) ** 2).sum(-1).argmin(1)
    evaluated = head.eval()(z).argmax(1)
    assert (l2 != fc).float().mean() > 0.1  # where the FC and the l2 head disagree ...
    assert torch.equal(evaluated, l2)  # ... the evaluated head is the l2 head
    trained = head.train()(z).argmax(1)
    assert (trained == evaluated).float().mean() > 0.9
    assert (trained == evaluated).float().mean() > (trained == fc).float().mean() + 0.1


def test_hpm_surrogate_modes_and_the_straight_through_gradient():
    head = _hpm_head().train()
    z = torch.randn(32, 6, requires_grad=True)
    head(z).sum().backward()
    assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0  # the STE reaches the FC in training
    head.eval()
    head.set_mode('fc')
    torch.testing.assert_close(head(z), z @ head.weight.T + head.bias)
    for mode in ('l2', 'soft'):
        with pytest.raises(ValueError, match=f"unknown HPM mode '{mode}': expected one of hpm, fc"):
            head.set_mode(mode)


def test_an_hpm_model_survives_save_and_load_through_timm_and_loads_fc_weights(tmp_path):
    from safetensors.torch import save_file
    from timm.models import save_for_hf
    model = timm.create_model('cifar_resnet18', num_classes=10, head='hpm', head_args=dict(scale=0.3), **SMALL)
    model.train()
    model(torch.rand(32, 3, 16, 16))
    model.eval()
    assert model.head.initialized.any()
    save_for_hf(model, str(tmp_path / 'hpm'), safe_serialization=True)
    loaded = timm.create_model(f'local-dir:{tmp_path / "hpm"}', pretrained=True).eval()
    assert loaded.head.scale == 0.3
    torch.testing.assert_close(loaded.head.prototypes, model.head.prototypes)
    x = torch.rand(4, 3, 16, 16)
    torch.testing.assert_close(loaded(x), model(x))

    fc = timm.create_model('cifar_resnet18', num_classes=10, **SMALL)
    save_file(fc.state_dict(), str(tmp_path / 'fc.safetensors'))
    hpm = create_model_with_weights('cifar_resnet18', str(tmp_path / 'fc.safetensors'), head='hpm', **SMALL).eval()
    torch.testing.assert_close(hpm.head.weight, fc.head.weight)
    assert not hpm.head.initialized.any()
    hpm.head.set_mode('fc')
    torch.testing.assert_close(hpm(x), fc.eval()(x))


def test_awnet_finetune_head_hpm_runs_from_an_fc_run(digits, teacher_run, tmp_path):
    from awnet_timm.cli import main
    rc = main(['finetune', '--pretrained', teacher_run, '--model', 'cifar_resnet18', '--head', 'hpm',
               '--data-dir', digits, '--train-size', '64', '--val-size', '16', '--batch-size', '32', '--epochs', '1',
               '--attack-steps', '1', '--val-attack-steps', '1', '--output', str(tmp_path), '--run-name', 'hpm',
               '--no-progress'])
    assert rc == 0
    model = create_model_with_weights('cifar_resnet18', str(tmp_path / 'hpm')).eval()
    assert type(model.head).__name__ == 'HPMHead' and model.head.initialized.any()


def test_hpm_surrogates_share_the_weights_and_leave_the_head_as_it_was():
    from awnet_timm.attacks import hpm_surrogates
    model = timm.create_model('cifar_resnet18', num_classes=10, head='hpm', **SMALL).train()
    model(torch.rand(32, 3, 16, 16))
    model.eval()
    s = hpm_surrogates(model)
    assert list(s) == ['hpm_fc']
    x = torch.rand(4, 3, 16, 16)
    z = model.forward_head(model.forward_features(x), pre_logits=True)
    torch.testing.assert_close(s['hpm_fc'](x), z @ model.head.weight.T + model.head.bias)
    assert model.head.mode == 'hpm'
    torch.testing.assert_close(model(x), -model.head.scale * ((z[:, None] - model.head.prototypes[None]) ** 2).sum(-1))
    x_req = x.clone().requires_grad_(True)
    s['hpm_fc'](x_req).sum().backward()
    assert x_req.grad.abs().sum() > 0


def test_awnet_eval_on_an_hpm_model_adds_msa_on_its_surrogates_and_black_box(digits, tmp_path):
    from timm.models import save_for_hf
    from awnet_timm.cli import main
    model = timm.create_model('cifar_resnet18', num_classes=10, head='hpm', **SMALL).train()
    model(torch.rand(32, 3, 16, 16))
    save_for_hf(model.eval(), str(tmp_path / 'hpm'), safe_serialization=True)
    out = tmp_path / 'eval.json'
    assert main(['eval', '--model', f'local-dir:{tmp_path / "hpm"}', '--dataset', 'imagefolder', '--data-dir', digits,
                 '--n', '4', '--attacks', 'fgsm', '--square-queries', '20', '--eps', '64/255', '--no-sanity', '--no-progress',
                 '--out', str(out)]) == 0
    record = json.loads(out.read_text())
    names = [a['name'] for a in record['attacks']]
    assert names == ['fgsm', 'transfer_hpm_fc', 'msa', 'square']
    assert record['worst_case']['attacks'] == names
    assert record['worst_case']['robust_acc'] <= min(a['robust_acc'] for a in record['attacks'])
    assert record['checkpoint_sha256'] == hashlib.sha256((tmp_path / 'hpm' / 'model.safetensors').read_bytes()).hexdigest()


def test_the_zoo_suite_of_an_hpm_model_has_its_surrogate_msa_and_black_box_and_router_alone_is_refused():
    from awnet_timm.eval import build_suite
    model = timm.create_model('cifar_resnet18', num_classes=10, head='hpm', **SMALL).eval()
    specs = build_suite(model, ('paper', 'router'), eps=8 / 255, router_steps=5, batch_size=8)  # as the zoo's runner calls it
    assert [s.name for s in specs] == ['fgsm', 'pgd_sat', 'pgd_trades', 'cw_inf', 'autoattack', 'transfer_hpm_fc', 'msa',
                                       'square']
    assert specs[-2].params['surrogates'] == ['hpm_fc']
    assert [s.name for s in build_suite(model, ['fgsm'], hpm_attacks=False)] == ['fgsm']
    for names in (['router'], ['forced_clean'], ['pgd_sat', 'two_phase']):  # no white-box attack would run
        with pytest.raises(ValueError, match=r'router attacks \(.*\) need an AW-Net with a router'):
            build_suite(model, names)


def test_awnet_eval_router_on_a_static_hpm_model_is_refused(digits, tmp_path, capsys):
    from timm.models import save_for_hf
    from awnet_timm.cli import main
    model = timm.create_model('cifar_resnet18', num_classes=10, head='hpm', **SMALL).train()
    model(torch.rand(32, 3, 16, 16))
    save_for_hf(model.eval(), str(tmp_path / 'hpm'), safe_serialization=True)
    out = tmp_path / 'eval.json'
    assert main(['eval', '--model', f'local-dir:{tmp_path / "hpm"}', '--dataset', 'imagefolder', '--data-dir', digits,
                 '--n', '4', '--attacks', 'router', '--no-sanity', '--no-progress', '--out', str(out)]) == 2
    err = capsys.readouterr().err
    assert 'need an AW-Net with a router' in err and err.count('\n') == 1
    assert not out.exists()
