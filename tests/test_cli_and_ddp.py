""" The `awnet` command, and the same training under torchrun (2 CPU processes, gloo). """
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from awnet_timm.cli import main
from awnet_timm.training import TrainConfig
from conftest import TINY_AWNET, tiny_config


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


def test_finetune_needs_weights_and_bad_options_fail_clearly(capsys, tmp_path):
    assert main(['finetune', '--data-dir', str(tmp_path)]) == 2
    assert 'needs --pretrained' in capsys.readouterr().err
    assert main(['train', '--recipe', 'mtard', '--data-dir', str(tmp_path)]) == 2
    assert 'needs both teachers' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(['train', '--eps', 'eight'])
    assert "expected a number such as 0.03 or 8/255" in capsys.readouterr().err


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
    save_file(params, os.path.join(sys.argv[2], 'rank%s.safetensors' % os.environ['RANK']))
''')


def test_torchrun_two_processes_train_one_model_on_shards(digits, tmp_path):
    cfg = tiny_config(digits, tmp_path / 'runs', recipe='pgd_at', train_size=128, val_size=48, batch_size=32, epochs=2)
    (tmp_path / 'worker.py').write_text(WORKER)
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
           str(tmp_path / 'worker.py'), cfg.to_json(), str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = load_file(str(tmp_path / 'rank0.safetensors')), load_file(str(tmp_path / 'rank1.safetensors'))
    assert all(torch.equal(a[k], b[k]) for k in a)  # gradients were averaged: one model on both ranks
    log = [json.loads(line) for line in open(tmp_path / 'runs' / 'run' / 'log.jsonl')]
    assert [r['epoch'] for r in log] == [1, 2]  # rank 0 alone wrote the log
    assert all(r['val_images'] == 48 and r['images'] == 128 for r in log)  # both shards counted
    assert os.path.isfile(tmp_path / 'runs' / 'run' / 'last.state.safetensors')
