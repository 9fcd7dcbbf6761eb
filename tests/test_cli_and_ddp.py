""" The `awnet` command, and the same training under torchrun (2 CPU processes, gloo). """
import json
import os
import re
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from awnet_timm.cli import build_parser, config_from_args, main
from awnet_timm.data import DeviceLoader
from awnet_timm.hub import export_checkpoint
from awnet_timm.training import TrainConfig, create_model_with_weights, train
from conftest import TINY, TINY_AWNET, tiny_config


@pytest.mark.parametrize('command', ['train', 'finetune'])
def test_help_explains_every_option(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, '--help'])
    assert e.value.code == 0
    text = ' '.join(capsys.readouterr().out.split())
    for name in TrainConfig.__dataclass_fields__:
        assert f"--{name.replace('_', '-')}" in text
    assert '--eps FLOAT L-inf radius of the training attack, in pixel units (default: 8/255)' in text
    assert f"--lr FLOAT learning rate of the classifier (default: {0.1 if command == 'train' else 0.01})" in text
    assert not re.search(r'\(default[^()]*\)\s*\(default', text)  # a help text that states its default says it once


def test_finetune_needs_weights_and_bad_options_fail_clearly(capsys, tmp_path):
    assert main(['finetune', '--data-dir', str(tmp_path)]) == 2
    assert 'needs --pretrained' in capsys.readouterr().err
    assert main(['train', '--recipe', 'mtard', '--data-dir', str(tmp_path)]) == 2
    assert 'needs both teachers' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(['train', '--eps', 'eight'])
    assert "expected a number such as 0.03 or 8/255" in capsys.readouterr().err


def test_runs_pick_their_best_checkpoint_on_a_holdout_of_the_training_images_by_default():
    """Issue 18: the per-epoch evaluation (and the best checkpoint) defaults to the last --val-size training images
    for every dataset, never to the split that `awnet eval` reports on; another split is used only when asked."""
    def val_split(command, *more):
        args = build_parser().parse_args([command, '--pretrained', 'w.safetensors', '--data-dir', 'd', *more])
        return config_from_args(command, args).val_split
    assert val_split('finetune') == 'holdout' and val_split('finetune', '--dataset', 'cifar10-offline') == 'holdout'
    assert val_split('train') == 'holdout' and val_split('train', '--dataset', 'imagefolder') == 'holdout'
    assert val_split('finetune', '--dataset', 'cifar10-offline', '--val-split', 'test') == 'test'
    assert TrainConfig(dataset='imagefolder').val_split == 'holdout' and TrainConfig().val_split == 'holdout'


def _tiny_train_args(digits, out, *more):
    return ['train', '--recipe', 'standard', '--model', 'cifar_resnet18', '--model-kwargs', json.dumps(TINY),
            '--dataset', 'imagefolder', '--data-dir', digits, '--val-split', 'val', '--train-size', '64', '--val-size', '32',
            '--batch-size', '32', '--epochs', '1', '--output', str(out), '--run-name', 'r', '--no-progress', *more]


@pytest.mark.parametrize('more, message', [
    (['--train-size', '16'], 'train_size 16 is less than one batch (batch_size 32)'),
    (['--train-size', '0'], 'train_size must be >= 1'),
    (['--img-size', '0'], 'img_size must be >= 1'),
    (['--data-dir', ''], 'needs its root directory: pass --data-dir'),
    (['--model', 'cifar_resnet_18'], "unknown model 'cifar_resnet_18': not a timm model (did you mean cifar_resnet18"),
    (['--device', 'cuda:99'], "device 'cuda:99'"),
    (['--model', 'local-dir:RUN'], 'is a run directory of `awnet train`, not a Hub export folder'),
    (['--pretrained', 'RUN', '--model', 'awnet_r18'], "was trained as 'cifar_resnet18', not 'awnet_r18'"),
])
def test_bad_input_is_one_line_and_leaves_no_run_folder(digits, teacher_run, tmp_path, capsys, more, message):
    more = [a.replace('RUN', teacher_run) for a in more]
    assert main(_tiny_train_args(digits, tmp_path, *more)) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith('awnet train: error: ') and err.count('\n') == 1, err
    assert os.listdir(tmp_path) == []


def test_ctrl_c_names_the_resume_command_and_resume_clears_max_minutes(digits, tmp_path, capsys, monkeypatch):
    real_set_epoch = DeviceLoader.set_epoch

    def ctrl_c_at(stop_epoch):
        def set_epoch(self, epoch):
            if self.train and epoch == stop_epoch:
                raise KeyboardInterrupt
            real_set_epoch(self, epoch)
        monkeypatch.setattr(DeviceLoader, 'set_epoch', set_epoch)
    ctrl_c_at(0)  # before the first epoch finished: nothing to resume, no half-made folder
    assert main(_tiny_train_args(digits, tmp_path, '--epochs', '2')) == 130
    assert capsys.readouterr().err.strip() == 'awnet train: interrupted before the first epoch finished; nothing was kept'
    assert os.listdir(tmp_path) == []
    ctrl_c_at(1)
    assert main(_tiny_train_args(digits, tmp_path, '--epochs', '2', '--max-minutes', '30')) == 130
    run = str(tmp_path / 'r')
    assert capsys.readouterr().err.strip() == f'awnet train: interrupted; {run} holds epoch 1: continue with `awnet train --resume {run}`'
    monkeypatch.setattr(DeviceLoader, 'set_epoch', real_set_epoch)
    # resume with the inherited limit cleared; --no-progress still prints a line every --log-interval steps
    assert main(['train', '--resume', run, '--max-minutes', '0', '--log-interval', '1']) == 0
    out = capsys.readouterr().out
    assert 'epoch 2/2 step 1/2: loss ' in out and 'epoch 2/2 step 2/2: loss ' in out and 'finished after epoch 2' in out
    assert json.load(open(os.path.join(run, 'config.json')))['max_minutes'] == 0
    args = build_parser().parse_args(['train', '--resume', run, '--max-minutes', 'none', '--img-size', 'None'])
    cfg = config_from_args('train', args)
    assert cfg.max_minutes is None and cfg.img_size is None and cfg.model_kwargs == TINY


def test_grayscale_finetune_of_a_run_with_model_kwargs_then_export(digits, tmp_path, capsys):
    src = train(tiny_config(digits, tmp_path / 'src', model='cifar_resnet18', model_kwargs=TINY, recipe='standard', val_size=0)).run_dir
    capsys.readouterr()
    args = ['finetune', '--pretrained', src, '--model', 'cifar_resnet18', '--model-kwargs', '{"in_chans": 1}',
            '--data-dir', digits, '--train-size', '64', '--val-size', '9', '--batch-size', '32', '--epochs', '1',
            '--attack-steps', '1', '--val-attack-steps', '1', '--output', str(tmp_path), '--run-name', 'gray', '--no-progress']
    assert main(args) == 0
    out = capsys.readouterr().out
    assert f'awnet finetune: run {tmp_path / "gray"}' in out and f'from the weights of {src}' in out and 'from scratch' not in out
    run = str(tmp_path / 'gray')
    assert json.load(open(os.path.join(run, 'config.json')))['model_kwargs'] == dict(TINY, in_chans=1)
    model = create_model_with_weights('cifar_resnet18', run)  # what eval and export build
    assert model.get_submodule(model.pretrained_cfg['first_conv']).weight.shape[1] == 1
    result = export_checkpoint(run, str(tmp_path / 'export'), tag='pgd_at_digits')
    card = open(os.path.join(result.folder, 'README.md')).read()
    assert 'the epoch with the best W-Robust accuracy (clean and PGD-1) on 9 training images held out of training' in card


def test_awnet_train_mtard_end_to_end_on_offline_cifar10_then_resume(cifar10_root, teacher_run, tmp_path, capsys):
    args = ['train', '--recipe', 'mtard', '--model', 'awnet_r18', '--model-kwargs', json.dumps(TINY_AWNET),
            '--teacher-nat', 'cifar_resnet18', '--teacher-nat-checkpoint', teacher_run,
            '--teacher-adv', 'cifar_resnet18', '--teacher-adv-checkpoint', teacher_run,
            '--dataset', 'cifar10-offline', '--data-dir', cifar10_root, '--train-size', '96', '--val-size', '32',
            '--batch-size', '32', '--epochs', '1', '--attack-steps', '2', '--val-attack-steps', '2', '--eps', '8/255',
            '--output', str(tmp_path), '--run-name', 'cli', '--no-progress']
    assert main(args) == 0
    run = tmp_path / 'cli'
    assert sorted(os.listdir(run)) == ['best.safetensors', 'config.json', 'last.safetensors', 'last.state.safetensors', 'log.jsonl']
    cfg = json.loads((run / 'config.json').read_text())
    assert cfg['eps'] == pytest.approx(8 / 255) and cfg['recipe'] == 'mtard'
    # resume from the run directory alone: its own config, with more epochs
    assert main(['train', '--resume', str(run), '--epochs', '2', '--no-progress']) == 0
    assert [json.loads(line)['epoch'] for line in open(run / 'log.jsonl')] == [1, 2]
    assert 'finished after epoch 2' in capsys.readouterr().out


WORKER = textwrap.dedent('''
    import json, os, sys
    from safetensors.torch import save_file
    from awnet_timm.training import TrainConfig, train
    torch_threads = __import__('torch').set_num_threads(1)
    result = train(TrainConfig.from_dict(json.loads(sys.argv[1])))
    params = {k: v.detach().contiguous() for k, v in result.model.named_parameters()}
    params.update({'recipe.' + k: v.contiguous() for k, v in result.recipe_state.items()})
    save_file(params, os.path.join(sys.argv[2], 'rank%s.safetensors' % os.environ['RANK']))
''')


@pytest.mark.parametrize('recipe', ['mtard', 'arat'])
def test_torchrun_two_processes_train_one_model_on_shards(digits, teacher_run, tmp_path, recipe):
    if recipe == 'mtard':
        cfg = tiny_config(digits, tmp_path / 'runs', recipe='mtard', train_size=128, val_size=48, batch_size=32, epochs=2,
                          teacher_nat='cifar_resnet18', teacher_nat_checkpoint=teacher_run,
                          teacher_adv='cifar_resnet18', teacher_adv_checkpoint=teacher_run)
    else:  # ARAT's predictors and CE balance live outside DDP: averaged and summed by the recipe itself
        cfg = tiny_config(digits, tmp_path / 'runs', recipe='arat', model='cifar_resnet18',
                          model_kwargs=dict(TINY, mix_bn=True, type_head=False), train_size=128, val_size=48,
                          batch_size=32, epochs=1)
    (tmp_path / 'worker.py').write_text(WORKER)
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
           str(tmp_path / 'worker.py'), cfg.to_json(), str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = load_file(str(tmp_path / 'rank0.safetensors')), load_file(str(tmp_path / 'rank1.safetensors'))
    assert all(torch.equal(a[k], b[k]) for k in a)  # gradients were averaged: one model on both ranks
    log = [json.loads(line) for line in open(tmp_path / 'runs' / 'run' / 'log.jsonl')]
    if recipe == 'mtard':
        assert {'recipe.w_nat', 'recipe.first_nat', 'recipe.first_adv'} <= a.keys()  # MTARD's weights, from the mean KLs
        assert a['recipe.w_nat'] != 0.5
    else:  # the predictors trained as one, and the CE balance is the clean accuracy of both shards
        assert {'recipe.invariance.predictors.0.0.weight', 'recipe.clean_acc'} <= a.keys()
        assert a['recipe.clean_acc'].item() == pytest.approx(log[-1]['train_acc_clean'])  # both shards', not one rank's
    assert [r['epoch'] for r in log] == list(range(1, cfg.epochs + 1))  # rank 0 alone wrote the log
    assert all(r['val_images'] == 48 and r['images'] == 128 for r in log)  # both shards counted
    assert os.path.isfile(tmp_path / 'runs' / 'run' / 'last.state.safetensors')
