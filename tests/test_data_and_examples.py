"""The offline CIFAR-10 reader and the quickstart example."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from awnet_timm.data import load_offline_cifar10, to_pixels
from conftest import REPO


def test_exact_and_jpeg_test_images_agree(cifar10_root):
    exact_x, exact_y = load_offline_cifar10(cifar10_root, 'test-exact', limit=50)
    jpeg_x, jpeg_y = load_offline_cifar10(cifar10_root, 'test', limit=50)
    assert exact_x.shape == jpeg_x.shape == (50, 32, 32, 3) and exact_x.dtype == np.uint8
    assert (exact_y == jpeg_y).all() and exact_y[:4].tolist() == [3, 8, 8, 0]  # cat, ship, ship, airplane
    assert 2 < np.abs(exact_x.astype(int) - jpeg_x).mean() < 10  # JPEG q75: close, not equal


def test_to_pixels_gives_nchw_unit_range():
    x = to_pixels(np.full((2, 32, 32, 3), 255, np.uint8))
    assert x.shape == (2, 3, 32, 32) and x.dtype == torch.float32 and x.max() == 1.0


def test_missing_and_malformed_data_fail_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match='expected a directory holding cifar10-test-exact.npz'):
        load_offline_cifar10(str(tmp_path), 'test-exact')
    with pytest.raises(ValueError, match="unknown split 'val'"):
        load_offline_cifar10(str(tmp_path), 'val')
    bad = tmp_path / 'cifar10-test-exact.npz'
    np.savez(bad, x=np.zeros((2, 28, 28), np.uint8), y=np.zeros(2, np.int64))
    with pytest.raises(ValueError, match='is not CIFAR-10'):
        load_offline_cifar10(str(tmp_path), 'test-exact')
    np.savez(bad, images=np.zeros(2))
    with pytest.raises(ValueError, match='expected x and y'):
        load_offline_cifar10(str(tmp_path), 'test-exact')


def _quickstart(*args):
    env = dict(os.environ, HF_HUB_OFFLINE='1')
    return subprocess.run([sys.executable, os.path.join(REPO, 'examples', 'quickstart.py'), '--repeats', '1', *args],
                          capture_output=True, text=True, env=env, timeout=300)


def test_quickstart_runs_on_synthetic_data():
    run = _quickstart('--batch-size', '3')
    assert run.returncode == 0, run.stderr
    assert 'synthetic' in run.stdout and 'P(clean)' in run.stdout and 'ratio' in run.stdout


def test_quickstart_runs_on_cifar10(cifar10_root):
    run = _quickstart('--batch-size', '3', '--data', cifar10_root)
    assert run.returncode == 0, run.stderr
    assert 'first 3 CIFAR-10 test images' in run.stdout and 'accuracy on this batch' in run.stdout


def test_finetune_digits_example_runs(cifar10_root, tmp_path):
    tiny = '{"layers": [1, 1, 1, 1], "channels": [8, 16, 32, 64], "router_layers": [1, 1, 1, 1], "router_channels": [8, 8, 16, 16]}'
    run = subprocess.run([sys.executable, os.path.join(REPO, 'examples', 'finetune_digits.py'), '--cifar10-root', cifar10_root,
                          '--model-kwargs', tiny, '--out', str(tmp_path), '--epochs', '1', '--attack-steps', '1',
                          '--img-size', '16', '--no-progress'], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert 'fine-tuned on digits (16x16, 10 classes)' in run.stdout
    assert sorted(os.listdir(tmp_path / 'digits')) == ['train', 'val']


def test_quickstart_runs_a_model_without_router():
    run = _quickstart('--batch-size', '2', '--model', 'cifar_wrn28_10')
    assert run.returncode == 0, run.stderr
    assert 'cifar_wrn28_10: 36.' in run.stdout and 'ratio' in run.stdout
