""" `awnet export`: the Hub repo folder (timm config.json, safetensors, model card) and its checks """
import json
import os
import re
import shutil

import pytest
import timm
import torch
from huggingface_hub import ModelCard
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from awnet_timm.cli import main as awnet
from awnet_timm.hub import HubReleaseError, export_checkpoint
from awnet_timm.utils import usual_mode
from hub_fixtures import TINY_AWNET, TINY_STATIC, eval_record, make_run, sha256


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory):
    return make_run(str(tmp_path_factory.mktemp('runs') / 'awnet-mtard'), model_kwargs=TINY_AWNET)


def test_export_writes_the_folder_timm_loads(tiny_run, tmp_path):
    out = str(tmp_path / 'releases' / 'awnet_r18.mtard_cifar10')
    result = export_checkpoint(tiny_run, out)
    assert sorted(os.listdir(out)) == ['README.md', 'config.json', 'model.safetensors']
    assert os.listdir(tmp_path / 'releases') == ['awnet_r18.mtard_cifar10']  # no temporary folder left behind
    assert (result.repo_id, result.tag, result.dtype, result.evaluated) == \
        ('awnet-timm/awnet_r18.mtard_cifar10', 'mtard_cifar10', 'float32', False)
    assert result.sha256 == sha256(os.path.join(out, 'model.safetensors'))

    config = json.load(open(os.path.join(out, 'config.json')))
    assert config['architecture'] == 'awnet_r18' and config['num_classes'] == 10
    assert {k: config['model_args'][k] for k in TINY_AWNET} == TINY_AWNET and config['model_args']['beta'] == 3.0
    cfg = config['pretrained_cfg']
    assert cfg['mean'] == [0, 0, 0] and cfg['std'] == [1, 1, 1]  # [0, 1] inputs: the model normalizes
    assert cfg['input_size'] == [3, 32, 32] and cfg['tag'] == 'mtard_cifar10' and cfg['num_classes'] == 10
    assert config['label_names'][:2] == ['airplane', 'automobile']
    assert not {'hf_hub_id', 'file', 'url', 'source'} & set(cfg)

    run_weights = load_file(os.path.join(tiny_run, 'best.safetensors'))
    exported = load_file(os.path.join(out, 'model.safetensors'))
    assert exported.keys() == run_weights.keys() and all(torch.equal(exported[k], run_weights[k]) for k in exported)
    model = timm.create_model(f'local-dir:{out}', pretrained=True)
    assert model.pretrained_cfg['tag'] == 'mtard_cifar10' and model.pretrained_cfg['label_names'][0] == 'airplane'
    assert all(torch.equal(v, run_weights[k]) for k, v in model.state_dict().items())

    # deterministic: exporting again writes the same bytes, which is what lets `awnet eval` precede the card
    again = export_checkpoint(tiny_run, out, overwrite=True)
    assert again.sha256 == result.sha256
    assert os.listdir(tmp_path / 'releases') == ['awnet_r18.mtard_cifar10']


def test_fp16_export_loads_into_the_float32_model(tiny_run, tmp_path):
    fp32 = export_checkpoint(tiny_run, str(tmp_path / 'fp32'))
    fp16 = export_checkpoint(tiny_run, str(tmp_path / 'fp16'), dtype='fp16')
    assert fp16.dtype == 'float16' and fp16.sha256 != fp32.sha256
    weights = load_file(str(tmp_path / 'fp16' / 'model.safetensors'))
    assert {v.dtype for v in weights.values()} == {torch.float16, torch.int64}  # BN counters stay integers
    assert os.path.getsize(tmp_path / 'fp16' / 'model.safetensors') < 0.6 * os.path.getsize(tmp_path / 'fp32' / 'model.safetensors')
    model = timm.create_model(f'local-dir:{tmp_path / "fp16"}', pretrained=True)
    for k, v in model.state_dict().items():
        assert v.dtype in (torch.float32, torch.int64) and torch.equal(v, weights[k].to(v.dtype))


def test_card_yaml_parses_and_its_numbers_are_the_records(tiny_run, tmp_path, capsys):
    out = str(tmp_path / 'awnet_r18.mtard_cifar10')
    assert awnet(['export', tiny_run, '--out', out]) == 0
    path, record = eval_record(os.path.join(out, 'model.safetensors'), str(tmp_path / 'eval.json'))
    assert awnet(['export', tiny_run, '--out', out, '--eval', path, '--overwrite']) == 0
    printed = capsys.readouterr().out
    assert 'model card with the evaluation record' in printed

    # the record travels with the weights, naming the file in the repo instead of a local path
    shipped = json.load(open(os.path.join(out, 'awnet_eval.json')))
    assert shipped == dict(record, checkpoint='model.safetensors')
    assert shipped['checkpoint_sha256'] == sha256(os.path.join(out, 'model.safetensors'))

    card = ModelCard.load(os.path.join(out, 'README.md'))  # huggingface_hub's parser (YAML and model-index)
    meta = card.data.to_dict()
    assert meta['library_name'] == 'timm' and meta['license'] == 'apache-2.0'
    assert meta['pipeline_tag'] == 'image-classification'
    assert {'timm', 'awnet_timm', 'image-classification'} <= set(meta['tags']) and 'transformers' not in meta['tags']
    assert meta['datasets'] == ['uoft-cs/cifar10'] and meta['metrics'] == ['accuracy']
    results = {r.metric_name: r for r in card.data.eval_results}
    expected = {'Clean accuracy': record['clean_acc']}
    for a in record['attacks']:
        expected[f"Robust accuracy, {a['name']} (Linf, eps 8/255)"] = a['robust_acc']
    expected['Robust accuracy, worst case over 8 attacks (Linf, eps 8/255)'] = record['worst_case']['robust_acc']
    expected['W-Robust accuracy, worst case (Linf, eps 8/255)'] = record['worst_case']['w_robust_acc']
    assert {name: r.metric_value for name, r in results.items()} == {k: round(100 * v, 4) for k, v in expected.items()}
    assert {(r.task_type, r.dataset_type, r.dataset_split, r.metric_type) for r in results.values()} == \
        {('image-classification', 'uoft-cs/cifar10', 'test', 'accuracy')}
    assert card.data.model_name == 'awnet-timm/awnet_r18.mtard_cifar10'

    text = card.text
    rows = {m.group(1): m.group(0) for m in re.finditer(r'^\| `(\w+)` \|.*$', text, re.M)}
    for a in record['attacks']:
        cells = [c.strip() for c in rows[a['name']].split('|')[1:-1]]
        assert cells[3:5] == [f"{100 * a['robust_acc']:.2f}", f"{100 * a['w_robust_acc']:.2f}"]
    worst = next(line for line in text.splitlines() if line.startswith('| **worst case**'))
    assert f"**{100 * record['worst_case']['robust_acc']:.2f}**" in worst
    assert f"**{100 * record['worst_case']['w_robust_acc']:.2f}**" in worst
    assert f"Clean accuracy: {100 * record['clean_acc']:.2f} %" in text
    assert record['checkpoint_sha256'] in text
    assert 'import awnet_timm' in text and "timm.create_model('hf-hub:awnet-timm/awnet_r18.mtard_cifar10'" in text
    assert "timm.create_model('awnet_r18.mtard_cifar10', pretrained=True)" in text  # the registry cfg points here
    assert 'JPEG copy of CIFAR-10' in text and 'NOT bit-exact' in text  # the training data says what it was
    assert '`cifar_resnet56`' in text and '`cifar_wrn34_10`' in text  # MTARD's teachers
    assert '/runs/' not in text and '/data/shared' not in text  # no local paths
    assert "The paper's numbers (not this checkpoint)" in text and '44.56' in text
    assert '| 90.30 | 43.60 | 42.10 | 66.20 |' in printed  # the MODEL_CARD.md row carries the same numbers


def test_export_refuses_a_record_of_another_file(tiny_run, tmp_path):
    out = tmp_path / 'export'
    export_checkpoint(tiny_run, str(out))
    before = sha256(str(out / 'README.md'))
    path, _ = eval_record(os.path.join(tiny_run, 'last.safetensors'), str(tmp_path / 'other.json'),
                          checkpoint_sha256='ab' * 32)
    with pytest.raises(HubReleaseError, match='made on a file with sha256 abab.*run `awnet eval` on the exported file'):
        export_checkpoint(tiny_run, str(out), eval_record=path, overwrite=True)
    assert sha256(str(out / 'README.md')) == before and sorted(os.listdir(tmp_path)) == ['export', 'other.json']
    # an fp16 export is a different file: the record of the fp32 weights does not describe it
    fp32_record, _ = eval_record(str(out / 'model.safetensors'), str(tmp_path / 'fp32.json'))
    with pytest.raises(HubReleaseError, match='for --dtype fp16 that is the float16 file'):
        export_checkpoint(tiny_run, str(tmp_path / 'fp16'), eval_record=fp32_record, dtype='fp16')
    assert not (tmp_path / 'fp16').exists()
    static = make_run(str(tmp_path / 'static-run'), model='cifar_resnet18', model_kwargs=TINY_STATIC)
    with pytest.raises(HubReleaseError, match="record is of model 'awnet_r18', the export is 'cifar_resnet18'"):
        export_checkpoint(static, str(tmp_path / 'static'), eval_record=fp32_record)


def test_export_refuses_a_record_made_with_other_test_time_model_arguments(tiny_run, tmp_path):
    """A record of the thresholded or bounded model does not describe a folder that loads the paper's soft blend."""
    out = tmp_path / 'export'
    export_checkpoint(tiny_run, str(out))
    weights = str(out / 'model.safetensors')
    for kwargs, what in (({'route_threshold': 0.9}, 'route_threshold=0.9'), ({'clean_share_max': 0.5}, 'clean_share_max=0.5')):
        path, _ = eval_record(weights, str(tmp_path / 'thresholded.json'), model_kwargs=kwargs)
        with pytest.raises(HubReleaseError, match=f'made with {what}, but the export loads'):
            export_checkpoint(tiny_run, str(out), eval_record=path, overwrite=True)
        path, _ = eval_record(weights, str(tmp_path / 'local.json'), model=f'local-dir:{out}', model_kwargs=kwargs)
        with pytest.raises(HubReleaseError, match=f'made with {what}, but the export loads'):
            export_checkpoint(tiny_run, str(out), eval_record=path, overwrite=True)
    for kwargs in ({}, {'clean_share_max': 1.0}, {'route_threshold': None}):  # the paper's blend, said or not
        path, _ = eval_record(weights, str(tmp_path / 'plain.json'), model_kwargs=kwargs)
        export_checkpoint(tiny_run, str(out), eval_record=path, overwrite=True)


@pytest.mark.parametrize('change, message', [
    (dict(clean_acc=90.3), "'clean_acc' = 90.3 is not a fraction in \\[0, 1\\]"),
    (dict(awnet_eval_version=2), 'awnet_eval_version 2 is not supported'),
    (dict(worst_case={'robust_acc': 0.4}), "worst_case: missing field 'w_robust_acc'"),
    (dict(checkpoint_sha256='not-a-sha'), 'checkpoint_sha256 should be 64 lowercase hex digits'),
])
def test_export_cli_reports_a_malformed_record(tiny_run, tmp_path, capsys, change, message):
    path, _ = eval_record(os.path.join(tiny_run, 'best.safetensors'), str(tmp_path / 'eval.json'), **change)
    assert awnet(['export', tiny_run, '--out', str(tmp_path / 'x'), '--eval', path]) == 2
    err = capsys.readouterr().err
    assert err.startswith('awnet export: error: evaluation record') and re.search(message, err)
    assert not (tmp_path / 'x').exists()


def test_export_cli_errors_and_help(tiny_run, tmp_path, capsys):
    assert awnet(['export', str(tmp_path / 'nowhere')]) == 2
    assert "checkpoint '" in capsys.readouterr().err
    assert awnet(['export', tiny_run, '--out', str(tmp_path / 'x')]) == 0
    assert awnet(['export', tiny_run, '--out', str(tmp_path / 'x')]) == 2
    assert 'already exists: pass --overwrite' in capsys.readouterr().err
    lone = tmp_path / 'lone'
    lone.mkdir()
    (lone / 'best.safetensors').write_bytes(open(os.path.join(tiny_run, 'best.safetensors'), 'rb').read())
    assert awnet(['export', str(lone / 'best.safetensors')]) == 2
    assert 'no config.json beside the weights' in capsys.readouterr().err
    imagefolder = make_run(str(tmp_path / 'digits-run'), model_kwargs=TINY_AWNET, recipe='pgd_at', dataset='imagefolder')
    assert awnet(['export', imagefolder, '--out', str(tmp_path / 'y')]) == 2
    assert "no default tag for dataset 'imagefolder': pass --tag" in capsys.readouterr().err
    assert awnet(['export', imagefolder, '--out', str(tmp_path / 'y'), '--tag', 'pgd_at_digits', '--weights', 'last']) == 0
    config = json.load(open(tmp_path / 'y' / 'config.json'))
    assert 'label_names' not in config and 'label_names' not in config['pretrained_cfg']  # not CIFAR-10's classes
    with pytest.raises(SystemExit):
        awnet(['export', '--help'])
    help_text = capsys.readouterr().out
    for option in ('--eval', '--dtype', '--weights', '--tag', '--repo-id', '--overwrite', 'awnet eval'):
        assert option in help_text


def test_export_refuses_nonfinite_weights_and_writes_ordinary_files(tiny_run, tmp_path):
    run = tmp_path / 'diverged'
    shutil.copytree(tiny_run, run)
    last = str(run / 'last.safetensors')
    with safe_open(last, 'pt') as f:
        metadata = f.metadata()
    weights = load_file(last)
    weights['head.weight'][0, 0] = float('nan')  # what a diverged run of an older version left behind
    save_file(weights, last, metadata=metadata)
    with pytest.raises(HubReleaseError, match=r"holds NaN or inf in 1 tensors \(head.weight\): the run diverged"):
        export_checkpoint(str(run), str(tmp_path / 'nan'), weights='last')
    assert not (tmp_path / 'nan').exists()
    out = export_checkpoint(str(run), str(tmp_path / 'best')).folder  # best is finite
    assert {f: os.stat(os.path.join(out, f)).st_mode & 0o777 for f in os.listdir(out)} == \
        {f: usual_mode() for f in os.listdir(out)}
    assert os.stat(out).st_mode & 0o777 == usual_mode(directory=True)


def test_card_says_how_many_images_picked_the_best_epoch(tmp_path):
    run = tmp_path / 'run'
    make_run(str(run), model_kwargs=TINY_AWNET, val_split='test')  # selected on the test split: said, with a caution
    card = open(os.path.join(export_checkpoint(str(run), str(tmp_path / 'a')).folder, 'README.md')).read()
    assert 'the first 1000 images of the test split (as the paper picks its best W-Robust checkpoint) (as configured; ' \
        'fewer if the split was smaller)' in card  # no log: only the configured count is known
    assert '**Caution: this checkpoint was chosen on test images' in card
    held = make_run(str(tmp_path / 'held'), model_kwargs=TINY_AWNET)  # the default: a holdout of the training images
    card = open(os.path.join(export_checkpoint(held, str(tmp_path / 'h')).folder, 'README.md')).read()
    assert '1000 training images held out of training' in card and 'Caution' not in card
    with open(run / 'log.jsonl', 'w') as f:
        for epoch in (86, 87, 88):
            f.write(json.dumps({'epoch': epoch, 'val_images': 9 if epoch == 87 else 5}) + '\n')
    card = open(os.path.join(export_checkpoint(str(run), str(tmp_path / 'b')).folder, 'README.md')).read()
    assert 'on the first 9 images of the test split' in card and '1000 images' not in card


def test_card_and_zoo_row_say_when_a_run_stopped_before_its_schedule_ended(tmp_path, capsys):
    run = make_run(str(tmp_path / 'run'), model_kwargs=TINY_AWNET, epochs=17, epoch=15)
    with open(os.path.join(run, 'log.jsonl'), 'w') as f:  # a time limit stopped it after epoch 16 of 17
        for epoch in range(1, 17):
            f.write(json.dumps({'epoch': epoch, 'val_images': 1000}) + '\n')
    card = open(os.path.join(export_checkpoint(run, str(tmp_path / 'a')).folder, 'README.md')).read()
    assert '- **Schedule:** 17 epochs planned, 16 trained (stopped before its schedule ended), batch' in card
    assert 'held out of training; epoch 15 of 17' in card
    assert awnet(['export', run, '--out', str(tmp_path / 'b')]) == 0
    assert '| mtard, 16 of 17 ep |' in capsys.readouterr().out  # the MODEL_CARD.md row
    with open(os.path.join(run, 'log.jsonl'), 'a') as f:  # trained to the end: the schedule as it was
        f.write(json.dumps({'epoch': 17, 'val_images': 1000}) + '\n')
    card = open(os.path.join(export_checkpoint(run, str(tmp_path / 'c')).folder, 'README.md')).read()
    assert '- **Schedule:** 17 epochs, batch' in card and 'planned' not in card


def test_hpm_export_defaults_to_a_tag_that_names_the_hpm_head(tiny_run, tmp_path):
    hpm = make_run(str(tmp_path / 'hpm-run'), model_kwargs=TINY_AWNET, recipe='pgd_at', head='hpm', pretrained=tiny_run)
    result = export_checkpoint(hpm, releases_dir=str(tmp_path / 'releases'))
    assert (result.tag, result.repo_id) == ('pgd_at_hpm_cifar10', 'awnet-timm/awnet_r18.pgd_at_hpm_cifar10')
    assert os.path.basename(result.folder) == 'awnet_r18.pgd_at_hpm_cifar10'
    config = json.load(open(os.path.join(result.folder, 'config.json')))
    assert config['pretrained_cfg']['tag'] == 'pgd_at_hpm_cifar10' and config['model_args']['head'] == 'hpm'
    plain = make_run(str(tmp_path / 'fc-run'), model_kwargs=TINY_AWNET, recipe='pgd_at')
    assert export_checkpoint(plain, releases_dir=str(tmp_path / 'releases')).tag == 'pgd_at_cifar10'


def test_export_targets_that_are_files_are_one_line_errors(tiny_run, tmp_path, capsys):
    a_file = tmp_path / 'a-file'
    a_file.write_text('not a folder')
    for args in (['--out', str(a_file)], ['--out', str(a_file), '--overwrite'], ['--out', str(a_file / 'sub')],
                 ['--releases-dir', str(a_file)]):
        assert awnet(['export', tiny_run, *args]) == 2, args
        err = capsys.readouterr().err
        assert err.startswith('awnet export: error:') and len(err.strip().splitlines()) == 1, err
        assert f"'{a_file}' is a file" in err, err
    assert a_file.read_text() == 'not a folder' and sorted(os.listdir(tmp_path)) == ['a-file']  # no temporary folder
    assert awnet(['export', tiny_run, '--out', str(tmp_path / 'x'), '--eval', str(tmp_path)]) == 2
    assert f"evaluation record '{tmp_path}' is a folder" in capsys.readouterr().err
    assert awnet(['export', tiny_run, '--out', str(tmp_path / 'x'), '--repo-id', 'my org/awnet']) == 2
    assert "error: invalid repo id 'my org/awnet'" in capsys.readouterr().err
    assert not (tmp_path / 'x').exists()


def test_export_of_a_record_made_from_local_dir(tiny_run, tmp_path, capsys):
    """`awnet eval --model local-dir:FOLDER` records the folder as the model; without a sha256 it is refused clearly."""
    folder = export_checkpoint(tiny_run, str(tmp_path / 'my-export')).folder  # a folder not named <arch>.<tag>
    weights = os.path.join(folder, 'model.safetensors')
    path, _ = eval_record(weights, str(tmp_path / 'null.json'), model=f'local-dir:{folder}',
                          checkpoint=f'local-dir:{folder}', checkpoint_sha256=None)
    assert awnet(['export', tiny_run, '--out', folder, '--eval', path, '--overwrite']) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and 'checkpoint_sha256 is null' in err, err
    assert '`awnet eval --model awnet_r18 --checkpoint <export folder>/model.safetensors' in err

    path, record = eval_record(weights, str(tmp_path / 'local-dir.json'), model=f'local-dir:{folder}',
                               checkpoint=f'local-dir:{folder}')
    record['model_info'].update(name=f'local-dir:{folder}', architecture=f'local-dir:{folder}')
    json.dump(record, open(path, 'w'))
    assert awnet(['export', tiny_run, '--out', folder, '--eval', path, '--overwrite']) == 0
    shipped = json.load(open(os.path.join(folder, 'awnet_eval.json')))
    assert (shipped['model'], shipped['checkpoint'], shipped['checkpoint_sha256']) == \
        ('awnet_r18', 'model.safetensors', sha256(weights))
    assert shipped['model_info']['name'] == shipped['model_info']['architecture'] == 'awnet_r18'
    assert str(tmp_path) not in open(os.path.join(folder, 'README.md')).read()  # no local path in the card
    # a local-dir record of another architecture is still refused (its folder's config.json says which)
    static = export_checkpoint(make_run(str(tmp_path / 'static-run'), model='cifar_resnet18', model_kwargs=TINY_STATIC),
                               str(tmp_path / 'static')).folder
    other, _ = eval_record(weights, str(tmp_path / 'other.json'), model=f'local-dir:{static}')
    with pytest.raises(HubReleaseError, match=f"record is of model 'local-dir:{static}', the export is 'awnet_r18'"):
        export_checkpoint(tiny_run, folder, eval_record=other, overwrite=True)


@pytest.mark.parametrize('base, kwargs, variant', [
    ('cifar_resnet18', dict(channels=[16, 32, 64, 128]), 'cifar_resnet18_025'),
    ('awnet_r18', dict(channels=[16, 32, 64, 128], router_channels=[16, 32, 64, 128]), 'awnet_r18_025'),
])
def test_a_run_of_a_base_model_at_compact_widths_exports_as_the_compact_entrypoint(tmp_path, base, kwargs, variant):
    """The zoo's plans train compact models as their base with widths (cifar_resnet18 + channels 16..128): the export
    names the registered entrypoint (cifar_resnet18_025), whose pretrained tag loads it with no extra arguments."""
    run = make_run(str(tmp_path / 'run'), model=base, model_kwargs=kwargs)
    result = export_checkpoint(run, str(tmp_path / 'out'), tag='mtard_cifar10')
    assert (result.architecture, result.repo_id) == (variant, f'awnet-timm/{variant}.mtard_cifar10')
    config = json.loads((tmp_path / 'out' / 'config.json').read_text())
    assert config['architecture'] == variant and not {'channels', 'router_channels'} & set(config.get('model_args', {}))
    loaded = timm.create_model(variant, pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / 'out' / 'model.safetensors')))
    trained = load_file(os.path.join(run, 'best.safetensors'))
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in trained.items())
    _, record = eval_record(str(tmp_path / 'out' / 'model.safetensors'), str(tmp_path / 'eval.json'), model=base)
    assert export_checkpoint(run, str(tmp_path / 'out'), tag='mtard_cifar10', eval_record=str(tmp_path / 'eval.json'),
                             overwrite=True).evaluated  # a record of the run's model name (the zoo's) is its record
    wider = make_run(str(tmp_path / 'wider'), model=base, model_kwargs=dict(kwargs, channels=[16, 32, 64, 256]))
    assert export_checkpoint(wider, str(tmp_path / 'wider-out'), tag='mtard_cifar10').architecture == base


def test_card_describes_the_schedule_and_the_training_attack_the_run_used(tmp_path):
    cosine = make_run(str(tmp_path / 'cos'), model='cifar_resnet18', model_kwargs=TINY_STATIC, recipe='pgd_at',
                      sched='cosine', attack='nfgsm', epochs=15, teacher_nat='', teacher_adv='', teacher_nat_checkpoint='',
                      teacher_adv_checkpoint='')
    card = open(os.path.join(export_checkpoint(cosine, str(tmp_path / 'a')).folder, 'README.md')).read()
    assert 'cosine decay to 0 over the epochs, per step' in card and 'from epochs' not in card
    assert '**Training attack:** N-FGSM (de Jorge et al., 2022): one step of 8/255 from x + U(-2 eps, 2 eps)' in card
    assert 'PGD-10, eps' not in card and 'model in eval mode while attacking' in card
    mtard = make_run(str(tmp_path / 'mt'), model_kwargs=TINY_AWNET, kl_reduction='batchmean', warmup_epochs=2)
    card = open(os.path.join(export_checkpoint(mtard, str(tmp_path / 'b')).folder, 'README.md')).read()
    assert 'lr x0.1 from epochs 75, 90, the first 2 epoch(s) a linear warm-up' in card
    assert "L-inf PGD-10, eps 8/255, step 2/255, normal random start" in card and '**Distillation KL:** `batchmean`' in card


def test_card_shows_other_records_side_by_side(tiny_run, tmp_path, capsys):
    """`--compare LABEL=EVAL_JSON`: the static twin's numbers beside this checkpoint's (issue 17 item 5)."""
    out = str(tmp_path / 'awnet')
    assert awnet(['export', tiny_run, '--out', out]) == 0
    path, record = eval_record(os.path.join(out, 'model.safetensors'), str(tmp_path / 'eval.json'))
    twin = dict(record, clean_acc=0.5, worst_case=dict(record['worst_case'], robust_acc=0.25, w_robust_acc=0.375),
                attacks=[dict(a, robust_acc=0.3) if a['name'] == 'pgd_sat' else a for a in record['attacks']
                         if a['name'] != 'autoattack'])
    with open(tmp_path / 'twin.json', 'w') as f:
        json.dump(twin, f)
    assert awnet(['export', tiny_run, '--out', out, '--eval', path, '--overwrite',
                  '--compare', f"static twin=x (cifar_resnet18)={tmp_path / 'twin.json'}"]) == 0
    text = open(os.path.join(out, 'README.md')).read()
    section = text.split('## Side by side')[1].split('\n## ')[0]
    rows = [line for line in section.splitlines() if line.startswith('| ') and '---' not in line][1:]
    assert len(rows) == 2 and rows[0].startswith('| **this checkpoint** (`awnet_r18.')
    this, other = ([c.strip() for c in r.split('|')[1:-1]] for r in rows)
    assert other[0] == 'static twin=x (cifar_resnet18)'  # the label is everything before the last '='
    assert this[2] == f"{100 * record['clean_acc']:.2f}" and other[2] == '50.00'
    assert other[4] == '30.00' and other[6] == '-' and other[7:9] == ['25.00', '37.50']  # no AutoAttack in its record
    aa = next(a for a in record['attacks'] if a['name'] == 'autoattack')
    assert this[6] == f"{100 * aa['robust_acc']:.2f}"
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:  # argparse's usage error
        awnet(['export', tiny_run, '--out', out, '--overwrite', '--compare', 'no-equals-sign'])
    assert exit_.value.code == 2 and 'expected LABEL=EVAL_JSON' in capsys.readouterr().err
    assert awnet(['export', tiny_run, '--out', out, '--overwrite', '--compare', f'x={tmp_path / "missing.json"}']) == 2
    assert 'does not exist' in capsys.readouterr().err
