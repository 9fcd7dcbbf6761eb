""" The evaluation harness: attacks on a trained AW-Net, worst case, router statistics, sanity flags, reports. """
import json

import pytest
import torch
import torch.nn as nn

from awnet_timm.attacks import AutoAttack, ForcedRoutePGD
from awnet_timm.cli import main
from awnet_timm.data import load_dataset
from awnet_timm.eval import (
    build_record, build_suite, detection_auc, evaluate_robustness, filter_means, markdown_table, summarize, write_report)
from awnet_timm.layers import MixBatchNorm2d
from awnet_timm.training import train
from conftest import TINY, tiny_config


@pytest.fixture(scope='session')
def trained_awnet(digits, tmp_path_factory):
    """A small AW-Net trained with PGD-AT on the digits (both BN branches and the router)."""
    cfg = tiny_config(digits, tmp_path_factory.mktemp('awnet'), recipe='pgd_at', train_size=960, val_size=0, epochs=4,
                      lr=0.1, router_lr=0.02, attack_steps=2, attack_step=4 / 255, decay_milestones=(4,))
    result = train(cfg)
    return result.model.eval(), result.run_dir


@pytest.fixture(scope='session')
def val_batch(digits):
    data = load_dataset('imagefolder', digits, 'val')
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))[:64]
    return data.images[perm].float() / 255, data.labels[perm]


def test_every_attack_lowers_accuracy_and_the_worst_case_is_below_each(trained_awnet, val_batch):
    model, _ = trained_awnet
    x, y = val_batch
    specs = build_suite(model, ['paper', 'router'], eps=8 / 255, router_steps=10)
    specs = [s for s in specs if s.name != 'autoattack']  # AutoAttack has its own test (slow on CPU)
    assert {s.name for s in specs} == {'fgsm', 'pgd_sat', 'pgd_trades', 'cw_inf', 'forced_clean', 'forced_adv',
                                       'router_detach', 'two_phase', 'signal_match', 'joint_adaptive'}
    result = evaluate_robustness(model, x, y, specs, batch_size=32, sanity=False, progress=False)
    assert result['clean_acc'] > 0.45  # 10 classes: chance is 0.1
    worst = result['worst_case']['robust_acc']
    for a in result['attacks']:
        assert a['robust_acc'] < result['clean_acc'], a['name']
        assert worst <= a['robust_acc']
        assert a['w_robust_acc'] == pytest.approx((result['clean_acc'] + a['robust_acc']) / 2)
        assert 0 <= a['router']['detection_auc'] <= 1
    bits = result['per_sample']
    recomputed = [all(bits[name][i] == '1' for name in bits if name not in ('worst_case',)) for i in range(len(y))]
    assert bits['worst_case'] == ''.join('1' if r else '0' for r in recomputed)
    assert result['router']['p_clean_clean_mean'] > 0


def test_forced_route_attacks_run_the_intended_bn_branch(trained_awnet, val_batch):
    model, _ = trained_awnet
    x, y = val_batch
    for forced in ('clean', 'adv'):
        seen = set()
        hooks = [m.register_forward_pre_hook(lambda mod, args: seen.add(args[2] if len(args) > 2 else 'mix'))
                 for m in model.modules() if isinstance(m, MixBatchNorm2d)]
        ForcedRoutePGD(model, forced, steps=2).perturb(x[:8], y[:8])
        for h in hooks:
            h.remove()
        assert seen == {forced}


def test_autoattack_runs_through_pyautoattack(trained_awnet, val_batch):
    model, _ = trained_awnet
    x, y = val_batch[0][:8], val_batch[1][:8]
    attack = AutoAttack(model, eps=8 / 255, version='standard', batch_size=8)
    x_adv = attack.perturb(x, y)
    assert x_adv.shape == x.shape and (x_adv - x).abs().max() <= 8 / 255 + 1e-6 and 0 <= x_adv.min() and x_adv.max() <= 1
    with torch.no_grad():
        assert (model(x_adv).argmax(1) == y).float().mean() < (model(x).argmax(1) == y).float().mean()
    with pytest.raises(ValueError, match="needs version='custom'"):
        AutoAttack(model, attacks=['square'])


class SaturatedGate(nn.Module):
    """A planted gradient-masking defence: the input passes through a gate saturated to exactly 0 in fp32
    (as a near-certain router's softmax saturates), so the forward is the classifier's but gradients w.r.t.
    the input vanish, and sign-gradient attacks cannot move."""

    def __init__(self, classifier: nn.Module):
        super().__init__()
        self.classifier = classifier

    def forward(self, x):
        gate = torch.sigmoid(torch.tensor(-120.0, device=x.device))  # underflows to 0
        return self.classifier(x.detach() + (x - x.detach()) * gate)


def test_sanity_checks_flag_a_planted_gradient_masking_model(trained_awnet, val_batch):
    model, _ = trained_awnet
    x, y = val_batch[0][:32], val_batch[1][:32]
    specs = build_suite(model, ['fgsm', 'pgd_sat', 'square'], square_queries=300)
    honest = evaluate_robustness(model, x, y, specs, batch_size=32, progress=False)
    masked = evaluate_robustness(SaturatedGate(model), x, y, specs, batch_size=32, progress=False)
    flags = {c['check']: c['passed'] for c in masked['sanity']}
    assert not flags['accuracy reaches ~0 at a large eps']
    assert not flags['square (black-box) does not beat white-box attacks']
    assert {c['check']: c['passed'] for c in honest['sanity']}['accuracy reaches ~0 at a large eps']
    assert masked['attacks'][1]['robust_acc'] == pytest.approx(masked['clean_acc'])  # PGD found nothing


def test_detection_auc_matches_a_pairwise_reference():
    from sklearn.metrics import roc_auc_score
    g = torch.Generator().manual_seed(0)
    clean, adv = torch.rand(50, generator=g), torch.rand(40, generator=g) * 0.7
    clean[:5] = adv[:5]  # ties
    ref = roc_auc_score([0] * 50 + [1] * 40, torch.cat([1 - clean, 1 - adv]).numpy())
    assert detection_auc(clean, adv) == pytest.approx(ref)


def test_reports_are_valid_json_and_reproducible_with_a_seed(trained_awnet, val_batch, tmp_path):
    model, run_dir = trained_awnet
    x, y = val_batch[0][:16], val_batch[1][:16]
    specs = build_suite(model, ['pgd_sat', 'cw_inf', 'forced_clean'], router_steps=5)
    data = {'dataset': 'imagefolder', 'split': 'val', 'n': 16, 'description': 'digits'}
    records = []
    for i in range(2):
        result = evaluate_robustness(model, x, y, specs, batch_size=16, seed=3, progress=False)
        record = build_record(result, 'awnet_r18', run_dir, data, 8 / 255, 3, 'cpu')
        write_report(record, str(tmp_path / f'r{i}.json'))
        records.append(json.loads((tmp_path / f'r{i}.json').read_text()))
    drop = lambda r: {k: v for k, v in r.items() if k not in ('elapsed_seconds', 'attacks', 'versions')}  # noqa: E731
    assert drop(records[0]) == drop(records[1])
    assert [a['robust_acc'] for a in records[0]['attacks']] == [a['robust_acc'] for a in records[1]['attacks']]
    info = records[0]['model_info']
    assert info['eps'] == '8/255' and info['clean_acc'] == f"{100 * records[0]['clean_acc']:.2f}" and info['additional_data'] is False
    assert (tmp_path / 'r0.md').read_text() == markdown_table(records[0])
    assert '| **worst case** (per sample) |' in markdown_table(records[0])


def test_filter_means_match_a_loop_and_summaries_tell_sharp_from_smooth():
    conv_model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 6, 3))
    means = filter_means(conv_model, 1)
    w = conv_model[2].weight.detach()
    assert torch.allclose(means, torch.stack([w[i].sum() / w[i].numel() for i in range(6)]))
    with pytest.raises(ValueError, match='out of range'):
        filter_means(conv_model, 2)
    with pytest.raises(ValueError, match='is not a conv layer'):
        filter_means(conv_model, 'nope')
    sharp, smooth = summarize(torch.randn(1000).sign() * 0.01), summarize(torch.randn(1000))
    assert sharp['std'] < smooth['std'] and sharp['filters'] == 1000


def test_awnet_eval_and_filters_commands(cifar10_root, trained_awnet, tmp_path, capsys):
    _, run_dir = trained_awnet
    out = tmp_path / 'report.json'
    tiny = json.dumps(TINY)
    assert main(['eval', '--model', 'cifar_resnet18', '--model-kwargs', tiny, '--data-dir', cifar10_root, '--n', '8',
                 '--attacks', 'fgsm', 'pgd_sat', '--batch-size', '8', '--no-sanity', '--no-progress', '--out', str(out)]) == 0
    record = json.loads(out.read_text())
    assert record['data']['description'] == 'first 8 CIFAR-10 test-exact images (exact pixels)'
    assert record['data']['exact_pixels'] and [a['name'] for a in record['attacks']] == ['fgsm', 'pgd_sat']
    assert (tmp_path / 'report.md').is_file()
    assert main(['plot', str(out), str(out), '--labels', 'a', 'b', '--out', str(tmp_path / 't.png')]) == 0
    assert (tmp_path / 't.png').stat().st_size > 1000
    assert main(['filters', f'awnet_r18={run_dir}', 'cifar_resnet18', '--labels', 'awnet', 'random', '--layer', '1',
                 '--out', str(tmp_path / 'f.png')]) == 0
    summary = json.loads((tmp_path / 'f.json').read_text())
    assert set(summary) == {'awnet', 'random'} and summary['awnet']['layer'] == 'stages.0.blocks.0.conv1.conv'
    assert main(['eval', '--model', 'cifar_resnet18', '--data-dir', str(tmp_path / 'none'), '--n', '8']) == 2
    assert 'no CIFAR-10 file' in capsys.readouterr().err
