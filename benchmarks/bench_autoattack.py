"""Speed of a full AutoAttack ('standard') run, per 1,000 images, through the project's adapter.

AutoAttack's cost depends on how many points survive each stage (APGD-CE, APGD-T, FAB-T, Square): a
point broken early costs little. Without trained weights, this script times the expensive case, in
which every point survives every stage: labels are the model's own predictions and eps is tiny
(`--eps`, default 1e-4), so each stage spends its whole budget on each point. That is the cost for a
point that is robust; a model with robust accuracy r costs about APGD-CE + r x (the rest) per point.
Give `--checkpoint` and `--data-dir` to time a real model on real images at eps 8/255 instead.

    python benchmarks/bench_autoattack.py --model awnet_r18 --n 4           # CPU: a few images
    python benchmarks/bench_autoattack.py --device cuda --n 1000 --batch-size 500
"""
import argparse
import json
import time

import torch

from awnet_timm.attacks import AutoAttack
from awnet_timm.eval.cli import load_eval_data, load_model

STAGES = ('apgd-ce', 'apgd-t', 'fab-t', 'square')


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--model', default='awnet_r18')
    parser.add_argument('--checkpoint', default='')
    parser.add_argument('--data-dir', default='', help='offline CIFAR-10 copy (default: random images)')
    parser.add_argument('--n', type=int, default=4)
    parser.add_argument('--eps', type=float, default=None, help='default 1e-4 (every point survives), 8/255 with --checkpoint')
    parser.add_argument('--batch-size', type=int, default=500)
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--per-stage', action='store_true', help='also time each stage alone on all points')
    parser.add_argument('--json', default='')
    args = parser.parse_args()
    device = torch.device(args.device)
    model, _ = load_model(args.model + (f'={args.checkpoint}' if args.checkpoint else ''))
    model = model.to(device).eval()
    if args.data_dir:
        x, y, _ = load_eval_data('cifar10-offline', args.data_dir, 'test-exact', args.n)
    else:
        x = torch.rand(args.n, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    x = x.to(device)
    eps = args.eps if args.eps is not None else (8 / 255 if args.checkpoint else 1e-4)
    with torch.no_grad():
        pred = model(x).argmax(1)
    y = pred if not args.checkpoint else y.to(device)

    def timed(**kwargs):
        attack = AutoAttack(model, eps=eps, batch_size=args.batch_size, progress=True, **kwargs)
        if device.type == 'cuda':
            torch.cuda.synchronize()
        start = time.perf_counter()
        x_adv = attack.perturb(x, y)
        if device.type == 'cuda':
            torch.cuda.synchronize()
        with torch.no_grad():
            robust = (model(x_adv).argmax(1) == y).float().mean().item()
        return time.perf_counter() - start, robust

    seconds, robust = timed(version='standard')
    result = {'model': args.model, 'device': str(device), 'n': args.n, 'eps': eps, 'seconds': seconds,
              'robust_acc': robust, 'seconds_per_1000_images': seconds / args.n * 1000}
    print(f'{args.model} on {device}: AutoAttack standard on {args.n} images (eps {eps:g}, robust accuracy after '
          f'{robust:.2f}) took {seconds:.1f} s = {seconds / args.n * 1000 / 3600:.2f} h per 1,000 images')
    if args.per_stage:
        result['stages'] = {}
        for stage in STAGES:
            s, _ = timed(version='custom', attacks=[stage])
            result['stages'][stage] = s / args.n * 1000
            print(f'  {stage:8s} alone: {s:.1f} s = {s / args.n * 1000 / 3600:.2f} h per 1,000 images')
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(result, f, indent=2)


if __name__ == '__main__':
    main()
