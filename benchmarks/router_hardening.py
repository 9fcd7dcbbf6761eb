""" Screen ways to harden AW-Net's router: short fine-tunes from one checkpoint, judged by the per-sample worst case

Each variant fine-tunes the same AW-Net run (its last checkpoint, its recipe, teachers and model) on the first
`--train-size` training images (the last 1000 of them its own holdout) for `--epochs` epochs at a cosine lr from `--lr`:
- `paper`: the paper's training, continued (the control);
- `router_aware`: `--router-aware` of each batch also attacked by RouterAwarePGD and trained on the router's route;
- `router_aware_bounded`: the same, trained with the Clean BN's share of MixBN capped at `--train-bound`
  (`clean_share_max`). The paper's training sends every input down a forced route, which no cap touches: capping it
  in training is the control capped at test time, below.
Every model, and the starting checkpoint itself (`start`), is then evaluated at each test-time cap of `--bounds` on
the first `--n` images of the run's training holdout (never trained on, never the test set): clean accuracy, every
attack of `--attacks` (default: PGD-20, CW-inf, the whole router group with the detached-router PGD, and PGD-20
transferred from the static twin), and the per-sample worst case over all of them. The static twin is evaluated on
the same images with the attacks that apply to it.

    python benchmarks/router_hardening.py --run output/campaign/zoo/runs/student_awnet_r18_025 \\
        --twin output/campaign/zoo/runs/student_cifar_resnet18_025 --out output/router_hardening

Writes OUT/results.json (one row per model and cap, with its per-image results), OUT/results.md and OUT/tradeoff.png
(clean against worst-case accuracy); fine-tunes go to OUT/runs/<variant>. A row already in results.json for the
same settings is kept, so a stopped screening continues where it stopped.
"""
import argparse
import dataclasses
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from awnet_timm.data import load_dataset  # noqa: E402
from awnet_timm.eval.harness import evaluate_robustness  # noqa: E402
from awnet_timm.eval.suite import build_suite  # noqa: E402
from awnet_timm.training import create_model_with_weights, train  # noqa: E402
from awnet_timm.training.trainer import load_run_config  # noqa: E402
from awnet_timm.utils import atomic_write_text  # noqa: E402

VARIANTS = {
    'paper': lambda a: {},
    'router_aware': lambda a: {'router_aware': a.router_aware},
    'router_aware_bounded': lambda a: {'router_aware': a.router_aware, 'clean_share_max': a.train_bound},
}


def fine_tune(args, variant: str) -> str:
    """The run folder of `variant`'s fine-tune (trained unless its last checkpoint is there)."""
    cfg = load_run_config(args.run)
    change = VARIANTS[variant](args)
    kwargs = dict(cfg.model_kwargs)
    if 'clean_share_max' in change:
        kwargs['clean_share_max'] = change.pop('clean_share_max')
    cfg = dataclasses.replace(
        cfg, pretrained=os.path.join(args.run, 'last.safetensors'), resume='', train_size=args.train_size,
        epochs=args.epochs, lr=args.lr, router_lr=args.lr * cfg.router_lr / cfg.lr, sched='cosine', warmup_epochs=0,
        seed=args.seed, model_kwargs=kwargs, output=os.path.join(args.out, 'runs'), run_name=variant, max_minutes=None,
        progress=False, **change)
    run_dir = os.path.join(cfg.output, variant)
    if not os.path.isfile(os.path.join(run_dir, 'last.safetensors')):
        train(cfg.validate())
    return run_dir


def evaluate(args, name: str, model_name: str, weights: str, kwargs, x, y, surrogates, bound):
    model = create_model_with_weights(model_name, weights, None, **kwargs).eval()
    if bound is not None:
        model.set_clean_share_max(bound)
    specs = build_suite(model, args.attacks if bound is not None else ['pgd_sat', 'cw_inf'], router_steps=args.router_steps,
                        surrogates=surrogates if bound is not None else None)
    t0 = time.time()
    r = evaluate_robustness(model, x, y, specs, batch_size=args.batch_size, sanity=False, progress=False)
    row = {'model': name, 'bound': bound, 'clean': r['clean_acc'], 'worst_case': r['worst_case']['robust_acc'],
           'attacks': {a['name']: a['robust_acc'] for a in r['attacks']},
           'p_clean_clean': (r['router'] or {}).get('p_clean_clean_mean'),
           'p_clean_adv': {a['name']: a['router']['p_clean_adv_mean'] for a in r['attacks'] if a.get('router')},
           'per_sample': r['per_sample'], 'seconds': round(time.time() - t0, 1)}
    print(f"{name} cap {bound}: clean {100 * row['clean']:.1f}%, worst case {100 * row['worst_case']:.1f}% "
          f"({row['seconds']:.0f} s): " + ', '.join(f'{k} {100 * v:.1f}' for k, v in row['attacks'].items()), flush=True)
    return row


def table(rows, settings) -> str:
    names = []
    for r in rows:
        names += [n for n in r['attacks'] if n not in names]
    lines = [f"Holdout images: first {settings['n']} of the run's training holdout ({settings['run']}); fine-tunes: "
             f"{settings['train_size']} images x {settings['epochs']} epochs, lr {settings['lr']}, seed {settings['seed']}.",
             '', '| model | Clean BN cap | clean | ' + ' | '.join(names) + ' | worst case |',
             '|---|---:|---:|' + '---:|' * (len(names) + 1)]
    for r in rows:
        cells = [f"{100 * r['attacks'][n]:.1f}" if n in r['attacks'] else '-' for n in names]
        cap = '-' if r['bound'] is None else f"{r['bound']:g}"
        lines.append(f"| {r['model']} | {cap} | {100 * r['clean']:.1f} | " + ' | '.join(cells)
                     + f" | **{100 * r['worst_case']:.1f}** |")
    return '\n'.join(lines) + '\n'


def plot(rows, path):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name in dict.fromkeys(r['model'] for r in rows):
        own = sorted((r for r in rows if r['model'] == name), key=lambda r: -1 if r['bound'] is None else r['bound'])
        xs, ys = [100 * r['worst_case'] for r in own], [100 * r['clean'] for r in own]
        ax.plot(xs, ys, 's' if own[0]['bound'] is None else 'o-', label=name)
        for r, xv, yv in zip(own, xs, ys):
            if r['bound'] is not None:
                ax.annotate(f"{r['bound']:g}", (xv, yv), textcoords='offset points', xytext=(4, 4), fontsize=7)
    ax.set_xlabel('worst-case robust accuracy (%)')
    ax.set_ylabel('clean accuracy (%)')
    ax.set_title('AW-Net: Clean BN cap (labels) against the per-sample worst case')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--run', required=True, help='run folder of the AW-Net to start from (its last.safetensors)')
    p.add_argument('--twin', default='', help='run folder of its static twin (the transfer surrogate and the reference)')
    p.add_argument('--out', required=True, help='output folder')
    p.add_argument('--variants', nargs='*', default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument('--train-size', type=int, default=5000)
    p.add_argument('--epochs', type=int, default=2)
    p.add_argument('--lr', type=float, default=0.02)
    p.add_argument('--router-aware', type=float, default=0.5)
    p.add_argument('--train-bound', type=float, default=0.5, help='clean_share_max of router_aware_bounded in training')
    p.add_argument('--bounds', type=float, nargs='+', default=[1.0, 0.5, 0.0], help='test-time Clean BN caps')
    p.add_argument('--attacks', nargs='+', default=['pgd_sat', 'cw_inf', 'router', 'transfer_pgd'])
    p.add_argument('--router-steps', type=int, default=20)
    p.add_argument('--n', type=int, default=100, help='holdout images evaluated')
    p.add_argument('--batch-size', type=int, default=100)
    p.add_argument('--seed', type=int, default=0)
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    cfg = load_run_config(args.run)
    train_set = load_dataset(cfg.dataset, cfg.data_dir, cfg.train_split)
    holdout = train_set.subset(len(train_set) - cfg.val_size, len(train_set) - cfg.val_size + args.n)
    x, y = holdout.images.float() / 255, holdout.labels
    settings = {k: getattr(args, k) for k in ('run', 'twin', 'train_size', 'epochs', 'lr', 'router_aware', 'train_bound',
                                              'attacks', 'router_steps', 'n', 'seed')}
    path = os.path.join(args.out, 'results.json')
    saved = json.load(open(path)) if os.path.isfile(path) else {}
    rows = saved.get('rows', []) if saved.get('settings') == settings else []
    done = {(r['model'], r['bound']) for r in rows}

    def save():
        atomic_write_text(path, json.dumps({'settings': settings, 'rows': rows}, indent=1))
        atomic_write_text(os.path.join(args.out, 'results.md'), table(rows, settings))
        plot(rows, os.path.join(args.out, 'tradeoff.png'))

    surrogates, twin_kwargs = {}, {}
    if args.twin:
        twin_cfg = load_run_config(args.twin)
        twin_weights = os.path.join(args.twin, 'best.safetensors')
        surrogates['twin'] = create_model_with_weights(twin_cfg.model, twin_weights, None, **twin_cfg.model_kwargs).eval()
        if ('twin', None) not in done:
            rows.append(evaluate(args, 'twin', twin_cfg.model, twin_weights, twin_cfg.model_kwargs, x, y, {}, None))
            save()
    models = []
    for variant in args.variants:
        run_dir = fine_tune(args, variant)
        kwargs = {k: v for k, v in load_run_config(run_dir).model_kwargs.items() if k != 'clean_share_max'}
        models.append((variant, os.path.join(run_dir, 'last.safetensors'), kwargs))
    models.append(('start', os.path.join(args.run, 'last.safetensors'), cfg.model_kwargs))
    for bound in args.bounds:  # cap by cap, so a screening stopped early has every model at the first caps
        for name, weights, kwargs in models:
            if (name, bound) not in done:
                rows.append(evaluate(args, name, cfg.model, weights, kwargs, x, y, surrogates, bound))
                save()
    print(table(rows, settings))
    return 0


if __name__ == '__main__':
    sys.exit(main())
