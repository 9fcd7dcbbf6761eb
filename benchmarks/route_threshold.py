"""An AW-Net's test-time route threshold, chosen on its training holdout (never on the test images it is scored on).

A sharpened route (`route_threshold=t`, awnet_timm/models/awnet.py) sends an image through the Clean BN path only when
the router's P(clean) exceeds t. The rule here: t is the `--keep-clean` quantile from below of P(clean) on the
holdout's clean images (0.01: 99% of them keep the Clean BN path). It prints P(clean) on the holdout's clean images and
on PGD-10 examples of them (through the router, and `forced_clean`'s: PGD on the Clean BN path with the signals of the
clean image), and, for the chosen t and its neighbours, which share of each goes to which path and the holdout
accuracy of the thresholded model on each. The examples are made against the model as it is (soft blend): they show
where the router puts them, not the thresholded model's robustness, which `awnet eval --model-kwargs
'{"route_threshold": t}'` with the router attacks (`joint_clean`, `two_phase` aim at t) measures.

    python benchmarks/route_threshold.py --model local-dir:output/campaign/zoo/releases/awnet_r18.mtard_cifar10-cpu \
        --data-dir ../shared/data/cifar10 --out output/route_threshold/awnet_r18_025.json
"""
import argparse
import json
import math
import os
import time

import torch

from awnet_timm.attacks import ForcedRoutePGD, LinfPGD
from awnet_timm.data import load_dataset
from awnet_timm.eval.cli import load_model
from awnet_timm.utils import atomic_write_text


def router_logit_and_logits(model, x, batch_size=250):
    """logit P(clean) (the router's type-logit difference, float32: P(clean) itself rounds to 1 near the top) and the
    class logits of the soft blend, of the Clean BN path and of the Adv BN path. A hard threshold t gives each image the
    logits of one path (tests/test_awnet.py holds it to that), so every t is scored from these without another pass."""
    z, soft, clean, adv = [], [], [], []
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            xb = x[i:i + batch_size]
            out, router = model.forward_with_router(xb)
            z.append(router.type_logits[:, 1].float() - router.type_logits[:, 0].float())
            soft.append(out.float())
            clean.append(model.forward_with_router(xb, route='clean', router_out=router)[0].float())
            adv.append(model.forward_with_router(xb, route='adv', router_out=router)[0].float())
    return torch.cat(z), torch.cat(soft), torch.cat(clean), torch.cat(adv)


def score_thresholds(z, on_clean, on_adv, labels, logit_thresholds):
    """For each threshold (as a logit of P(clean)): the share of images that run the Clean BN path (logit above it) and
    the accuracy of the thresholded model, each image scored by the logits of its path."""
    scores = []
    for zt in logit_thresholds:
        up = z > zt
        routed = torch.where(up[:, None], on_clean, on_adv)
        scores.append({'share_on_clean_bn': float(up.float().mean()),
                       'accuracy': float(routed.argmax(1).eq(labels).float().mean())})
    return scores


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--model', required=True, help="an AW-Net as awnet eval takes it (local-dir:FOLDER, NAME=CHECKPOINT)")
    parser.add_argument('--data-dir', required=True, help='the offline CIFAR-10 folder (e.g. ../shared/data/cifar10)')
    parser.add_argument('--holdout', type=int, default=1000, help='the last N training images (JPEG copy), as the '
                        "training's holdout (default: %(default)s)")
    parser.add_argument('--n-attack', type=int, default=500, help='holdout images attacked (default: %(default)s)')
    parser.add_argument('--keep-clean', type=float, default=0.01, help='t = this quantile of P(clean) on the clean '
                        'holdout images (default: %(default)s: 99%% keep the Clean BN path)')
    parser.add_argument('--threads', type=int, default=0, help='torch threads (0: torch default)')
    parser.add_argument('--out', default='', help='also write the numbers to this JSON file')
    args = parser.parse_args()
    if not 0 < args.keep_clean < 1:
        raise SystemExit(f'--keep-clean must lie strictly between 0 and 1, got {args.keep_clean}')
    if args.threads:
        torch.set_num_threads(args.threads)
    model, weights = load_model(args.model)
    model = model.eval()
    if getattr(model, 'router', None) is None or not getattr(model, 'use_type_head', False):
        raise SystemExit(f'{args.model} has no router with a type head: a route threshold is for AW-Net models')
    train = load_dataset('cifar10-offline', args.data_dir, 'train')
    held = train.subset(len(train) - args.holdout)
    x, y = held.images.float() / 255, held.labels
    start = time.time()
    clean_pass = router_logit_and_logits(model, x)
    z_clean = clean_pass[0]
    quantiles = sorted({0.001, args.keep_clean / 10, args.keep_clean, min(0.5, args.keep_clean * 5)})
    z_of = {q: float(torch.quantile(z_clean.double(), q)) for q in quantiles}
    candidates = {q: 1 / (1 + math.exp(-z)) for q, z in z_of.items()}  # t = sigmoid(logit quantile)
    chosen = candidates[args.keep_clean]

    torch.manual_seed(0)
    xa, ya = x[:args.n_attack], y[:args.n_attack]
    pgd = dict(eps=8 / 255, step_size=2 / 255, steps=10, random_start='uniform')
    examples = {'clean': (x, y), 'pgd10 (through the router)': (LinfPGD(model, loss='ce', **pgd).perturb(xa, ya), ya),
                'forced_clean pgd10': (ForcedRoutePGD(model, 'clean', **pgd).perturb(xa, ya), ya)}
    rows = []
    for name, (inputs, labels) in examples.items():
        z, out, on_clean, on_adv = clean_pass if name == 'clean' else router_logit_and_logits(model, inputs)
        row = {'inputs': name, 'n': len(labels), 'p_clean_mean': float(torch.sigmoid(z).mean()),
               'accuracy_soft': float(out.argmax(1).eq(labels).float().mean()), 'thresholds': {}}
        scores = score_thresholds(z, on_clean, on_adv, labels, [z_of[q] for q in candidates])
        for (q, t), score in zip(candidates.items(), scores):
            row['thresholds'][f'{t:.9g}'] = dict(quantile=q, **score)
        rows.append(row)
    result = {'model': args.model, 'weights': weights, 'holdout': f'last {args.holdout} CIFAR-10 training images (JPEG copy)',
              'n_attack': args.n_attack, 'rule': f'the {args.keep_clean} quantile of P(clean) on the clean holdout images',
              'route_threshold': chosen, 'p_clean_quantiles': {str(q): t for q, t in candidates.items()},
              'logit_quantiles': {str(q): z for q, z in z_of.items()}, 'rows': rows,
              'seconds': time.time() - start, 'torch': torch.__version__}

    print(f"{args.model}: P(clean) on the {result['holdout']}; attacks on the first {args.n_attack} of them, eps 8/255")
    print('\n| inputs | mean P(clean) | accuracy, soft blend (%) | ' + ' | '.join(
        f't = {t:.6g} (logit {z_of[q]:.2f}, q {q}): on Clean BN / accuracy (%)' for q, t in candidates.items()) + ' |')
    print('|---|---:|---:|' + '---:|' * len(candidates))
    for r in rows:
        cells = ' | '.join(f"{100 * v['share_on_clean_bn']:.1f} / {100 * v['accuracy']:.1f}" for v in r['thresholds'].values())
        print(f"| {r['inputs']} | {r['p_clean_mean']:.3f} | {100 * r['accuracy_soft']:.1f} | {cells} |")
    print(f"\nchosen route_threshold (logit {z_of[args.keep_clean]:.2f}): {chosen:.9g} "
          f"({result['rule']}; {result['seconds']:.0f} s)")
    print(f"next: awnet eval --model {args.model} --model-kwargs '{{\"route_threshold\": {chosen:.9g}}}' ...")
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        atomic_write_text(args.out, json.dumps(result, indent=2))


if __name__ == '__main__':
    main()
