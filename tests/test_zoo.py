""" `awnet zoo`: the smoke plan end to end, the budget and deadline logic, chunked evaluation, pack / unpack,
resume and campaigns (slices that continue each stage from its checkpoint) """
import dataclasses
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
from awnet_timm.zoo.budget import fit_epochs, next_epoch_seconds
from awnet_timm.zoo.pack import PACK_MANIFEST
from awnet_timm.zoo.plan import PLAN_DIR
from awnet_timm.zoo.runner import MANIFEST_VERSION, merge_chunks, shaped, stage_config, summary_table

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
    assert m['plan'] == json.loads(json.dumps(plan.to_dict())) and m['plan_name'] == 'smoke' and m['zoo_version'] == MANIFEST_VERSION
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
        assert s['settings']['val_split'] == 'holdout' and s['selection'] == 'holdout: 64 images'
        assert s['measured']['epochs'] == 1 and s['measured']['images_per_second'] > 0
    assert m['groups']['students']['epochs_planned'] == 1 and m['groups']['students']['members'] == list(STUDENTS)
    (first,) = m['slices']  # one slice: what it trained, how fast, its holdout numbers
    assert first['budget_minutes'] == 30 and first['cpu_minutes'] > 0 and first['evaluated'] and first['finished']
    assert all(first['stages'][n]['epochs_trained'] == 1 and first['stages'][n]['images_per_second'] > 0
               and first['stages'][n]['holdout_best']['epoch'] == 1 for n in STUDENTS + TEACHERS)
    for name in STUDENTS:  # same teachers, seed and epochs, as the paper compares them
        assert m['stages'][name]['teachers'] == {'teacher_nat': 'teacher_clean', 'teacher_adv': 'teacher_robust'}
        assert m['stages'][name]['settings']['seed'] == m['stages'][STUDENTS[0]]['settings']['seed']
    # an AW-Net step does more work per image than its static baseline's
    assert m['stages'][STUDENTS[0]]['probe']['flops_per_image'] > m['stages'][STUDENTS[1]]['probe']['flops_per_image']
    results = m['stages']['evaluate']['results']
    for name in STUDENTS:  # each number with its N: clean accuracy on clean_n images, the worst case on the first 8
        assert results[name]['worst_case_n'] == 8 and results[name]['clean_n'] == 64
        assert results[name]['clean']['test-exact']['n'] == 64
        with open(os.path.join(out, results[name]['record'])) as f:
            record = json.load(f)
        assert len(record['per_sample']['clean']) == 8 and record['worst_case']['robust_acc'] <= record['clean_acc']
        # the sanity checks ran (on the first chunk), so the record's verdict is one
        assert record['sanity'] and record['sanity_passed'] is not None and record['sanity_cost']['n'] == 8
        assert record['eps_curve'] and 'first chunk' in record['chunks']['sanity']
    assert 'forced_clean' in results[STUDENTS[0]]['attacks'] and 'forced_clean' not in results[STUDENTS[1]]['attacks']
    # AW-Net is also attacked by transfer from its static twin at the twin's current weights, and only AW-Net
    twin = f'transfer_{STUDENTS[1]}'
    assert twin in results[STUDENTS[0]]['attacks'] and not [a for a in results[STUDENTS[1]]['attacks'] if 'transfer' in a]
    with open(os.path.join(out, results[STUDENTS[0]]['record'])) as f:
        record = json.load(f)
    transfer = next(a for a in record['attacks'] if a['name'] == twin)
    assert transfer['params']['surrogate_sha256'] == {STUDENTS[1]: sha256_file(os.path.join(out, m['stages'][STUDENTS[1]]['weights']))}
    assert twin in record['worst_case']['attacks']
    assert 'pgd20_acc' in results['teacher_robust'] and 'pgd20_acc' not in results['teacher_clean']
    table = summary_table(m)
    assert f"{STUDENTS[0]}: clean {100 * results[STUDENTS[0]]['clean_acc']:.1f}% (N=64), worst" in table and '(N=8)' in table
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


def test_deadline_skips_what_cannot_finish_and_keeps_evaluation_and_export(smoke, tmp_path, capsys):
    """A budget too small for the baseline student: it does not start; evaluation and export still run, and say so
    as they go (a line per attack and per chunk: a background run has no progress bars)."""
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
    assert stages['evaluate']['results'][STUDENTS[0]]['worst_case_n'] == 8  # never fewer than n_min, even past the deadline
    assert list(stages['export']['folders']) == [STUDENTS[0]]
    assert os.path.isfile(os.path.join(zoo, stages['export']['folders'][STUDENTS[0]], 'awnet_eval.json'))
    printed = capsys.readouterr().out
    assert f'evaluate {STUDENTS[0]}, images 1-8: fgsm ' in printed and f'evaluate {STUDENTS[0]}: 8/8 images attacked' in printed
    assert 'evaluate redone: changed in the plan (attacks' in printed


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
    assert arat['epochs_done'] == m['groups']['students']['epochs_planned'] == stages[STUDENTS[0]]['epochs_done']
    assert arat['settings']['seed'] == stages[STUDENTS[0]]['settings']['seed']
    result = stages['evaluate']['results']['student_arat']
    assert result['worst_case_n'] == 8 and list(result['attacks']) == ['fgsm']
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


def test_next_epoch_is_given_the_slowest_recent_epoch_but_not_one_paused_for_an_hour():
    def given(*seconds):
        return next_epoch_seconds([{'epoch_seconds': t} for t in seconds], fallback=99.)
    assert given() == 99.  # nothing measured yet: the probe's figure
    assert given(500, 140, 150, 145) == 150  # the last three; the slowest of them
    assert given(140, 290, 150) == 290  # a busy epoch (about 2x) counts: the limit must hold on a loaded machine
    assert given(140, 140, 3927) == 140  # an epoch stopped (kill -STOP) for an hour says nothing of the next
    assert given(140, 400, 420) == 420  # a machine that stays busy moves the median: every slow epoch counts
    assert given(140, 3927) == 3927  # two epochs have no outlier to tell: the slow one counts
    stopped = [{'epoch_seconds': 140}, {'epoch_seconds': 740, 'stopped_seconds': 598}, {'epoch_seconds': 150}]
    assert next_epoch_seconds(stopped, fallback=99.) == 150  # ten minutes of kill -STOP for a test run are not a forecast
    busy = [{'epoch_seconds': 140}, {'epoch_seconds': 290, 'stopped_seconds': 0.0}, {'epoch_seconds': 150}]
    assert next_epoch_seconds(busy, fallback=99.) == 290


_CHILD = '''
import importlib.util, signal, sys, time
spec = importlib.util.spec_from_file_location('timing', sys.argv[3])  # the module alone: no timm to import
timing = importlib.util.module_from_spec(spec)
spec.loader.exec_module(timing)
done = []
signal.signal(signal.SIGUSR1, lambda *_: done.append(1))  # the parent's word that it is finished with the child
with timing.StoppedClock(tick=0.05, gap=0.5) as clock:
    print('ready', flush=True)
    n, t, blocks = 10 ** 6, time.time(), []
    while not done if sys.argv[1] == 'until-told' else time.time() - t < float(sys.argv[1]):
        s = time.time()
        sum(range(n))  # one C call: it holds the GIL, so the clock's thread wakes late, with the CPU busy
        blocks.append(time.time() - s)
        n = n * 2 if blocks[-1] < 1.0 and sys.argv[2] == 'long' else n
    print(clock.seconds(), max(blocks), flush=True)
'''


def test_the_stopped_clock_counts_a_kill_stop_but_not_a_busy_process():
    import signal
    import subprocess
    import sys
    import time

    def run(seconds, blocks, stop_for=0.0):
        import awnet_timm.timing
        child = subprocess.Popen([sys.executable, '-c', _CHILD, seconds, blocks, awnet_timm.timing.__file__],
                                 stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline().strip() == 'ready'
        if stop_for:
            time.sleep(1.0)
            child.send_signal(signal.SIGSTOP)
            time.sleep(stop_for)
            child.send_signal(signal.SIGCONT)
            time.sleep(1.0)  # busy again for a second: the clock's thread wakes before the reading
            child.send_signal(signal.SIGUSR1)
        out, _ = child.communicate(timeout=120)
        stopped, longest_block = map(float, out.split())
        return stopped, longest_block

    stopped, longest_block = run('4.0', 'long')
    assert longest_block > 0.5 and stopped == 0.0  # busy past the gap, holding the GIL: not a stop
    # busy in short calls (as torch's, which let the GIL go), stopped for 2.5 s; the child runs until told, so the stop
    # falls inside its loop however late this process is (a child on a clock of its own could end before the stop)
    stopped, _ = run('until-told', 'short', stop_for=2.5)
    assert 2.0 < stopped < 3.5, stopped


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
    assert 'sanity' not in merged and 'sanity' not in merged['chunks']
    first = evaluate_robustness(model, x[:4], y[:4], specs, batch_size=4, sanity_n=2, progress=False)
    merged = merge_chunks([first, evaluate_robustness(model, x[4:], y[4:], specs, batch_size=4, sanity=False, progress=False)])
    assert merged['sanity'] == first['sanity'] and merged['sanity_cost']['n'] == 2  # the checks of the first chunk, said so
    assert merged['eps_curve'] == first['eps_curve'] and 'first chunk (4 images' in merged['chunks']['sanity']


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


def _write_plan(tmp_path, plan, name='plan.json'):
    path = str(tmp_path / name)
    with open(path, 'w') as f:
        json.dump(plan, f)
    return path


def _copy_zoo(out, tmp_path):
    zoo = str(tmp_path / 'zoo')
    shutil.copytree(out, zoo)
    return zoo


def _cheap_smoke_plan(**changes):
    """The smoke plan with a cheap evaluation (FGSM only)."""
    plan = load_plan('smoke').to_dict()
    next(s for s in plan['stages'] if s['name'] == 'evaluate')['attacks'] = ['fgsm']
    return dict(plan, **changes)


def _log_epochs(run_dir):
    with open(os.path.join(run_dir, 'log.jsonl')) as f:
        return [json.loads(line) for line in f if '"epoch_seconds"' in line]


def test_best_checkpoints_are_chosen_on_a_holdout_not_on_the_reported_images(tmp_path):
    """Issue 18 A: every shipped plan selects on a holdout of the training set; selecting on a reported split is refused."""
    for name in list_plans():
        with open(os.path.join(PLAN_DIR, f'{name}.json')) as f:
            optional = [s['name'] for s in json.load(f)['stages'] if s.get('optional')]
        plan = load_plan(name, include=optional)
        for s in plan.stages:
            if s.kind == 'train':
                teachers = {t: ('cifar_resnet18', 'w.safetensors') for t in s.teacher_refs()}
                assert stage_config(plan, s, 'data', 'out', teachers=teachers).val_split == 'holdout', (name, s.name)
    good = load_plan('smoke').to_dict()
    for split in ('test', 'test-exact'):
        path = _write_plan(tmp_path, dict(good, train=dict(good['train'], val_split=split)))
        with pytest.raises(ZooError, match=f"val_split '{split}' picks the best checkpoint on the images the evaluation"):
            load_plan(path)
    with pytest.raises(ZooError, match="val_split 'val'"):
        load_plan(_write_plan(tmp_path, dict(good, train=dict(good['train'], val_split='val'))), dataset='imagefolder')


def test_resume_refits_an_unfinished_group_to_the_time_left(smoke, tmp_path):
    """Issue 18 B: a group none of whose members finished is fitted to the time left, not to the old run's epochs."""
    code, out, data = smoke
    zoo = _copy_zoo(out, tmp_path)
    m = _manifest(zoo)
    for name in STUDENTS:  # as if the run had been stopped in its first student, before any checkpoint
        del m['stages'][name]
        shutil.rmtree(os.path.join(zoo, 'runs', name))
    group = m['groups']['students']
    m['groups']['students'] = dict(group, epochs=29, estimates={STUDENTS[1]: 1.0},
                                   probes={n: dict(m['stages'][TEACHERS[0]]['probe'], images_per_epoch=192) for n in STUDENTS})
    with open(os.path.join(zoo, 'manifest.json'), 'w') as f:
        json.dump(m, f)
    plan = _write_plan(tmp_path, _cheap_smoke_plan())
    assert main(['zoo', 'run', '--plan', plan, '--out', zoo, '--device', 'cpu', '--no-progress', '--resume',
                 '--budget-minutes', '1.5'] + data) == 0
    after = _manifest(zoo)
    for name in STUDENTS:
        assert after['stages'][name]['status'] == 'done', after['stages'][name].get('reason')
        assert after['stages'][name]['epochs_done'] == after['stages'][name]['epochs_planned'] == 1
    assert after['groups']['students']['epochs_planned'] == 1


def test_ctrl_c_in_a_stage_then_resume_continues_from_its_last_checkpoint(digits, request, tmp_path, monkeypatch, capsys):
    """Issue 18 C: a stage stopped by Ctrl-C continues from its own checkpoint, and the message names a working command."""
    import shlex
    from awnet_timm.cli import build_parser
    from awnet_timm.training.trainer import RunInterrupted
    from awnet_timm.zoo import runner
    smoke_plan = load_plan('smoke').to_dict()
    plan = _write_plan(tmp_path, dict(smoke_plan, stages=[dict(smoke_plan['stages'][0], max_epochs=2, share=0.9)]))
    zoo, data = str(tmp_path / 'zoo'), _data_args(request, digits)
    real_train = runner.train

    def ctrl_c_in_epoch_2(cfg):  # epoch 1 finishes and is saved; Ctrl-C comes during epoch 2
        result = real_train(dataclasses.replace(cfg, max_minutes=1e-9))
        raise RunInterrupted(result.run_dir, result.epochs_done)
    monkeypatch.setattr(runner, 'train', ctrl_c_in_epoch_2)
    args = ['zoo', 'run', '--plan', plan, '--out', zoo, '--device', 'cpu', '--no-progress', '--budget-minutes', '20'] + data
    assert main(args) == 130
    err = capsys.readouterr().err
    command = err.split('continue with `')[1].split('`')[0]
    words = shlex.split(command)
    assert words[:3] == ['awnet', 'zoo', 'run'] and '--resume' in words and zoo in words
    build_parser().parse_args(words[1:])  # a command that exists (argparse would exit on a bad one)
    stage = _manifest(zoo)['stages']['teacher_clean']
    assert stage['status'] == 'interrupted' and stage['epochs_done'] == 1
    monkeypatch.setattr(runner, 'train', real_train)
    assert main(words[1:]) == 0
    stage = _manifest(zoo)['stages']['teacher_clean']
    assert stage['status'] == 'done' and stage['epochs_done'] == stage['epochs_planned'] == 2
    assert [r['epoch'] for r in _log_epochs(os.path.join(zoo, 'runs', 'teacher_clean'))] == [1, 2]  # epoch 1 not redone
    assert os.listdir(os.path.join(zoo, 'runs')) == ['teacher_clean']  # nothing moved aside
    assert 'resuming at epoch 2' in capsys.readouterr().out


def test_resume_refuses_a_changed_training_stage_and_redoes_one_when_asked(smoke, tmp_path, capsys):
    """Issue 18 D: an edited plan under the same name: a changed training stage is refused (or redone by --redo);
    a changed evaluation is redone; either way the run says which."""
    code, out, data = smoke
    zoo = _copy_zoo(out, tmp_path)
    plan = _cheap_smoke_plan()
    edited = json.loads(json.dumps(plan))
    edited['stages'][0]['config']['lr'] = 0.05
    args = ['zoo', 'run', '--out', zoo, '--device', 'cpu', '--no-progress', '--resume', '--budget-minutes', '20'] + data
    assert main(args + ['--plan', _write_plan(tmp_path, edited, 'edited.json')]) == 2
    err = capsys.readouterr().err
    assert "stage 'teacher_clean' changed in the plan since it started" in err and 'lr:' in err
    assert '--redo teacher_clean' in err and err.count('\n') == 1
    assert _manifest(zoo)['slices'] == _manifest(out)['slices']  # refused before anything was written
    assert main(args + ['--plan', _write_plan(tmp_path, plan), '--redo', STUDENTS[1]]) == 0
    m = _manifest(zoo)
    redone = m['stages'][STUDENTS[1]]
    assert redone['status'] == 'done' and 'resumed' not in redone and m['stages'][STUDENTS[0]]['resumed']
    assert m['slices'][-1]['redone'] == {STUDENTS[1]: 'asked for (--redo)', 'evaluate': m['slices'][-1]['redone']['evaluate']}
    assert 'changed in the plan (attacks' in m['slices'][-1]['redone']['evaluate']
    assert [d for d in os.listdir(os.path.join(zoo, 'runs')) if d.startswith(STUDENTS[1] + '.replaced-')]
    assert f'{STUDENTS[1]} redone: asked for (--redo)' in capsys.readouterr().out


def test_budget_must_be_a_finite_number_of_minutes(tmp_path, capsys):
    """Issue 18 E: --budget-minutes 0 is not the plan's default, and inf is not a budget."""
    for budget in ('0', 'inf', 'nan', '-1'):
        assert main(['zoo', 'run', '--plan', 'smoke', '--out', str(tmp_path / 'z'), '--budget-minutes', budget,
                     '--data-dir', str(tmp_path / 'nowhere')]) == 2
        err = capsys.readouterr().err
        assert 'the budget must be a finite number of minutes > 0' in err and err.count('\n') == 1, budget
    assert not os.path.exists(tmp_path / 'z')


def test_bad_plans_are_refused_in_one_line_when_they_load(tmp_path, capsys):
    """Issue 18 F, G, H, I: stage names, teachers given twice, evaluation values and JSON types are checked up front."""
    good = load_plan('smoke').to_dict()
    student = good['stages'][2]
    evaluate = dict(good['stages'][4])
    cases = [
        (dict(good, stages=[dict(good['stages'][0], name='../../outside')]), 'stage names are plain folder names'),
        (dict(good, stages=good['stages'][:2] + [dict(student, config=dict(student['config'], teacher_nat_checkpoint='t.safetensors'))]),
         "teacher_nat '@teacher_clean' uses that stage's weights, but teacher_nat_checkpoint"),
        (dict(good, stages=good['stages'][:4] + [dict(evaluate, attacks=['fgsm', 'pgd_nope'])]), r"unknown attacks \['pgd_nope'\]"),
        (dict(good, stages=good['stages'][:4] + [dict(evaluate, batch_size=0)]), 'batch_size must be >= 1'),
        (dict(good, stages=good['stages'][:4] + [dict(evaluate, router_steps=0)]), 'router_steps must be >= 1'),
        (dict(good, stages=good['stages'][:4] + [dict(evaluate, clean_n=0)]), 'clean_n must be >= 1'),
        (dict(good, stages=good['stages'][:4] + [dict(evaluate, min_holdout_pgd=30)]), r'min_holdout_pgd is a holdout accuracy in \[0, 1\]'),
        (dict(good, stages=good['stages'][:4] + [dict(evaluate, sanity_n=0)]), 'sanity_n must be >= 1'),
        (dict(good, stages=good['stages'][:4] + [dict(evaluate, attacks=['transfer_pgd'])]),
         r"transfer attacks \['transfer_pgd'\] apply only to an AW-Net beside a static student \(its surrogate\): name other"),
        (dict(good, stages=[dict(good['stages'][0], share='0.1')]), "share must be a number, got '0.1'"),
        (dict(good, train=[]), 'train must be an object'),
        (dict(good, stages=good['stages'][:1] + [dict(good['stages'][1], after='teacher_clean')]), 'after must be a list of names'),
        (dict(good, stages=good['stages'][:4] + [dict(evaluate, students='student_awnet_r18')]), 'students must be a list of names'),
        (dict(good, budget_minutes='eight'), "budget_minutes must be a number, got 'eight'"),
        (dict(good, stages=[dict(good['stages'][0], max_epochs=2.5)]), 'max_epochs must be an integer'),
    ]
    for i, (plan, message) in enumerate(cases):
        with pytest.raises(ZooError, match=message):
            load_plan(_write_plan(tmp_path, plan, f'plan{i}.json'))
    assert main(['zoo', 'run', '--plan', str(tmp_path / 'plan0.json'), '--data-dir', str(tmp_path), '--out', str(tmp_path / 'z')]) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'plain folder names' in err and not os.path.exists(tmp_path / 'outside')
    with pytest.raises(ZooError, match=r"include is a list of stage names \(e.g. include=\['student_arat'\]\)"):
        load_plan('smoke', include='student_arat')
    with pytest.raises(ZooError, match=r"run_zoo takes a Plan \(e.g. load_plan\('smoke'\)\), got str"):
        from awnet_timm.zoo import run_zoo
        run_zoo('smoke', 5, str(tmp_path), str(tmp_path / 'z'))


def test_a_missing_teacher_file_is_refused_before_the_first_stage(digits, request, tmp_path, capsys):
    """Issue 18 H: an external teacher file that does not exist stops the run before any stage trains."""
    good = load_plan('smoke').to_dict()
    student = good['stages'][2]
    config = dict(student['config'], teacher_nat='cifar_resnet18', teacher_nat_checkpoint=str(tmp_path / 'none.safetensors'))
    plan = _write_plan(tmp_path, dict(good, stages=good['stages'][:2] + [dict(student, config=config)]))
    zoo = str(tmp_path / 'zoo')
    assert main(['zoo', 'run', '--plan', plan, '--out', zoo, '--device', 'cpu', '--no-progress'] + _data_args(request, digits)) == 2
    err = capsys.readouterr().err
    assert "teacher_nat_checkpoint" in err and 'none.safetensors' in err and 'does not exist' in err
    assert not os.path.exists(os.path.join(zoo, 'runs'))  # no stage ran


def test_bad_folders_manifests_and_packs_are_one_line_errors(smoke, tmp_path, capsys):
    """Issue 18 I: targets that are files, manifests that are not, packs that cannot be written or rejoined."""
    code, out, data = smoke
    a_file = tmp_path / 'a-file'
    a_file.write_text('not a folder')
    assert main(['zoo', 'run', '--plan', 'smoke', '--out', str(a_file), '--device', 'cpu'] + data) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'is a file' in err
    for i, text in enumerate(['[1, 2]', '{"zoo_version": 2, "plan_name": "smo']):
        zoo = tmp_path / f'bad{i}'
        zoo.mkdir()
        (zoo / 'manifest.json').write_text(text)
        assert main(['zoo', 'run', '--plan', 'smoke', '--out', str(zoo), '--resume', '--device', 'cpu'] + data) == 2
        err = capsys.readouterr().err
        assert err.count('\n') == 1 and str(zoo / 'manifest.json') in err
    with pytest.raises(PackError, match='is a file, not a folder'):
        pack_run(out, str(a_file))
    with pytest.raises(PackError, match='is a file, not a folder'):
        pack_run(out, str(a_file / 'trip1'))
    tiny = str(tmp_path / 'tiny')
    with pytest.raises(PackError, match='raise max_file_mb'):
        pack_run(out, tiny, max_file_mb=0.005, max_total_mb=60, max_files=1000)
    assert not os.path.exists(tiny)  # refused before a part was written
    first, second = str(tmp_path / 'p1'), str(tmp_path / 'p2')
    one = pack_run(out, first, max_file_mb=0.25, max_total_mb=0.7, max_files=4, rest=str(tmp_path / 'r1'))
    two = pack_run(out, second, max_file_mb=0.2, max_total_mb=0.7, max_files=4, rest=str(tmp_path / 'r2'))
    assert one.manifest['pack_id'] != two.manifest['pack_id']  # two cuts of one run are two packs
    with pytest.raises(PackError, match='different packs'):
        unpack_parts([first, two.trips[1]], str(tmp_path / 'back'))
    with pytest.raises(PackError, match='is a file, not a folder'):
        unpack_parts([first], str(a_file))
    broken = tmp_path / 'broken'
    shutil.copytree(first, broken)
    manifest = json.loads((broken / PACK_MANIFEST).read_text())
    del manifest['parts']
    (broken / PACK_MANIFEST).write_text(json.dumps(manifest))
    assert main(['zoo', 'unpack', str(broken), '--out', str(tmp_path / 'back')]) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and "'parts' must list objects" in err


def _campaign_plan():
    """A campaign: a teacher trained to 2 epochs, then two students of one group to 3, evaluated and exported."""
    smoke = load_plan('smoke').to_dict()
    stage = {s['name']: s for s in smoke['stages']}
    teacher = dict(stage['teacher_clean'], max_epochs=2, share=0.25)
    students = [dict(stage[n], max_epochs=3, share=0.15, config=dict(stage[n]['config'], teacher_nat='@teacher_clean',
                                                                  teacher_adv='@teacher_clean')) for n in STUDENTS]
    evaluate = dict(stage['evaluate'], teachers=['teacher_clean'], students=list(STUDENTS), attacks=['fgsm'], share=0.15)
    export = dict(stage['export'], students=list(STUDENTS))
    return dict(smoke, name='campaign-test', campaign=True, stages=[teacher] + students + [evaluate, export])


def test_campaign_slices_continue_every_stage_to_its_planned_total(digits, request, tmp_path, monkeypatch):
    """Issue 17 item 3: each slice trains what fits and the next one continues it from its last checkpoint, towards
    one planned total (one lr schedule); the group's members stay at equal epochs; evaluation and export follow the
    weights that changed; every slice is recorded. Time is simulated: each slice has room for one round of the group."""
    from awnet_timm.zoo import runner
    room = {'epochs': 1}  # a round fits while the members are below this count (a slice's time, simulated)
    monkeypatch.setattr(runner._Member, 'call_seconds', property(lambda m: 0. if m.done < room['epochs'] else 1e9))
    plan = _write_plan(tmp_path, _campaign_plan())
    zoo = str(tmp_path / 'zoo')
    args = ['zoo', 'run', '--plan', plan, '--out', zoo, '--device', 'cpu', '--no-progress', '--resume',
            '--budget-minutes', '20'] + _data_args(request, digits)
    assert main(args) == 0
    m = _manifest(zoo)
    assert m['campaign'] and m['stages']['teacher_clean']['status'] == 'done'
    for name in STUDENTS:
        s = m['stages'][name]
        assert s['status'] == 'partial' and s['epochs_done'] == 1 and s['epochs_planned'] == 3, s.get('reason')
        assert s['settings']['epochs'] == 3 and 'the next slice continues it' in s['reason']  # the planned total, from the start
    results = m['stages']['evaluate']['results']
    assert set(results) == {'teacher_clean', *STUDENTS} and results[STUDENTS[0]]['epochs_done'] == 1
    assert sorted(m['stages']['export']['folders']) == sorted(STUDENTS)

    def no_probe(*a, **k):
        raise AssertionError('a stage that has trained an epoch is timed by its measured epochs, not probed')
    monkeypatch.setattr(runner, 'probe_stage', no_probe)
    for epochs in (2, 3):
        room['epochs'] = epochs
        assert main(args) == 0
    m = _manifest(zoo)
    assert [len(m['slices']), m['slices'][0]['resumed'], m['slices'][1]['resumed']] == [3, False, True]
    for k, sl in enumerate(m['slices'], 1):  # equal epochs at the end of every slice
        assert [sl['stages'][n]['epochs_after'] for n in STUDENTS] == [k, k]
        assert all(sl['stages'][n]['epochs_trained'] == 1 and sl['stages'][n]['images_per_second'] > 0 for n in STUDENTS)
        assert sl['cpu_minutes'] > 0 and sl['budget_minutes'] == 20
    last = {}  # the slice each student was last evaluated in
    for k, sl in enumerate(m['slices'], 1):  # evaluated: the models whose best (holdout) checkpoint changed, and
        new = [n for n in STUDENTS if sl['stages'][n]['holdout_best']['epoch'] == k]  # AW-Net when its twin's did
        new = [STUDENTS[0]] * (STUDENTS[1] in new and STUDENTS[0] not in new) + new  # (its transfer surrogate)
        assert sl['evaluated'] == (['teacher_clean'] if k == 1 else []) + new  # the teacher's weights: slice 1 only
        last.update(dict.fromkeys(new, k))
    for name in STUDENTS:
        s = m['stages'][name]
        assert s['status'] == 'done' and s['epochs_done'] == 3
        log = _log_epochs(os.path.join(zoo, s['run_dir']))
        assert [r['epoch'] for r in log] == [1, 2, 3]  # continued, never restarted
        lrs = [r['lr'] for r in log]
        assert lrs == sorted(lrs, reverse=True) and lrs[0] > lrs[-1]  # one decaying schedule over the 3 epochs
        assert m['stages']['evaluate']['results'][name]['epochs_done'] == last[name]  # at its epochs then
        with open(os.path.join(zoo, m['stages']['export']['folders'][name], 'README.md')) as f:
            assert f'{last[name]} epoch(s) of a planned 3' in f.read()
    # the campaign's record: a row per slice and stage, the holdout curve per epoch, a plot
    capsys = request.getfixturevalue('capsys')
    capsys.readouterr()
    assert main(['zoo', 'report', zoo, '--plot', str(tmp_path / 'curves.png')]) == 0
    text = capsys.readouterr().out
    for name in STUDENTS:
        assert [line.split('|')[2].strip() for line in text.splitlines() if line.startswith(f'| {name} |')] == ['1', '2', '3']
        assert sum(f'| {name} | fp32 | {k - 1} -> {k} |' in text for k in (1, 2, 3)) == 3
    assert os.path.getsize(tmp_path / 'curves.png') > 0
    assert main(['zoo', 'report', str(tmp_path)]) == 2 and 'no manifest.json' in capsys.readouterr().err
    # the card section a release script appends is the one the zoo's own export ends with (as of its export)
    assert main(['zoo', 'report', zoo, '--provenance', STUDENTS[0]]) == 0
    section = capsys.readouterr().out
    with open(os.path.join(zoo, m['stages']['export']['folders'][STUDENTS[0]], 'README.md')) as f:
        card = f.read()
    head = section.strip().splitlines()[2].split(' in ')[0]  # Plan `...`, stage `...`, on <device> (<precision>)
    assert '3 epoch(s) of a planned 3' in section and '## Trained by `awnet zoo`' in card and head in card
    assert main(['zoo', 'report', zoo, '--provenance', 'evaluate']) == 2
    assert 'not a training stage' in capsys.readouterr().err


def test_campaign_continues_a_run_started_by_the_previous_zoo(smoke, tmp_path):
    """A zoo folder written by zoo_version 1 (teachers only, one teacher stopped mid-stage by a kill) is continued by an
    extended campaign plan of the same name: the finished teacher is kept, the stopped one continues from its
    checkpoint to its own planned total, and the students train."""
    from awnet_timm.training import train
    code, out, data = smoke
    smoke_manifest = _manifest(out)
    campaign = _campaign_plan()
    campaign['stages'][0]['max_epochs'] = 2
    robust = dict(load_plan('smoke').to_dict()['stages'][1], max_epochs=2, share=0.25)
    teachers_plan = dict(campaign, campaign=False, stages=[campaign['stages'][0], robust])
    zoo = str(tmp_path / 'zoo')
    os.makedirs(os.path.join(zoo, 'runs'))
    shutil.copytree(os.path.join(out, 'runs', 'teacher_clean'), os.path.join(zoo, 'runs', 'teacher_clean'))  # 1 of 1 epoch
    old_plan = load_plan(_write_plan(tmp_path, teachers_plan, 'slice1.json'), dataset=smoke_manifest['plan']['dataset'])
    data_dir = smoke_manifest['decoded_data_dir'] or smoke_manifest['data_dir']
    cfg = shaped(old_plan, old_plan.stage('teacher_robust'),
                 stage_config(old_plan, old_plan.stage('teacher_robust'), data_dir, os.path.join(zoo, 'runs'), 'cpu', False), 2)
    assert train(dataclasses.replace(cfg, max_minutes=1e-9)).epochs_done == 1  # killed after epoch 1 of its 2
    v1 = {'zoo_version': 1, 'plan_name': 'campaign-test', 'budget_minutes': 135.0, 'started': '2026-12-04T22:34:58Z',
          'device': smoke_manifest['device'], 'data_dir': data_dir, 'decoded_data_dir': None, 'versions': {},
          'plan': old_plan.to_dict(), 'groups': {}, 'stages': {'teacher_clean': smoke_manifest['stages']['teacher_clean']},
          'elapsed_seconds': 900.0}
    with open(os.path.join(zoo, 'manifest.json'), 'w') as f:
        json.dump(v1, f)
    campaign['stages'][1:3] = [dict(s, max_epochs=1) for s in campaign['stages'][1:3]]
    campaign['stages'].insert(1, robust)
    for s in campaign['stages'][2:4]:
        s['config'] = dict(s['config'], teacher_adv='@teacher_robust')
    plan = _write_plan(tmp_path, campaign)
    assert main(['zoo', 'run', '--plan', plan, '--out', zoo, '--device', 'cpu', '--no-progress', '--resume',
                 '--budget-minutes', '20'] + data) == 0
    m = _manifest(zoo)
    stages = m['stages']
    assert stages['teacher_clean']['status'] == 'done' and stages['teacher_clean']['resumed']
    assert stages['teacher_clean']['epochs_planned'] == 1  # the planned total it was trained for, not the plan's 2
    assert stages['teacher_robust']['status'] == 'done' and stages['teacher_robust']['epochs_done'] == 2
    assert [r['epoch'] for r in _log_epochs(os.path.join(zoo, 'runs', 'teacher_robust'))] == [1, 2]
    assert all(stages[n]['status'] == 'done' for n in STUDENTS + ('evaluate', 'export'))
    assert [s.get('zoo_version') for s in m['slices']] == [1, None] and m['started'] == v1['started']


def test_warm_start_from_released_weights_when_the_campaign_folder_is_gone(smoke, tmp_path, monkeypatch, capsys):
    """Issue 17 item 3: with no campaign folder, `--warm-start RELEASES` starts from the released weights and records
    it: a released teacher is taken as done (and evaluated again), a released student trains from its weights, an
    unreleased one from scratch; a later slice continues from the folder exactly and leaves --warm-start unused."""
    from awnet_timm.hub.export import export_checkpoint
    from awnet_timm.zoo import runner
    room = {'epochs': 1}
    monkeypatch.setattr(runner._Member, 'call_seconds', property(lambda m: 0. if m.done < room['epochs'] else 1e9))
    code, out, data = smoke
    made = _manifest(out)
    releases = tmp_path / 'releases'
    export_checkpoint(os.path.join(out, made['stages']['teacher_clean']['run_dir']), str(releases / 'teacher.standard_t'),
                      dtype='fp16', tag='standard_t')
    shutil.copytree(os.path.join(out, made['stages']['export']['folders'][STUDENTS[0]]), releases / 'awnet.mtard_t')
    plan = _campaign_plan()
    plan['stages'][0]['release'] = 'teacher.standard_t'
    plan['stages'][1]['release'] = 'awnet.mtard_t'
    plan['stages'][2]['release'] = 'static.mtard_t'  # never released
    path = _write_plan(tmp_path, plan)
    zoo = str(tmp_path / 'zoo')
    args = ['zoo', 'run', '--plan', path, '--out', zoo, '--device', 'cpu', '--no-progress', '--resume',
            '--budget-minutes', '20', '--warm-start', str(releases)] + data
    assert main(args) == 0
    m = _manifest(zoo)
    warm = m['warm_start']['stages']
    teacher = m['stages']['teacher_clean']
    assert warm['teacher_clean']['start'].startswith('done') and teacher['status'] == 'done'
    assert teacher['warm_start']['sha256'] == sha256_file(str(releases / 'teacher.standard_t' / 'model.safetensors'))
    assert not os.path.exists(os.path.join(zoo, teacher['run_dir'], 'log.jsonl'))  # not trained here
    assert 'teacher_clean' in m['stages']['evaluate']['results']  # its weights are measured on this machine
    assert warm[STUDENTS[0]]['start'].startswith('trains') and warm[STUDENTS[1]]['start'] == 'from scratch'
    assert 'no release static.mtard_t' in warm[STUDENTS[1]]['why'] and m['slices'][0]['warm_start']
    with open(os.path.join(zoo, m['stages'][STUDENTS[0]]['run_dir'], 'config.json')) as f:
        assert json.load(f)['pretrained'].endswith(os.path.join(STUDENTS[0], 'released.safetensors'))
    with open(os.path.join(zoo, m['stages'][STUDENTS[1]]['run_dir'], 'config.json')) as f:
        assert json.load(f)['pretrained'] == ''
    assert all(m['stages'][n]['epochs_done'] == 1 for n in STUDENTS)
    # the folder is here now: the next slice continues it exactly
    room['epochs'] = 2
    capsys.readouterr()
    assert main(args) == 0
    assert '--warm-start unused' in capsys.readouterr().out
    m = _manifest(zoo)
    assert all(m['stages'][n]['epochs_done'] == 2 for n in STUDENTS) and m['warm_start']['stages'] == warm
    assert [r['epoch'] for r in _log_epochs(os.path.join(zoo, m['stages'][STUDENTS[0]]['run_dir']))] == [1, 2]
    # a release folder without its weights (not restored) is refused before anything starts
    os.remove(releases / 'awnet.mtard_t' / 'model.safetensors')
    assert main(args[:args.index('--out') + 1] + [str(tmp_path / 'zoo2')] + args[args.index('--out') + 2:]) == 2
    assert 'release_weights.py restore' in capsys.readouterr().err
    assert not os.path.exists(tmp_path / 'zoo2' / 'runs' / 'teacher_clean')  # checked before anything was written


def test_the_cpu_plan_names_its_releases_by_their_registered_tags():
    """`--warm-start` finds a stage's weights under its `release`: the name.tag users load with timm."""
    plan = load_plan('cifar10-cpu')
    releases = {s.name: s.release for s in plan.stages if hasattr(s, 'release')}
    assert all(releases.values()), releases
    for name, release in releases.items():
        assert timm.models.get_pretrained_cfg(release) is not None, release
        model, _ = release.split('.')
        assert model.endswith('_025') and model.startswith(plan.stage(name).config['model'])


def test_a_campaign_evaluates_every_student_once_one_reaches_the_gate(tmp_path):
    """Issue 17 item 4: the static twin is evaluated beside AW-Net at equal epochs, though its own holdout is lower.
    The gate reads the runs' logs: once an epoch reached it, it stays open whatever the best checkpoint and whatever
    evaluations the manifest keeps (a --redo of the evaluation drops them all)."""
    from awnet_timm.zoo import runner
    plan = load_plan('cifar10-cpu')
    stage = next(s for s in plan.stages if s.name == 'evaluate')
    assert plan.campaign and stage.min_holdout_pgd == 0.3
    run = runner._Run.__new__(runner._Run)  # only the plan and the runs' logs are read
    run.plan, run.out, run.manifest = plan, str(tmp_path), {'stages': {}}

    def epochs(name, *pgd):  # the epoch records of a run's log, as the trainer writes them
        os.makedirs(run.run_dir(name), exist_ok=True)
        with open(os.path.join(run.run_dir(name), 'log.jsonl'), 'w') as f:
            f.writelines(json.dumps({'epoch': e, 'epoch_seconds': 60.0, 'val_pgd_acc': p}) + '\n' for e, p in enumerate(pgd, 1))
    both = ['student_awnet_r18_025', 'student_cifar_resnet18_025']
    assert run.ready(stage) == []  # nothing trained yet
    epochs(both[0], 0.157, 0.263)
    epochs(both[1], 0.15, 0.172)
    assert run.ready(stage) == []  # both below: the slice's time goes to training
    epochs(both[0], 0.157, 0.263, 0.304)
    assert run.ready(stage) == both
    epochs(both[0], 0.157, 0.263, 0.304, 0.293)  # slice 6: the best checkpoint by W-Robust may sit below the floor
    run.manifest['stages'] = {both[0]: {'best': {'val_pgd_acc': 0.293}}, 'evaluate': {'results': {}}}  # after --redo
    assert run.ready(stage) == both
    run.plan = dataclasses.replace(plan, campaign=False)  # a fit run evaluates every student
    shutil.rmtree(os.path.join(str(tmp_path), 'runs'))
    assert run.ready(stage) == both


def test_a_stage_whose_min_epochs_do_not_fit_does_not_start():
    """A fit run's stage starts only when its min_epochs fit its time (it used to train 1 epoch and end 'done')."""
    from awnet_timm.zoo import runner
    plan = load_plan('smoke')
    stage = dataclasses.replace(plan.stage('teacher_clean'), min_epochs=3, max_epochs=5)
    run = runner._Run.__new__(runner._Run)
    run.plan, run.manifest, run.save = dataclasses.replace(plan, stages=[stage]), {'stages': {}}, lambda: None
    member = runner._Member(stage, None, '', 0, 0, epoch_seconds=10., setup_seconds=1., images=64, probe=None,
                            estimate='probe')
    assert run.planned_total([member], [], 45.) == (4, 4)  # 4 epochs and the setup: 41 s
    assert run.planned_total([member], [], 25.) == (3, 0)  # 3 epochs need 31 s: none is trained
    run.conclude(member, 3, 0, 25.)
    assert run.manifest['stages']['teacher_clean']['status'] == 'skipped'
    assert 'cannot finish: 3 epoch(s) need ~31 s' in run.manifest['stages']['teacher_clean']['reason']
    started = dataclasses.replace(member, done=1, planned=5)  # a run that has epochs keeps them
    assert run.planned_total([started], [], 5.) == (1, 1)


def test_compact_models_are_recorded_and_released_under_their_registered_name(tmp_path):
    """awnet_r18 at a quarter of the widths is awnet_r18_025 (the name its export's config.json gives), in the
    evaluation's results and records and in its release folder's name."""
    from awnet_timm.zoo import runner
    plan = load_plan('cifar10-cpu')
    run = runner._Run.__new__(runner._Run)
    run.plan, run.out, run.manifest = plan, str(tmp_path), {'stages': {}}
    teachers = {t: ('cifar_resnet18', 'w.safetensors') for t in TEACHERS}
    for name in ('student_awnet_r18_025', 'student_cifar_resnet18_025', 'teacher_clean'):
        cfg = stage_config(plan, plan.stage(name), 'data', os.path.join(run.out, 'runs'), teachers=teachers)
        os.makedirs(run.run_dir(name))
        with open(os.path.join(run.run_dir(name), 'config.json'), 'w') as f:
            f.write(cfg.to_json())
        run.manifest['stages'][name] = {'run_dir': f'runs/{name}', 'recipe': cfg.recipe, 'model': cfg.model}
    assert run.architecture('student_awnet_r18_025') == 'awnet_r18_025'
    assert run.release_folder('student_awnet_r18_025') == os.path.join(run.out, 'releases', 'awnet_r18_025.mtard_cifar10-cpu')
    assert run.release_folder('student_cifar_resnet18_025').endswith(os.sep + 'cifar_resnet18_025.mtard_cifar10-cpu')
    assert run.architecture('teacher_clean') == 'cifar_resnet18_025'


def test_a_robust_teachers_pgd20_step_scales_with_eps(monkeypatch):
    """The teachers' PGD-20 is the suite's pgd_sat: 2/255 at eps 8/255, 1/255 at 4/255 (it was 2/255 at any eps)."""
    from awnet_timm.zoo import runner
    smoke = load_plan('smoke')
    plan = dataclasses.replace(smoke, train=dict(smoke.train, eps=4 / 255))
    run = runner._Run.__new__(runner._Run)
    run.plan, run.device, run.progress = plan, torch.device('cpu'), False
    run.manifest = {'stages': {'teacher_robust': {'recipe': 'pgd_at', 'epochs_done': 1, 'epochs_planned': 1}}}
    model = timm.create_model('cifar_resnet18', num_classes=10, layers=[1, 1, 1, 1], channels=[16, 32, 64, 128]).eval()
    run.load, run.architecture = lambda name: model, lambda name: 'cifar_resnet18'
    x, y = torch.rand(4, 3, 32, 32), torch.zeros(4, dtype=torch.long)
    run._split = lambda split, n, cache: (x, y, {'description': 'four images'})
    seen, real = [], runner.evaluate_robustness
    monkeypatch.setattr(runner, 'evaluate_robustness', lambda m, x, y, specs, *a, **k: seen.extend(specs) or real(m, x, y, specs, *a, **k))
    res = run.evaluate_teacher('teacher_robust', plan.stage('evaluate'), {})
    assert [s.params['steps'] for s in seen] == [20] and seen[0].params['step_size'] == pytest.approx(1 / 255)
    assert res['pgd20_params'] == seen[0].params and res['pgd20_n'] == 4


def test_a_student_whose_attacks_grew_since_its_evaluation_is_evaluated_again(smoke, tmp_path):
    """A finished student's evaluation stands only while its record holds the attacks the stage asks for now, expanded,
    with their parameters: one made before 'router' had two_phase_clean (or with another step size) is redone."""
    code, out, data = smoke
    zoo = _copy_zoo(out, tmp_path)
    m = _manifest(zoo)
    path = os.path.join(zoo, m['stages']['evaluate']['results'][STUDENTS[0]]['record'])
    with open(path) as f:
        record = json.load(f)
    record['attacks'] = [a for a in record['attacks'] if a['name'] != 'two_phase_clean']  # as before the group grew
    record['worst_case']['attacks'].remove('two_phase_clean')
    del record['per_sample']['two_phase_clean']
    with open(path, 'w') as f:
        json.dump(record, f)
    plan = _write_plan(tmp_path, m['plan'])
    next(s for s in m['plan']['stages'] if s['name'] == 'evaluate').pop('sanity_n')  # a manifest older than sanity_n:
    with open(os.path.join(zoo, 'manifest.json'), 'w') as f:  # its plan had the default, so the stage did not change
        json.dump(m, f)
    args = ['zoo', 'run', '--plan', plan, '--out', zoo, '--device', 'cpu', '--no-progress',
            '--resume', '--budget-minutes', '20'] + data
    assert main(args) == 0
    after = _manifest(zoo)
    assert after['slices'][-1]['evaluated'] == [STUDENTS[0]] and not after['slices'][-1]['redone']
    with open(path) as f:
        assert 'two_phase_clean' in [a['name'] for a in json.load(f)['attacks']]
    record = _manifest(zoo)['stages']['evaluate']['results'][STUDENTS[1]]['record']
    with open(os.path.join(zoo, record)) as f:
        record = json.load(f)
    pgd = next(a for a in record['attacks'] if a['name'] == 'pgd_sat')
    pgd['params']['step_size'] *= 2  # a changed parameter
    with open(os.path.join(zoo, m['stages']['evaluate']['results'][STUDENTS[1]]['record']), 'w') as f:
        json.dump(record, f)
    assert main(args) == 0
    assert _manifest(zoo)['slices'][-1]['evaluated'] == [STUDENTS[1]]
    assert main(args) == 0
    assert _manifest(zoo)['slices'][-1]['evaluated'] == []  # the records answer the stage: nothing is redone


def test_a_campaign_saved_through_git_continues_in_a_fresh_clone(digits, request, tmp_path, monkeypatch, capsys):
    """Issue 17 item 3 on a machine handed back fresh: `scripts/campaign_state.py save` at the end of a session and
    `restore` in a new clone at another path bring the folder back, and the next slice continues it exactly (the
    run configs' paths are the clone's), recording the restore in the manifest and the report. The evaluation waits
    for the students' holdout to reach `min_holdout_pgd` (here first out of reach: the teacher alone is evaluated),
    and a change of that threshold between slices redoes nothing."""
    from awnet_timm.zoo import runner
    from test_campaign_state import ZOO, git, make_repo, state_script
    room = {'epochs': 1}
    monkeypatch.setattr(runner._Member, 'call_seconds', property(lambda m: 0. if m.done < room['epochs'] else 1e9))
    repo = make_repo(tmp_path / 'repo')
    spec = _campaign_plan()
    evaluate = next(s for s in spec['stages'] if s['kind'] == 'evaluate')
    evaluate['min_holdout_pgd'] = 1.0
    plan = _write_plan(tmp_path, spec)
    args = ['zoo', 'run', '--plan', plan, '--device', 'cpu', '--no-progress', '--resume', '--budget-minutes', '20'
            ] + _data_args(request, digits) + ['--out']
    assert main(args + [str(repo / ZOO)]) == 0
    first = _manifest(str(repo / ZOO))['stages']['evaluate']
    assert set(first['results']) == {'teacher_clean'} and set(first['waiting']) == set(STUDENTS), first
    assert 'not yet evaluated' in first['reason'] and 'min_holdout_pgd 100%' in first['reason']
    evaluate['min_holdout_pgd'] = 0.0
    _write_plan(tmp_path, spec)
    done = state_script(repo, 'save')
    assert done.returncode == 0, done.stderr
    held = git(repo, 'rev-parse', 'HEAD~1')
    clone = tmp_path / 'machine2' / 'repo'
    git(tmp_path, 'clone', '-q', str(repo), str(clone))
    done = state_script(clone, 'restore')
    assert done.returncode == 0, done.stderr
    zoo = str(clone / ZOO)
    room['epochs'] = 2
    capsys.readouterr()
    assert main(args + [zoo]) == 0
    m = _manifest(zoo)
    assert [s.get('restored') for s in m['slices']] == [None, held] and m['restored'][0]['commit'] == held
    assert set(m['stages']['evaluate']['results']) == {'teacher_clean', *STUDENTS} and not m['slices'][1]['redone']
    assert m['slices'][1]['evaluated'] == list(STUDENTS)  # the teacher's evaluation of slice 1 stands
    for name in STUDENTS:
        run_dir = os.path.join(zoo, m['stages'][name]['run_dir'])
        assert m['stages'][name]['epochs_done'] == 2 and [r['epoch'] for r in _log_epochs(run_dir)] == [1, 2]
        with open(os.path.join(run_dir, 'config.json')) as f:
            config = f.read()
        assert zoo in config and str(repo) + os.sep not in config  # the clone's own paths
    assert main(['zoo', 'report', zoo, '--plot', str(tmp_path / 'c.png')]) == 0
    report = capsys.readouterr().out
    assert '(restored)' in report and f'commit {held[:12]}' in report


def _report_folder(tmp_path, **changes):
    """A zoo folder by hand: a training stage with a logged run, one whose run folder is gone, one finished slice."""
    zoo = tmp_path / 'zoo'
    run = zoo / 'runs' / 'student'
    run.mkdir(parents=True)
    run.joinpath('log.jsonl').write_text(''.join(json.dumps({'epoch': e, 'epoch_seconds': 600.0, 'val_clean_acc': 0.5,
                                                             'val_pgd_acc': 0.2}) + '\n' for e in (1, 2)))
    manifest = {'plan_name': 'p', 'stages': {'student': {'kind': 'train', 'run_dir': 'runs/student'},
                                             'gone': {'kind': 'train', 'run_dir': 'runs/gone'},
                                             'evaluate': {'kind': 'evaluate'}},
                'slices': [{'started': 'then', 'finished': 'later', 'budget_minutes': 20,
                            'stages': {'student': {'epochs_trained': 2, 'epochs_before': 0, 'epochs_after': 2}}}]}
    zoo.joinpath('manifest.json').write_text(json.dumps(dict(manifest, **changes)))
    return str(zoo)


def test_zoo_report_says_what_it_cannot_show(tmp_path, capsys):
    zoo = _report_folder(tmp_path)
    assert main(['zoo', 'report', zoo]) == 0
    out = capsys.readouterr().out
    assert "training stage 'gone': its run folder" in out and 'is missing: no holdout curve' in out
    assert '| student | 2 |' in out and 'missing from this report' in out
    zoo = _report_folder(tmp_path / 'no-slices', slices=None)
    assert main(['zoo', 'report', zoo]) == 0
    out = capsys.readouterr().out
    assert "the manifest has no 'slices' list" in out and '0 slice(s)' not in out
    zoo = _report_folder(tmp_path / 'null-stages', slices=[{'started': 'then', 'warm_start': True, 'stages': None}])
    assert main(['zoo', 'report', zoo]) == 0
    out = capsys.readouterr().out
    assert 'warm start' not in out and '(no stage records)' in out and 'slice 1 has no stage records' in out


def test_zoo_report_refusals_come_before_the_report_and_say_what_was_expected(tmp_path, capsys):
    zoo = _report_folder(tmp_path)
    for argv, message in ((['--stages', 'nosuchstage'], "--stages: nosuchstage is not a training stage of"),
                          (['--stages', 'evaluate'], 'is not a training stage'),
                          (['--plot', str(tmp_path / 'zoo' / 'manifest.json' / 'c.png')], 'is a file, not a folder')):
        assert main(['zoo', 'report', zoo] + argv) == 2
        captured = capsys.readouterr()
        assert message in captured.err and captured.err.count('\n') == 1 and not captured.out, (argv, captured)
    assert not os.path.exists(os.path.join(zoo, 'curves.png'))
    assert main(['zoo', 'report', os.path.join(zoo, 'manifest.json')]) == 2
    err = capsys.readouterr().err
    assert 'is a file: give the --out folder' in err and f"('{zoo}' for this one)" in err
