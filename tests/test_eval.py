""" The evaluation harness: attacks on a trained AW-Net, worst case, router statistics, sanity flags, reports. """
import json
import os
import re

import pytest
import torch
import torch.nn as nn

from awnet_timm import AWNet
from awnet_timm.attacks import AutoAttack, ForcedRoutePGD, JointLossPGD, TwoPhaseAttack
from awnet_timm.cli import main
from awnet_timm.data import load_dataset
from awnet_timm.eval import (
    AttackSpec, EvaluationError, build_record, build_suite, detection_auc, evaluate_robustness, filter_means, label_offsets,
    markdown_table, plot_eps_curve, summarize, write_report)
from awnet_timm.eval.cli import load_eval_data
from awnet_timm.eval.suite import pgd_spec
from awnet_timm.layers import MixBatchNorm2d
from awnet_timm.training import train
from conftest import TINY, TINY_AWNET, tiny_config
from test_attacks import WindowModel


@pytest.fixture(scope='session')
def trained_awnet(digits, tmp_path_factory, outcome_seed):
    """A small AW-Net trained with PGD-AT on the digits (both BN branches and the router)."""
    cfg = tiny_config(digits, tmp_path_factory.mktemp('awnet'), recipe='pgd_at', train_size=960, val_size=0, epochs=4,
                      lr=0.1, router_lr=0.02, attack_steps=2, attack_step=4 / 255, decay_milestones=(4,),
                      seed=outcome_seed)
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
                                       'router_detach', 'two_phase', 'signal_match', 'joint_adaptive', 'joint_clean',
                                       'two_phase_clean'}
    result = evaluate_robustness(model, x, y, specs, batch_size=32, sanity=False, progress=False)
    print(f"trained_awnet clean accuracy: {result['clean_acc']:.3f}, worst case {result['worst_case']['robust_acc']:.3f}")
    # seeds 0-4 (--outcome-seeds 5), torch 2.14.1, CPU: clean 0.359 to 0.766, worst case 0.172 to 0.422
    assert result['clean_acc'] > 0.25  # 10 classes: chance is 0.1
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
    seen = set()  # joint_clean: the Clean BN path's cross-entropy, the router's P(clean) (the type head runs)
    hooks = [m.register_forward_pre_hook(lambda mod, args: seen.add(args[2] if len(args) > 2 else 'mix'))
             for m in model.modules() if isinstance(m, MixBatchNorm2d)]
    heads = []
    hooks.append(model.router.type_head.register_forward_hook(lambda mod, args, out: heads.append(out)))
    x_adv = JointLossPGD(model, 1.0, route='clean', steps=5).perturb(x[:8], y[:8])
    for h in hooks:
        h.remove()
    assert seen == {'clean'} and heads and model.route == 'auto'
    seen.clear()  # two_phase_clean: both phases on the Clean BN path (the evaluator then scores the real model)
    hooks = [m.register_forward_pre_hook(lambda mod, args: seen.add(args[2] if len(args) > 2 else 'mix'))
             for m in model.modules() if isinstance(m, MixBatchNorm2d)]
    TwoPhaseAttack(model, steps=3, route='clean').perturb(x[:8], y[:8])
    for h in hooks:
        h.remove()
    assert seen == {'clean'} and model.route == 'auto'
    without = JointLossPGD(model, 0.0, route='clean', steps=5).perturb(x[:8], y[:8])  # the type term left out
    with torch.no_grad():  # the type term is what raises P(clean)
        p_with, p_without = model.forward_router(x_adv).p_clean, model.forward_router(without).p_clean
    print(f'joint_clean mean P(clean): {p_with.mean():.4f} with the type term, {p_without.mean():.4f} without')
    assert p_with.mean() > p_without.mean()


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
    assert masked['sanity_cost']['eps_sweep_attacked'] > 0
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
    timings = ('elapsed_seconds', 'attack_seconds', 'sanity_cost', 'attacks', 'versions')
    drop = lambda r: {k: v for k, v in r.items() if k not in timings}  # noqa: E731
    assert drop(records[0]) == drop(records[1])
    assert [a['robust_acc'] for a in records[0]['attacks']] == [a['robust_acc'] for a in records[1]['attacks']]
    assert {k: v for k, v in records[0]['sanity_cost'].items() if 'seconds' not in k} == \
        {k: v for k, v in records[1]['sanity_cost'].items() if 'seconds' not in k}
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
    assert record['data']['description'] == 'first 8 CIFAR-10 test-exact images (exact pixels, the development set)'
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


def test_evaluation_counts_a_sample_broken_at_any_iterate():
    x, y = torch.full((2, 3, 4, 4), 0.5), torch.zeros(2, dtype=torch.long)
    cpu = torch.device('cpu')
    best = pgd_spec('best', 0.1, 0.01, 10, random_start='none')
    last = pgd_spec('last', 0.1, 0.01, 10, random_start='none', keep='last')
    result = evaluate_robustness(WindowModel(), x, y, [best, last], device=cpu, sanity=False, progress=False)
    assert result['clean_acc'] == 1.0
    assert [a['robust_acc'] for a in result['attacks']] == [0.0, 1.0]  # fooled at step 3, not at step 10
    assert result['attacks'][0]['params']['keep'] == 'best' and result['worst_case']['robust_acc'] == 0.0


class _Returns:
    def __init__(self, value):
        self.value = value

    def perturb(self, x, y):
        return x + self.value


def test_non_finite_examples_and_inputs_are_refused(trained_awnet, val_batch):
    model, _ = trained_awnet
    x, y = val_batch[0][:4].clone(), val_batch[1][:4]
    nan = AttackSpec('nan_attack', 'white-box', {'eps': 8 / 255}, lambda m: _Returns(float('nan')))
    with pytest.raises(EvaluationError, match="attack 'nan_attack' returned non-finite pixels"):
        evaluate_robustness(model, x, y, [nan], sanity=False, progress=False)
    far = AttackSpec('far', 'white-box', {'eps': 8 / 255}, lambda m: _Returns(0.1))
    with pytest.raises(EvaluationError, match="'far' returned examples outside the eps-ball"):
        evaluate_robustness(model, x.clamp(0, 0.5), y, [far], sanity=False, progress=False)
    x[0, 0, 0, 0] = float('nan')
    with pytest.raises(ValueError, match=r'evaluation takes pixels in \[0, 1\], got non-finite'):
        evaluate_robustness(model, x, y, [], sanity=False, progress=False)


def test_autoattack_sees_the_whole_set_once_so_the_batch_size_does_not_matter(trained_awnet, val_batch, monkeypatch, capsys):
    model, _ = trained_awnet
    x, y = val_batch[0][:12], val_batch[1][:12]
    calls = []
    perturb = AutoAttack.perturb
    monkeypatch.setattr(AutoAttack, 'perturb', lambda self, xb, yb: calls.append(len(xb)) or perturb(self, xb, yb))
    outcomes = []
    for batch_size in (4, 12):
        specs = build_suite(model, ['square'], square_queries=30, batch_size=8, progress=True)
        assert specs[0].whole_set
        result = evaluate_robustness(model, x, y, specs, batch_size=batch_size, sanity=False, progress=True)
        outcomes.append(result['per_sample'])
    assert calls == [12, 12]  # once over all 12 images, whatever the evaluator's batch size
    assert outcomes[0] == outcomes[1]
    err = capsys.readouterr().err
    assert 'autoattack' in err and 'square batch 1/' in err and 'points left' in err  # AutoAttack's stages and progress


def test_random_start_step_sizes_and_kept_iterate_follow_the_options_and_are_recorded():
    model = AWNet(**TINY_AWNET).eval()
    for eps in (8 / 255, 4 / 255):
        specs = {s.name: s for s in build_suite(model, ['paper', 'router'], eps=eps, random_start='none', router_steps=3)}
        scale = eps / (8 / 255)
        expected = {'pgd_sat': 2 / 255 * scale, 'pgd_trades': 0.003 * scale, 'cw_inf': 0.003 * scale,
                    'forced_clean': 2 / 255 * scale, 'forced_adv': 2 / 255 * scale, 'router_detach': 2 / 255 * scale,
                    'signal_match': 2 / 255 * scale, 'joint_adaptive': 0.003 * scale, 'two_phase': 2.5 * eps / 100,
                    'joint_clean': 2 / 255 * scale, 'two_phase_clean': 2.5 * eps / 100}
        for name, step in expected.items():
            attack = specs[name].build(model)
            assert attack.step_size == pytest.approx(step) and specs[name].params['step_size'] == attack.step_size, name
            assert attack.random_start == 'none' and specs[name].params['random_start'] == 'none', name
            assert attack.eps == eps
            if not name.startswith('two_phase'):
                assert attack.keep == 'best' and specs[name].params['keep'] == 'best', name
    assert build_suite(model, ['pgd_trades'])[0].params['step_size'] == 0.003  # the paper's protocol, unchanged at 8/255
    assert build_suite(model, ['cw_inf'], cw_step=0.01)[0].params['step_size'] == 0.01  # an explicit step is used as given


def test_sanity_checks_use_the_random_start_and_attack_only_points_still_robust(trained_awnet, val_batch, monkeypatch):
    import awnet_timm.eval.harness as harness
    model, _ = trained_awnet
    x, y = val_batch[0][:32], val_batch[1][:32]
    starts = []
    real = harness.pgd_spec
    monkeypatch.setattr(harness, 'pgd_spec', lambda *a, **k: starts.append(a[5]) or real(*a, **k))
    specs = build_suite(model, ['fgsm'])
    result = evaluate_robustness(model, x, y, specs, batch_size=32, sanity_n=24, random_start='none', progress=False)
    assert starts and set(starts) == {'none'} and result['sanity_cost']['random_start'] == 'none'
    curve, cost = result['eps_curve'], result['sanity_cost']
    clean = [c == '1' for c in result['per_sample']['clean'][:24]]
    assert cost['n'] == 24 and curve[0]['attacked'] == sum(clean)
    for before, after in zip(curve, curve[1:]):  # a point broken at a smaller eps is not attacked again
        assert after['attacked'] == round(before['robust_acc'] * 24) and after['robust_acc'] <= before['robust_acc']
    at_eps = next(c for c in curve if c['eps'] == 8 / 255)
    assert cost['pgd100_attacked'] == round(at_eps['robust_acc'] * 24)
    assert cost['eps_sweep_attacked'] == sum(c['attacked'] for c in curve)
    record = build_record(result, 'awnet_r18', 'run', {'n': 32}, 8 / 255, 0, 'cpu')
    assert f"sanity checks {cost['seconds']:.1f} s" in markdown_table(record)
    with torch.no_grad():
        wrong = (model(x).argmax(1) + 1) % 10  # 0% clean accuracy: nothing is left to attack
    none = evaluate_robustness(model, x, wrong, specs, batch_size=32, progress=False)['sanity_cost']
    assert none['eps_sweep_attacked'] == 0 and none['pgd100_attacked'] == 0


def test_the_result_is_handed_over_after_every_attack(trained_awnet, val_batch):
    model, _ = trained_awnet
    x, y = val_batch[0][:8], val_batch[1][:8]
    seen = []
    specs = build_suite(model, ['fgsm']) + [AttackSpec('nan_attack', 'white-box', {}, lambda m: _Returns(float('nan')))]
    with pytest.raises(EvaluationError):
        evaluate_robustness(model, x, y, specs, sanity=False, progress=False, on_attack=seen.append)
    assert len(seen) == 1 and not seen[0]['complete'] and [a['name'] for a in seen[0]['attacks']] == ['fgsm']
    record = build_record(seen[0], 'awnet_r18', 'run', {'n': 8}, 8 / 255, 0, 'cpu')
    assert record['complete'] is False and '**Incomplete**' in markdown_table(record)


def test_an_interrupted_evaluation_continues_to_the_result_of_an_uninterrupted_one(trained_awnet, val_batch, monkeypatch):
    import awnet_timm.eval.harness as harness
    model, _ = trained_awnet
    x, y = val_batch[0][:16], val_batch[1][:16]
    specs = build_suite(model, ['fgsm', 'pgd_sat', 'forced_clean'], router_steps=5)
    seen = []
    full = evaluate_robustness(model, x, y, specs, batch_size=8, seed=1, sanity=False, progress=False, on_attack=seen.append)
    data = {'n': 16, 'description': 'digits'}
    saved = json.loads(json.dumps(build_record(seen[1], 'awnet_r18', 'run', data, 8 / 255, 1, 'cpu')))  # as read back
    ran = []
    run_attack = harness._run_attack
    monkeypatch.setattr(harness, '_run_attack', lambda m, spec, *a: ran.append(spec.name) or run_attack(m, spec, *a))
    resumed = evaluate_robustness(model, x, y, specs, batch_size=8, seed=1, sanity=False, progress=False, previous=saved)
    assert ran == ['forced_clean']
    assert resumed['per_sample'] == full['per_sample'] and resumed['worst_case'] == full['worst_case']
    assert [a['robust_acc'] for a in resumed['attacks']] == [a['robust_acc'] for a in full['attacks']]
    assert resumed['attacks'][:2] == saved['attacks'] and resumed['elapsed_seconds'] >= saved['elapsed_seconds']
    # an earlier result of another evaluation is refused before any attack runs
    ran.clear()
    flipped = dict(saved, per_sample=dict(saved['per_sample'], clean=saved['per_sample']['clean'][::-1] + 'x'))
    with pytest.raises(EvaluationError, match='clean predictions are not this run'):
        evaluate_robustness(model, x, y, specs, sanity=False, progress=False, previous=flipped)
    with pytest.raises(EvaluationError, match="has the attack 'fgsm', which this run does not ask for"):
        evaluate_robustness(model, x, y, specs[1:], sanity=False, progress=False, previous=saved)
    other = build_suite(model, ['fgsm', 'pgd_sat', 'forced_clean'], eps=4 / 255, router_steps=5)
    with pytest.raises(EvaluationError, match="ran 'fgsm' with"):
        evaluate_robustness(model, x, y, other, sanity=False, progress=False, previous=saved)
    assert ran == []


def test_awnet_eval_resume_continues_its_report_and_refuses_another_one(cifar10_root, tmp_path, capsys):
    from awnet_timm.hub import export_checkpoint
    from hub_fixtures import TINY_STATIC, make_run
    out = tmp_path / 'report.json'
    unweighted = ['eval', '--model', 'cifar_resnet18', '--model-kwargs', json.dumps(TINY), '--data-dir', cifar10_root,
                  '--n', '8', '--no-sanity', '--no-progress', '--out', str(out), '--resume', '--attacks', 'fgsm']
    assert main(unweighted) == 2  # initialized anew each run: nothing to continue from
    assert '--resume continues the evaluation of one set of weights' in capsys.readouterr().err and not out.exists()
    folder = export_checkpoint(make_run(str(tmp_path / 'run'), model='cifar_resnet18', model_kwargs=TINY_STATIC),
                               str(tmp_path / 'export')).folder
    args = ['eval', '--model', f'local-dir:{folder}', '--data-dir', cifar10_root, '--n', '8',
            '--batch-size', '8', '--no-sanity', '--no-progress', '--out', str(out), '--resume']
    assert main(args + ['--attacks', 'fgsm']) == 0  # no report yet: a new one
    first = json.loads(out.read_text())
    assert main(args + ['--attacks', 'fgsm', 'pgd_sat']) == 0
    assert f'continuing {out}: fgsm finished' in capsys.readouterr().out
    record = json.loads(out.read_text())
    assert [a['name'] for a in record['attacks']] == ['fgsm', 'pgd_sat'] and record['complete']
    assert record['attacks'][0] == first['attacks'][0] and record['per_sample']['fgsm'] == first['per_sample']['fgsm']
    assert main(args + ['--attacks', 'fgsm', 'pgd_sat']) == 0
    assert 'is complete for these attacks and checks: nothing to continue' in capsys.readouterr().out
    assert json.loads(out.read_text()) == record
    # complete, but not for these settings: other attack parameters are refused, other sanity checks run alone
    assert main(args + ['--attacks', 'fgsm', 'pgd_sat', '--random-start', 'none']) == 2
    assert "ran 'pgd_sat' with" in capsys.readouterr().err
    sane = [a for a in args if a != '--no-sanity'] + ['--attacks', 'fgsm', 'pgd_sat']
    assert main(sane + ['--sanity-n', '4']) == 0
    assert json.loads(out.read_text())['sanity_cost']['n'] == 4
    assert main(sane + ['--sanity-n', '2']) == 0
    assert 'continuing' in capsys.readouterr().out
    checked = json.loads(out.read_text())
    assert checked['sanity_cost']['n'] == 2 and checked['attacks'] == record['attacks']
    assert main(sane + ['--sanity-n', '2']) == 0
    assert 'nothing to continue' in capsys.readouterr().out
    assert main(args + ['--attacks', 'fgsm', 'pgd_sat', '--seed', '5']) == 2
    assert "is another evaluation: its seed is 0, this one's 5" in capsys.readouterr().err
    assert record['model_kwargs'] == {}  # the model's extra arguments are part of what was evaluated
    assert main(args + ['--attacks', 'fgsm', 'pgd_sat', '--model-kwargs', '{"drop_rate": 0.1}']) == 2
    assert "its model_kwargs is {}, this one's {'drop_rate': 0.1}" in capsys.readouterr().err
    assert main(args + ['--attacks', 'fgsm', '--model-kwargs', '[0.9]']) == 2
    assert '--model-kwargs must be a JSON object' in capsys.readouterr().err
    assert main(args[:-3] + ['--attacks', 'fgsm', '--resume']) == 2
    assert '--resume continues the report at --out: give --out' in capsys.readouterr().err


def test_awnet_eval_of_a_thresholded_route_records_its_model_arguments(cifar10_root, tmp_path):
    from awnet_timm.hub import export_checkpoint
    from hub_fixtures import TINY_AWNET, make_run
    from awnet_timm.eval.cli import load_model
    folder = export_checkpoint(make_run(str(tmp_path / 'run'), model_kwargs=TINY_AWNET), str(tmp_path / 'export')).folder
    assert load_model(f'local-dir:{folder}', {'route_threshold': 0.5})[0].route_threshold == 0.5
    out = tmp_path / 'thresholded.json'
    assert main(['eval', '--model', f'local-dir:{folder}', '--model-kwargs', '{"route_threshold": 0.5}', '--data-dir',
                 cifar10_root, '--n', '4', '--no-sanity', '--no-progress', '--attacks', 'fgsm', '--out', str(out)]) == 0
    record = json.loads(out.read_text())
    assert record['model_kwargs'] == {'route_threshold': 0.5}
    assert '(route_threshold=0.5) on first 4' in out.with_suffix('.md').read_text()


def test_router_attacks_on_a_static_model_are_refused():
    import timm
    model = timm.create_model('cifar_resnet18', **TINY)
    with pytest.raises(ValueError, match='router attacks .* need an AW-Net with a router'):
        build_suite(model, ['router'])
    with pytest.raises(ValueError, match=r'router attacks \(forced_clean\) need'):
        build_suite(model, ['pgd_sat', 'forced_clean'])
    assert [s.name for s in build_suite(model, ['pgd_sat', 'router'])] == ['pgd_sat']  # the default group mix still runs


def test_imagefolder_evaluation_says_which_images_it_took(digits):
    x, y, info = load_eval_data('imagefolder', digits, 'val', 5)
    total = len(load_dataset('imagefolder', digits, 'val'))
    assert len(x) == 5 and info['description'] == f'5 of the {total} ImageFolder val images (a fixed random subset, seed 0)'
    assert info['order'] == 'fixed random subset (seed 0), in folder order'
    _, _, info = load_eval_data('imagefolder', digits, 'val', total)
    assert info['description'] == f'all {total} ImageFolder val images'
    for n in (0, -3):
        with pytest.raises(ValueError, match=f'--n must be a positive number of images, got {n}'):
            load_eval_data('imagefolder', digits, 'val', n)


def test_the_report_set_is_the_exact_test_images_from_500_and_says_so(cifar10_root):
    x_all, y_all, _ = load_eval_data('cifar10-offline', cifar10_root, 'test-exact', None)
    x, y, info = load_eval_data('cifar10-offline', cifar10_root, 'test-exact', 517, start=500)
    assert torch.equal(x, x_all[500:]) and torch.equal(y, y_all[500:]) and (info['start'], info['n']) == (500, 517)
    assert info['description'] == 'CIFAR-10 test-exact images 500-1016 (517) (exact pixels, the report set)'
    _, _, dev = load_eval_data('cifar10-offline', cifar10_root, 'test-exact', 500)
    assert dev['description'] == 'first 500 CIFAR-10 test-exact images (exact pixels, the development set)'
    assert 'start' not in dev  # records of the first n images read as before
    _, _, both = load_eval_data('cifar10-offline', cifar10_root, 'test-exact', 1000)
    assert both['description'] == 'first 1000 CIFAR-10 test-exact images (exact pixels)'  # spans both sets: neither
    for start, n, match in ((500, 1000, 'only 517 from there'), (1017, None, 'only 0 from there'),
                            (-1, 5, 'an image index >= 0')):
        with pytest.raises(ValueError, match=match):
            load_eval_data('cifar10-offline', cifar10_root, 'test-exact', n, start=start)


def test_awnet_eval_download_hands_the_download_to_torchvision(monkeypatch, tmp_path):
    import numpy as np
    import torchvision.datasets
    seen = []

    class FakeCIFAR10:  # torchvision's class as the loader calls it; no network here
        def __init__(self, root, train, download):
            seen.append((root, train, download))
            self.data, self.targets = np.zeros((6, 32, 32, 3), np.uint8), [0, 1, 2, 3, 4, 5]
            self.classes = [str(i) for i in range(10)]
    monkeypatch.setattr(torchvision.datasets, 'CIFAR10', FakeCIFAR10)
    out = tmp_path / 'r.json'
    assert main(['eval', '--model', 'cifar_resnet18', '--model-kwargs', json.dumps(TINY), '--dataset', 'cifar10',
                 '--download', '--data-dir', str(tmp_path / 'cifar'), '--n', '4', '--attacks', 'fgsm', '--no-sanity',
                 '--no-progress', '--out', str(out)]) == 0
    assert seen == [(str(tmp_path / 'cifar'), False, True)]
    assert json.loads(out.read_text())['data']['description'] == 'first 4 CIFAR-10 test images'


def test_plots_keep_labels_apart_and_accuracy_above_zero(tmp_path):
    offsets = label_offsets([(50.0, 30.0), (50.0, 30.0), (50.5, 29.8), (90.0, 10.0)])
    assert len(set(offsets[:3])) == 3 and offsets[3] == offsets[0]  # near points stack, a far one does not
    fig = plot_eps_curve([{'model': 'm', 'eps_curve': [{'eps': 2 / 255, 'robust_acc': 0.4}, {'eps': 8 / 255, 'robust_acc': 0.0}]}],
                         str(tmp_path / 'eps.png'))
    assert fig.axes[0].get_ylim()[0] == 0


def test_command_line_refusals_are_one_line(cifar10_root, digits, trained_awnet, tmp_path, capsys):
    from PIL import Image
    _, run_dir = trained_awnet
    tiny = json.dumps(TINY)
    base = ['eval', '--model', 'cifar_resnet18', '--model-kwargs', tiny, '--data-dir', cifar10_root, '--n', '4',
            '--attacks', 'fgsm', '--no-sanity', '--no-progress']
    blocker = tmp_path / 'file'
    blocker.write_text('x')
    odd = tmp_path / 'odd'
    for i, size in enumerate((16, 20)):
        (odd / 'val' / str(i)).mkdir(parents=True)
        Image.new('RGB', (size, size)).save(odd / 'val' / str(i) / 'a.png')
    record = tmp_path / 'r.json'
    record.write_text(json.dumps({'awnet_eval_version': 1, 'model': 'm', 'clean_acc': 0.5,
                                  'worst_case': {'robust_acc': 0.2}, 'eps_curve': []}))
    cases = [
        (base + ['--n', '0', '--out', str(tmp_path / 'a.json')], '--n must be a positive number of images, got 0'),
        (base + ['--n', '-3', '--out', str(tmp_path / 'a.json')], '--n must be a positive number of images, got -3'),
        (base + ['--out', str(blocker / 'r.json')], f"'{blocker}' is a file, not a folder"),
        (base + ['--out', str(tmp_path)], 'it is a folder'),
        (base[:-4] + ['--attacks', 'router', '--out', str(tmp_path / 'a.json')], 'need an AW-Net with a router'),
        (base[:4] + [json.dumps(dict(TINY, num_classes=3))] + base[5:] + ['--out', str(tmp_path / 'a.json')],
         'the model gives 3 class scores, but the labels go from'),
        (['eval', '--model', 'cifar_resnet18', '--model-kwargs', tiny, '--dataset', 'imagefolder', '--data-dir', str(odd),
          '--n', '2', '--attacks', 'fgsm', '--no-sanity', '--out', str(tmp_path / 'a.json')], 'have different sizes'),
        (['plot', str(tmp_path / 'r.md'), '--out', str(tmp_path / 'p.png')], 'No such file'),
        (['plot', str(blocker), '--out', str(tmp_path / 'p.png')], "awnet eval record '" + str(blocker) + "' is not valid JSON"),
        (['plot', os.path.join(str(run_dir), 'config.json'), '--out', str(tmp_path / 'p.png')],
         "is not an awnet eval record (no 'awnet_eval_version')"),
        (['plot', str(record), str(record), '--labels', 'a', '--out', str(tmp_path / 'p.png')], '2 reports but 1 labels'),
        (['plot', str(record), '--out', str(blocker / 'p.png')], 'is a file, not a folder'),
        (['filters', 'cifar_resnet18', '--layer', '999', '--out', str(tmp_path / 'f.png')], 'conv layer index 999 out of range'),
        (['filters', 'cifar_resnet18', '--out', str(blocker / 'f.png')], 'is a file, not a folder'),
    ]
    if not torch.cuda.is_available():
        cases.append((base + ['--device', 'cuda', '--out', str(tmp_path / 'a.json')], 'torch sees no CUDA GPU'))
    (tmp_path / 'r.md').unlink(missing_ok=True)
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and err.count('\n') == 1 and 'Traceback' not in err, (argv, err)
    assert not (tmp_path / 'a.json').exists()
    odd_ok = tmp_path / 'odd.json'
    two = json.dumps(dict(TINY, num_classes=2))  # the folder's 2 classes: a head of another count is refused
    assert main(['eval', '--model', 'cifar_resnet18', '--model-kwargs', two, '--dataset', 'imagefolder', '--data-dir', str(odd),
                 '--n', '2', '--img-size', '16', '--attacks', 'fgsm', '--no-sanity', '--no-progress', '--out', str(odd_ok)]) == 0
    assert json.loads(odd_ok.read_text())['data']['img_size'] == 16


def test_help_texts_give_each_default_once(capsys):
    for command in ('eval', 'plot', 'filters', 'publish'):
        with pytest.raises(SystemExit):
            main([command, '--help'])
        text = ' '.join(capsys.readouterr().out.split())
        for option in text.split(' --')[1:]:
            assert option.count('(default') <= 1, (command, option)


def test_suite_arguments_are_checked_without_a_model_with_one_line_errors():
    import timm
    from awnet_timm.eval import validate_suite_args
    assert validate_suite_args(['paper', 'fgsm', 'square'], batch_size=1, router_steps=1) == \
        ['fgsm', 'pgd_sat', 'pgd_trades', 'cw_inf', 'autoattack', 'square']
    cases = [
        (dict(names=['pgd_sta']), "unknown attack 'pgd_sta': expected groups paper, router, blackbox, transfer or attacks fgsm,"),
        (dict(names=[]), 'no attacks named: expected groups paper'),
        (dict(names='paper'), "attacks must be a list of attack or group names, got 'paper'"),
        (dict(names=['fgsm'], batch_size=0), 'batch_size must be an integer >= 1, got 0'),
        (dict(names=['fgsm'], batch_size=2.5), 'batch_size must be an integer >= 1, got 2.5'),
        (dict(names=['fgsm'], router_steps=0), 'router_steps must be an integer >= 1, got 0'),
        (dict(names=['fgsm'], square_queries=-1), 'square_queries must be an integer >= 1, got -1'),
        (dict(names=['fgsm'], eps=8), 'eps must be in (0, 1]'),
        (dict(names=['fgsm'], cw_step=0.0), 'cw_step must be a step size > 0'),
        (dict(names=['fgsm'], aa_version='rand'), "aa_version must be one of standard, plus, got 'rand'"),
    ]
    model = timm.create_model('cifar_resnet18', **TINY)
    for kwargs, message in cases:
        with pytest.raises(ValueError) as e:
            validate_suite_args(**kwargs)
        assert message in str(e.value) and '\n' not in str(e.value), (kwargs, str(e.value))
        names = kwargs.pop('names')
        with pytest.raises(ValueError, match=re.escape(message)):  # build_suite checks the same, before building anything
            build_suite(model, names, **kwargs)


def test_attacks_of_one_name_are_refused_before_any_attack():
    import timm
    model = timm.create_model('cifar_resnet18', **TINY).eval()
    x, y = torch.rand(4, 3, 16, 16), torch.zeros(4, dtype=torch.long)
    specs = build_suite(model, ['fgsm']) * 2
    with pytest.raises(EvaluationError, match='attack names must be unique, got fgsm more than once'):
        evaluate_robustness(model, x, y, specs, sanity=False, progress=False)
    with pytest.raises(EvaluationError, match='sanity_n must be at least 1'):
        evaluate_robustness(model, x, y, specs[:1], sanity_n=0, progress=False)


def test_awnet_eval_refuses_bad_attack_arguments_before_loading_anything(tmp_path, capsys):
    base = ['eval', '--model', 'cifar_resnet18', '--data-dir', str(tmp_path / 'no-data'), '--n', '4', '--no-progress',
            '--out', str(tmp_path / 'a.json')]
    cases = [
        (['--attacks', 'fgsm', 'pgd20'], "unknown attack 'pgd20': expected groups paper, router, blackbox, transfer"),
        (['--attacks', 'fgsm', '--router-steps', '0'], 'router_steps must be an integer >= 1, got 0'),
        (['--attacks', 'fgsm', '--aa-batch-size', '0'], 'batch_size must be an integer >= 1, got 0'),
        (['--attacks', 'fgsm', '--square-queries', '0'], 'square_queries must be an integer >= 1, got 0'),
        (['--attacks', 'fgsm', '--batch-size', '0'], '--batch-size must be at least 1, got 0'),
        (['--attacks', 'fgsm', '--sanity-n', '0'], '--sanity-n must be at least 1, got 0'),
    ]
    for extra, message in cases:  # the data directory does not exist: the refusal comes first
        assert main(base + extra) == 2, extra
        err = capsys.readouterr().err
        assert message in err and err.count('\n') == 1 and 'Traceback' not in err, (extra, err)


def test_a_record_of_a_local_dir_export_carries_its_sha256_and_goes_into_the_export(cifar10_root, tmp_path):
    from awnet_timm.hub import export_checkpoint
    from hub_fixtures import TINY_STATIC, make_run, sha256
    run = make_run(str(tmp_path / 'runs' / 'static'), model='cifar_resnet18', model_kwargs=TINY_STATIC)
    folder = export_checkpoint(run, str(tmp_path / 'export')).folder
    out = tmp_path / 'eval.json'
    assert main(['eval', '--model', f'local-dir:{folder}', '--data-dir', cifar10_root, '--n', '4', '--attacks', 'fgsm',
                 '--no-sanity', '--no-progress', '--out', str(out)]) == 0
    record = json.loads(out.read_text())
    assert record['checkpoint_sha256'] == sha256(os.path.join(folder, 'model.safetensors'))
    result = export_checkpoint(run, folder, eval_record=str(out), overwrite=True)  # `awnet export --eval`
    assert result.evaluated and json.loads(open(os.path.join(folder, 'awnet_eval.json')).read())['checkpoint_sha256'] == result.sha256


def _one_line_refusal(argv, message, capsys):
    assert main(argv) == 2, argv
    err = capsys.readouterr().err
    assert message in err and err.count('\n') == 1 and 'Traceback' not in err, (argv, err)


def test_resume_refuses_an_earlier_report_whose_per_image_outcomes_it_did_not_write(cifar10_root, tmp_path, capsys):
    from awnet_timm.hub import export_checkpoint
    from hub_fixtures import TINY_STATIC, make_run
    folder = export_checkpoint(make_run(str(tmp_path / 'run'), model='cifar_resnet18', model_kwargs=TINY_STATIC),
                               str(tmp_path / 'export')).folder
    out = tmp_path / 'report.json'
    args = ['eval', '--model', f'local-dir:{folder}', '--data-dir', cifar10_root, '--n', '8', '--batch-size', '8',
            '--no-sanity', '--no-progress', '--out', str(out)]
    assert main(args + ['--attacks', 'fgsm']) == 0
    good = json.loads(out.read_text())
    fgsm = good['per_sample']['fgsm']
    flipped = ''.join('0' if b == '1' else '1' if c == '1' else '0' for b, c in zip(fgsm, good['per_sample']['clean']))
    broken = [
        (dict(per_sample=dict(good['per_sample'], fgsm='abcdefgh')), "per-image outcome of 'fgsm' is 'abcdefgh'"),
        (dict(per_sample=dict(good['per_sample'], fgsm=[int(b) for b in fgsm])), "expected a string of 8 '0'/'1'"),
        (dict(per_sample=dict(good['per_sample'], fgsm=fgsm[:5])), "expected a string of 8 '0'/'1'"),
        (dict(attacks=[dict(good['attacks'][0], robust_acc=good['attacks'][0]['robust_acc'] + 0.25)]),
         'but its recorded accuracy is'),
        (dict(attacks='fgsm'), "'attacks' must be a list of attack records"),
        (dict(attacks=[{k: v for k, v in good['attacks'][0].items() if k != 'name'}]), "each with a 'name'"),
        (dict(per_sample=list(good['per_sample'].values())), "'per_sample' must be an object"),
        (dict(elapsed_seconds='12'), "'elapsed_seconds' must be a number of seconds"),
    ]
    if flipped.count('1') != fgsm.count('1'):
        broken.append((dict(per_sample=dict(good['per_sample'], fgsm=flipped)), 'but its recorded accuracy is'))
    for change, message in broken:
        out.write_text(json.dumps(dict(good, **change)))
        before = out.read_text()
        _one_line_refusal(args + ['--attacks', 'fgsm', 'pgd_sat', '--resume'], message, capsys)
        assert out.read_text() == before  # refused before anything is written
    from awnet_timm.eval.harness import check_earlier_result
    with pytest.raises(EvaluationError, match='counts images robust that are misclassified when clean'):
        check_earlier_result({'clean_acc': 0.5, 'attacks': [{'name': 'fgsm', 'params': {}, 'robust_acc': 0.5}],
                              'per_sample': {'clean': '1100', 'fgsm': '0011'}}, 4)
    out.write_text(json.dumps(good))
    assert main(args + ['--attacks', 'fgsm', 'pgd_sat', '--resume']) == 0  # the report as written still continues
    assert json.loads(out.read_text())['per_sample']['fgsm'] == fgsm


def test_a_timm_model_is_fed_pixels_normalized_by_its_cfg_and_a_head_of_other_classes_is_refused(
        cifar10_root, tmp_path, capsys):
    import timm
    from safetensors.torch import save_file
    model = timm.create_model('resnet10t', pretrained=False, num_classes=10).eval()
    weights = tmp_path / 'resnet10t.safetensors'
    save_file(model.state_dict(), str(weights))
    out = tmp_path / 'r10t.json'
    args = ['eval', '--model', 'resnet10t', '--data-dir', cifar10_root, '--n', '6', '--batch-size', '6', '--attacks',
            'fgsm', '--no-sanity', '--no-progress']
    assert main(args + ['--checkpoint', str(weights), '--model-kwargs', '{"num_classes": 10}', '--out', str(out)]) == 0
    assert 'pixels are normalized with mean' in capsys.readouterr().out
    record = json.loads(out.read_text())
    mean, std = model.pretrained_cfg['mean'], model.pretrained_cfg['std']
    assert record['input_normalization'] == {'mean': list(mean), 'std': list(std), 'source': 'pretrained_cfg'}
    x, y, _ = load_eval_data('cifar10-offline', cifar10_root, 'test-exact', 6)
    with torch.no_grad():
        normalized = model((x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1))
    assert record['per_sample']['clean'] == ''.join('1' if c else '0' for c in (normalized.argmax(1) == y).tolist())
    assert 'normalized with the model\'s pretrained_cfg mean' in out.with_suffix('.md').read_text()
    _one_line_refusal(args + ['--out', str(tmp_path / 'head.json')],
                      'the model gives 1000 class scores, but the labels go from 0 to 9', capsys)
    assert not (tmp_path / 'head.json').exists()


def test_model_kwargs_a_model_does_not_take_or_cut_off_json_are_one_line(cifar10_root, tmp_path, capsys):
    base = ['eval', '--data-dir', cifar10_root, '--n', '4', '--attacks', 'fgsm', '--no-sanity', '--no-progress',
            '--out', str(tmp_path / 'a.json')]
    _one_line_refusal(base + ['--model', 'awnet_r18', '--model-kwargs', json.dumps(dict(TINY_AWNET, route_treshold=0.9))],
                      "--model-kwargs: awnet_r18 takes no argument 'route_treshold'", capsys)
    _one_line_refusal(base + ['--model', 'resnet10t', '--model-kwargs', '{"route_threshold": 0.9, "num_classes": 10}'],
                      "--model-kwargs: resnet10t takes no argument 'route_threshold'", capsys)
    with pytest.raises(SystemExit):
        main(base + ['--model', 'resnet10t', '--model-kwargs', '{"route_threshold": 0.'])
    err = capsys.readouterr().err
    assert 'argument --model-kwargs: not valid JSON (' in err and 'at character' in err and 'invalid loads' not in err
    assert not (tmp_path / 'a.json').exists()


def test_eval_never_overwrites_a_file_it_did_not_write(cifar10_root, tmp_path, capsys):
    base = ['eval', '--model', 'cifar_resnet18', '--model-kwargs', json.dumps(TINY), '--data-dir', cifar10_root,
            '--n', '4', '--attacks', 'fgsm', '--no-progress']
    notes = tmp_path / 'notes.md'
    notes.write_text('my notes\n')
    _one_line_refusal(base + ['--no-sanity', '--out', str(tmp_path / 'notes.json')], "'" + str(notes) + "' exists beside",
                      capsys)
    assert notes.read_text() == 'my notes\n' and not (tmp_path / 'notes.json').exists()
    other = tmp_path / 'other.json'
    other.write_text('{"mine": 1}\n')
    _one_line_refusal(base + ['--no-sanity', '--out', str(other)], 'exists and is not a report of awnet eval', capsys)
    _one_line_refusal(base + ['--no-sanity', '--out', str(other), '--resume'], 'exists and is not a report', capsys)
    assert other.read_text() == '{"mine": 1}\n'
    plot = tmp_path / 'fresh-eps.png'
    plot.write_bytes(b'not ours')
    _one_line_refusal(base + ['--sanity-n', '2', '--out', str(tmp_path / 'fresh.json')], 'fresh-eps.png', capsys)
    assert plot.read_bytes() == b'not ours'
    report = tmp_path / 'report.json'
    assert main(base + ['--no-sanity', '--out', str(report)]) == 0
    assert main(base + ['--no-sanity', '--out', str(report)]) == 0  # its own report and table: written again


def test_a_hard_route_threshold_makes_the_worst_case_an_upper_bound_wherever_it_is_shown():
    """No attack passes gradients through a hard threshold (route_temperature 0): its worst case is said to be an upper
    bound in the record, its table and the card's rows; a soft threshold (temperature > 0) passes gradients."""
    from awnet_timm.eval.report import upper_bound
    from awnet_timm.hub.card import _bound
    result = {'clean_acc': 0.5, 'attacks': [], 'router': None, 'elapsed_seconds': 1.0, 'per_sample': {},
              'worst_case': {'robust_acc': 0.25, 'w_robust_acc': 0.375, 'attacks': ['pgd_sat']}}
    hard = build_record(result, 'awnet_r18', 'run', {'n': 4}, 8 / 255, 0, 'cpu', model_kwargs={'route_threshold': 0.9})
    assert 'upper bound' in hard['worst_case']['upper_bound'] and 'route_threshold=0.9' in hard['worst_case']['upper_bound']
    assert '(per sample; upper bound)' in markdown_table(hard) and 'upper bound' in hard['model_info']['footnote']
    assert _bound(hard) == ' (upper bound)'
    for kwargs in ({}, {'route_threshold': 0.9, 'route_temperature': 0.1}):
        record = build_record(result, 'awnet_r18', 'run', {'n': 4}, 8 / 255, 0, 'cpu', model_kwargs=kwargs)
        assert 'upper_bound' not in record['worst_case'] and 'upper bound' not in markdown_table(record)
        assert not upper_bound(kwargs) and _bound(record) == ''
