"""N-FGSM adversarial training with the attack in eval mode or in train mode (`--attack-bn`), side by side.

One short PGD-AT run per mode, same seed, data and schedule: a quarter-width static CIFAR ResNet-18
(`cifar_resnet18` with channels 16-32-64-128) trained by `pgd_at` with `--attack nfgsm` on the first images
of the offline CIFAR-10 copy, the last `--val-size` of them held out. Each epoch logs clean and PGD-10
(step 2/255, eps 8/255) accuracy on the held-out images; catastrophic overfitting shows as PGD accuracy
collapsing towards 0 while the training accuracy on the N-FGSM examples jumps up. The result, and the
default it chose, are in docs/design.md ("The training attack's BN mode").

    OMP_NUM_THREADS=1 python benchmarks/bench_attack_bn_mode.py --data-dir ../shared/data/cifar10
"""
import argparse
import json
import os
import tempfile
import time

import torch

import awnet_timm  # noqa: F401  registers the models
from awnet_timm.training import TrainConfig, train

MODES = ('eval', 'train')


def run(mode: str, args, out: str):
    cfg = TrainConfig(
        model='cifar_resnet18', model_kwargs={'channels': [16, 32, 64, 128]}, recipe='pgd_at', attack='nfgsm',
        attack_bn=mode, dataset='cifar10-offline', data_dir=args.data_dir, train_size=args.train_images + args.val_size,
        val_split='holdout', val_size=args.val_size, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        weight_decay=5e-4, sched='onecycle', eps=8 / 255, attack_step=2 / 255, val_attack_steps=10, device='cpu',
        seed=args.seed, output=out, run_name=f'attack_bn_{mode}', progress=False, log_interval=10 ** 6)
    t = time.time()
    result = train(cfg)
    with open(os.path.join(result.run_dir, 'log.jsonl')) as f:
        log = [json.loads(line) for line in f]
    return log, time.time() - t


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--data-dir', default=os.path.join(os.path.dirname(__file__), '..', '..', 'shared', 'data', 'cifar10'))
    parser.add_argument('--train-images', type=int, default=10000)
    parser.add_argument('--val-size', type=int, default=500)
    parser.add_argument('--epochs', type=int, default=4)
    parser.add_argument('--batch-size', type=int, default=128)
    parser.add_argument('--lr', type=float, default=0.1)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--modes', nargs='+', default=list(MODES), choices=MODES)
    parser.add_argument('--json', default='', help='also write the per-epoch records here')
    args = parser.parse_args()
    print(f'torch threads: {torch.get_num_threads()}; {args.train_images} train / {args.val_size} holdout images, '
          f'{args.epochs} epochs, batch {args.batch_size}, onecycle lr {args.lr}, N-FGSM (k=2, alpha=eps=8/255)')
    results = {}
    with tempfile.TemporaryDirectory() as out:
        for mode in args.modes:
            log, seconds = run(mode, args, out)
            results[mode] = {'seconds': seconds, 'epochs': log}
    print('\n| attack_bn | epoch | train acc (N-FGSM examples) | holdout clean | holdout PGD-10 |')
    print('|---|---|---|---|---|')
    for mode, r in results.items():
        for rec in r['epochs']:
            print(f"| {mode} | {rec['epoch']} | {rec['train_acc_adv']:.3f} | {rec['val_clean_acc']:.3f} | {rec['val_pgd_acc']:.3f} |")
    for mode, r in results.items():
        print(f"{mode}: {r['seconds']:.0f} s")
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(results, f, indent=1)


if __name__ == '__main__':
    main()
