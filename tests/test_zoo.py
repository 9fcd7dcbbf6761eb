""" `awnet zoo`: the smoke plan end to end, the budget and deadline logic, chunked evaluation, pack / unpack """
import json
import math
import os
import shutil

import pytest
import timm
import torch
from safetensors.torch import load_file

from awnet_timm.cli import main
from awnet_timm.eval.harness import evaluate_robustness
from awnet_timm.eval.suite import build_suite
from awnet_timm.utils import sha256_file
from awnet_timm.zoo import PackError, ZooError, load_plan, list_plans, pack_run, unpack_parts
from awnet_timm.zoo.budget import fit_epochs
from awnet_timm.zoo.pack import PACK_MANIFEST
from awnet_timm.zoo.plan import PLAN_DIR
from awnet_timm.zoo.runner import merge_chunks

from conftest import TINY_AWNET

STUDENTS = ('student_awnet_r18', 'student_cifar_resnet18')
TEACHERS = ('teacher_clean', 'teacher_robust')


def _data_args(request, digits):
    """The offline CIFAR-10 copy when the fixture's root has it, scikit-learn's digits otherwise."""
    root = request.config.getoption('--cifar10-root')
    if os.path.isfile(os.path.join(root, 'cifar10-test-exact.npz')):
        return ['--data-dir', root]
    return ['--data-dir', digits, '--dataset', 'imagefolder']


@pytest.fixture(scope='module')
def smoke(request, digits, tmp_path_factory):
    """`awnet zoo run --plan smoke` on CPU: (exit code, zoo folder, data arguments)."""
    out = str(tmp_path_factory.mktemp('zoo') / 'smoke')
    data = _data_args(request, digits)
    # a generous budget: this test checks every stage; the deadline logic has its own test below
    code = main(['zoo', 'run', '--plan', 'smoke', '--out', out, '--device', 'cpu', '--no-progress',
                 '--budget-minutes', '30'] + data)
    return code, out, data


def _manifest(out):
    with open(os.path.join(out, 'manifest.json')) as f:
        return json.load(f)


def test_smoke_plan_runs_every_stage(smoke):
    code, out, _ = smoke
    assert code == 0
    m = _manifest(out)
    plan = load_plan('smoke', dataset=m['plan']['dataset'])
    assert m['plan'] == json.loads(json.dumps(plan.to_dict())) and m['plan_name'] == 'smoke' and m['zoo_version'] == 1
    assert set(m['versions']) >= {'torch', 'timm', 'awnet_timm'} and m['device'].startswith('cpu')
    assert list(m['stages']) == [s.name for s in plan.stages]
    assert all(s['status'] == 'done' for s in m['stages'].values()), {k: s.get('reason') for k, s in m['stages'].items()}
    for name in STUDENTS + TEACHERS:
        s = m['stages'][name]
        for key in ('run_dir', 'recipe', 'settings', 'epochs_planned', 'epochs_done', 'seconds', 'device', 'precision',
                    'best', 'weights', 'allotted_seconds'):
            assert key in s, (name, key)
        assert s['precision'] == 'fp32' and s['epochs_done'] == s['epochs_planned'] == 1
        probe = s['probe']
        assert probe['images_per_second'] > 0 and probe['flops_per_image'] > 0
        assert math.isclose(probe['tflops'], probe['flops_per_image'] * probe['images_per_second'] / 1e12)
        assert os.path.isfile(os.path.join(out, s['weights'])) and s['settings']['epochs'] == 1
    assert m['groups']['students']['epochs'] == 1 and m['groups']['students']['members'] == list(STUDENTS)
    for name in STUDENTS:  # same teachers, seed and epochs, as the paper compares them
        assert m['stages'][name]['teachers'] == {'teacher_nat': 'teacher_clean', 'teacher_adv': 'teacher_robust'}
        assert m['stages'][name]['settings']['seed'] == m['stages'][STUDENTS[0]]['settings']['seed']
    # an AW-Net step does more work per image than its static baseline's
    assert m['stages'][STUDENTS[0]]['probe']['flops_per_image'] > m['stages'][STUDENTS[1]]['probe']['flops_per_image']
    results = m['stages']['evaluate']['results']
    for name in STUDENTS:
        assert results[name]['n'] == 8
        with open(os.path.join(out, results[name]['record'])) as f:
            record = json.load(f)
        assert len(record['per_sample']['clean']) == 8 and record['worst_case']['robust_acc'] <= record['clean_acc']
    assert 'forced_clean' in results[STUDENTS[0]]['attacks'] and 'forced_clean' not in results[STUDENTS[1]]['attacks']
    assert 'pgd20_acc' in results['teacher_robust'] and 'pgd20_acc' not in results['teacher_clean']
    assert sorted(m['stages']['export']['folders']) == sorted(STUDENTS)


def test_smoke_export_loads_with_timm(smoke):
    code, out, _ = smoke
    for folder in _manifest(out)['stages']['export']['folders'].values():
        folder = os.path.join(out, folder)
        with open(os.path.join(folder, 'config.json')) as f:
            config = json.load(f)
        weights = os.path.join(folder, 'model.safetensors')
        model = timm.create_model(config['architecture'], pretrained=True, pretrained_cfg_overlay=dict(file=weights),
                                  **{k: v for k, v in config['model_args'].items() if k != 'num_classes'},
                                  num_classes=config['num_classes'])
        saved = load_file(weights)
        assert all(v.dtype == torch.float16 for v in saved.values() if v.is_floating_point())
        state = model.state_dict()
        assert all(torch.equal(state[k], v.to(state[k].dtype)) for k, v in saved.items())
        with open(os.path.join(folder, 'awnet_eval.json')) as f:
            assert json.load(f)['checkpoint_sha256'] == sha256_file(weights)  # the card's numbers are of this file
        with open(os.path.join(folder, 'README.md')) as f:
            card = f.read()
        assert 'Trained by `awnet zoo`' in card and 'Clean teacher' in card and 'Robust teacher' in card


def test_deadline_skips_what_cannot_finish_and_keeps_evaluation_and_export(smoke, tmp_path):
    """A budget too small for the baseline student: it does not start; evaluation and export still run."""
    code, out, data = smoke
    zoo = str(tmp_path / 'zoo')
    shutil.copytree(out, zoo)
    m = _manifest(zoo)
    del m['stages']['student_cifar_resnet18']  # as if the run had stopped before the baseline student
    shutil.rmtree(os.path.join(zoo, 'runs', 'student_cifar_resnet18'))
    shutil.rmtree(os.path.join(zoo, 'releases'))
    with open(os.path.join(zoo, 'manifest.json'), 'w') as f:
        json.dump(m, f)
    plan = load_plan('smoke').to_dict()
    plan['stages'][4]['attacks'] = ['fgsm']  # the same plan, a cheaper evaluation
    plan_file = str(tmp_path / 'smoke.json')
    with open(plan_file, 'w') as f:
        json.dump(plan, f)
    assert main(['zoo', 'run', '--plan', plan_file, '--out', zoo, '--device', 'cpu', '--no-progress', '--resume',
                 '--budget-minutes', '0.001'] + data) == 0  # 0.06 s: less than any epoch of the baseline
    stages = _manifest(zoo)['stages']
    assert all(stages[n]['status'] == 'done' and stages[n]['resumed'] for n in TEACHERS + STUDENTS[:1])
    baseline = stages['student_cifar_resnet18']
    assert baseline['status'] == 'skipped' and ('cannot finish' in baseline['reason'] or 'no time left' in baseline['reason'])
    assert stages['evaluate']['status'] == 'done' and stages['export']['status'] == 'done'
    assert set(stages['evaluate']['results']) == set(TEACHERS + STUDENTS[:1])
    assert stages['evaluate']['results'][STUDENTS[0]]['n'] == 8  # never fewer than n_min, even past the deadline
    assert list(stages['export']['folders']) == [STUDENTS[0]]
    assert os.path.isfile(os.path.join(zoo, stages['export']['folders'][STUDENTS[0]], 'awnet_eval.json'))


def test_the_optional_arat_student_runs_only_when_included_for_the_students_epochs(smoke, tmp_path):
    code, out, data = smoke
    before = _manifest(out)
    assert 'student_arat' not in before['stages'] and 'student_arat' not in json.dumps(before['plan']['stages'])
    zoo = str(tmp_path / 'zoo')
    shutil.copytree(out, zoo)
    with open(os.path.join(PLAN_DIR, 'smoke.json')) as f:
        plan = json.load(f)
    next(s for s in plan['stages'] if s['name'] == 'evaluate')['attacks'] = ['fgsm']  # a cheaper evaluation
    plan_file = str(tmp_path / 'smoke.json')
    with open(plan_file, 'w') as f:
        json.dump(plan, f)
    assert main(['zoo', 'run', '--plan', plan_file, '--include', 'student_arat', '--out', zoo, '--device', 'cpu',
                 '--no-progress', '--resume', '--budget-minutes', '30'] + data) == 0
    m = _manifest(zoo)
    stages = m['stages']
    assert all(stages[n]['resumed'] for n in TEACHERS + STUDENTS)  # the earlier stages are kept, not retrained
    arat = stages['student_arat']
    assert arat['status'] == 'done' and arat['recipe'] == 'arat' and 'resumed' not in arat
    assert arat['epochs_done'] == m['groups']['students']['epochs'] == stages[STUDENTS[0]]['epochs_done']
    assert arat['settings']['seed'] == stages[STUDENTS[0]]['settings']['seed']
    result = stages['evaluate']['results']['student_arat']
    assert result['n'] == 8 and list(result['attacks']) == ['fgsm']
    folder = os.path.join(zoo, stages['export']['folders']['student_arat'])
    model = timm.create_model(f'local-dir:{folder}', pretrained=True)  # a plain static network: the Adv BN alone
    assert model.mix_bn is False and not any('.clean.' in k or 'predictor' in k for k in model.state_dict())
    with pytest.raises(ZooError, match="optional stages are student_arat"):
        load_plan('smoke', include=['student_nope'])


def test_fit_epochs_matches_counting():
    for seconds, epoch, setup, cap in [(100, 7, 3, 50), (10, 20, 0, 5), (60, 6, 0, 10), (61, 6, 1, 3), (5, 1, 10, 4)]:
        count = 0
        while count < cap and setup + (count + 1) * epoch <= seconds:
            count += 1
        assert fit_epochs(seconds, epoch, setup, cap) == count


def test_merge_chunks_equals_one_evaluation():
    """Two chunks merged give the accuracies, worst case and router means of one evaluation of all images."""
    torch.manual_seed(0)
    model = timm.create_model('awnet_r18', num_classes=10, **TINY_AWNET).eval()
    x, y = torch.rand(8, 3, 16, 16), torch.randint(0, 10, (8,))
    specs = build_suite(model, ['fgsm'])  # deterministic: no random start
    whole = evaluate_robustness(model, x, y, specs, batch_size=4, sanity=False, progress=False)
    merged = merge_chunks([evaluate_robustness(model, x[a:b], y[a:b], specs, batch_size=4, sanity=False, progress=False)
                           for a, b in ((0, 4), (4, 8))])  # chunks on batch boundaries: the same batches
    assert merged['per_sample'] == whole['per_sample']
    same = lambda a, b: math.isclose(a, b, abs_tol=1e-6)  # noqa: E731  float32 means against exact fractions
    assert same(merged['clean_acc'], whole['clean_acc']) and same(merged['worst_case']['robust_acc'], whole['worst_case']['robust_acc'])
    for a, b in zip(merged['attacks'], whole['attacks']):
        assert a['name'] == b['name'] and same(a['robust_acc'], b['robust_acc'])
        if b['router']:
            assert math.isclose(a['router']['p_clean_adv_mean'], b['router']['p_clean_adv_mean'], rel_tol=1e-5)
    assert math.isclose(merged['router']['p_clean_clean_mean'], whole['router']['p_clean_clean_mean'], rel_tol=1e-5)


def test_pack_unpack_round_trip(smoke, tmp_path):
    code, out, _ = smoke
    trip1, rest = str(tmp_path / 'trip1'), str(tmp_path / 'rest')
    result = pack_run(out, trip1, max_file_mb=0.25, max_total_mb=0.7, max_files=4, rest=rest)
    m = result.manifest
    assert m['trips'] >= 2 and len(result.trips) == m['trips'] and result.left_behind
    assert m['files'][0]['path'].startswith('releases/awnet_r18.') and m['files'][0]['priority'] == 'AW-Net release'
    order = ['AW-Net release', 'records and logs', 'baseline release', 'other releases', 'teachers']
    assert [order.index(f['priority']) for f in m['files']] == sorted(order.index(f['priority']) for f in m['files'])
    packed = {f['path'] for f in m['files']}
    assert 'manifest.json' in packed and not any('last.state' in p or p.startswith('data/') for p in packed)
    assert {f'runs/{t}/best.safetensors' for t in TEACHERS} <= packed
    for folder in result.trips:  # every trip within its limits (part manifest included)
        names = os.listdir(folder)
        assert PACK_MANIFEST in names and len(names) <= 4
        assert sum(os.path.getsize(os.path.join(folder, n)) for n in names) <= 0.7 * 2 ** 20
        assert all(os.path.getsize(os.path.join(folder, n)) <= 0.25 * 2 ** 20 for n in names)

    partial = unpack_parts([trip1], str(tmp_path / 'partial'))
    assert partial.missing and set(partial.written) | set(partial.missing) == packed
    assert m['files'][0]['path'] in partial.written  # the most important file comes with the first trip

    dest = str(tmp_path / 'back')
    assert main(['zoo', 'unpack', *result.trips, '--out', dest]) == 0
    for path in packed:
        with open(os.path.join(out, path), 'rb') as a, open(os.path.join(dest, path), 'rb') as b:
            assert a.read() == b.read(), path


def test_unpack_refuses_a_corrupted_part(smoke, tmp_path, capsys):
    code, out, _ = smoke
    trip1 = str(tmp_path / 'trip1')
    pack_run(out, trip1, max_file_mb=15, max_total_mb=60)
    part = os.path.join(trip1, 'zoo-part-000.bin')
    with open(part, 'r+b') as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 1]))
    dest = str(tmp_path / 'back')
    with pytest.raises(PackError, match='corrupted'):
        unpack_parts([trip1], dest)
    assert not os.path.exists(dest)  # nothing half-written
    assert main(['zoo', 'unpack', trip1, '--out', dest]) == 2
    assert 'corrupted' in capsys.readouterr().err


def test_plans_ship_and_bad_plans_are_refused(tmp_path, capsys):
    assert {'smoke', 'cifar10'} <= set(list_plans())
    cifar10 = load_plan('cifar10')
    students = [s for s in cifar10.stages if s.kind == 'train' and s.epochs_group == 'students']
    assert sorted(s.config['model'] for s in students) == ['awnet_r18', 'cifar_resnet18']
    assert all(s.config['recipe'] == 'mtard' for s in students)
    # the optional ARAT student joins the students' group; the training shares shrink in proportion to make room
    arat = load_plan('cifar10', include=['student_arat'])
    assert [s.name for s in arat.stages if s.kind == 'train' and s.epochs_group == 'students'][-1] == 'student_arat'
    assert sum(s.share for s in arat.stages) == pytest.approx(1) and arat.stage('evaluate').share == cifar10.stage('evaluate').share
    assert arat.stage('student_arat').config['recipe'] == 'arat' and 'student_arat' in arat.stage('export').students
    ratio = {s.name: arat.stage(s.name).share / s.share for s in cifar10.stages if s.kind == 'train'}
    assert max(ratio.values()) == pytest.approx(min(ratio.values())) and max(ratio.values()) < 1
    good = load_plan('smoke').to_dict()
    cases = [
        (dict(good, stages=[dict(good['stages'][0], share=1.5)]), 'share'),
        (dict(good, stages=[dict(good['stages'][0], epochs=3)]), 'unknown keys'),
        (dict(good, stages=good['stages'][2:]), 'must be stages listed before it'),
        (dict(good, stages=[dict(good['stages'][0], config=dict(good['stages'][0]['config'], recipe='nope'))]), 'recipe'),
    ]
    for i, (plan, message) in enumerate(cases):
        path = str(tmp_path / f'plan{i}.json')
        with open(path, 'w') as f:
            json.dump(plan, f)
        with pytest.raises(ZooError, match=message):
            load_plan(path)
    assert main(['zoo', 'run', '--plan', 'nope', '--data-dir', str(tmp_path), '--out', str(tmp_path / 'z')]) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and "no plan 'nope'" in err


def test_run_refuses_an_existing_zoo_folder_without_resume(smoke, tmp_path, capsys):
    code, out, data = smoke
    assert main(['zoo', 'run', '--plan', 'smoke', '--out', out, '--device', 'cpu'] + data) == 2
    assert '--resume' in capsys.readouterr().err
