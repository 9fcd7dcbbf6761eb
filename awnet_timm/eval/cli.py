""" `awnet eval`, `awnet plot` and `awnet filters`: the evaluation harness from the command line """
import argparse
import json
import os
import time
from typing import Any, Dict, Tuple

import torch

from ..data import load_dataset
from ..utils import atomic_write_text, number_arg, sha256_file
from .filters import conv_layers, filter_means, plot_filter_means, summarize
from .harness import evaluate_robustness
from .report import build_record, markdown_table, plot_eps_curve, plot_tradeoff, write_report
from .suite import GROUPS, build_suite

__all__ = ['add_eval_parser', 'add_plot_parser', 'add_filters_parser', 'load_eval_data', 'load_model']

_DEFAULT_SPLIT = {'cifar10-offline': 'test-exact', 'cifar10': 'test', 'cifar100': 'test', 'imagefolder': 'val'}


def load_eval_data(dataset: str, data_dir: str, split: str, n: int) -> Tuple[torch.Tensor, torch.Tensor, Dict[str, Any]]:
    """The first n images of a split in the dataset's official order, as [0, 1] pixels, and a description."""
    data = load_dataset(dataset, data_dir, split, limit=n)
    if n and len(data) < n:
        raise ValueError(f'asked for the first {n} images of {dataset}/{split}, which has only {len(data)}')
    kind = {'test-exact': 'exact pixels', 'test': 'JPEG copy, not bit-exact', 'train': 'JPEG copy, not bit-exact'}
    what = f"first {len(data)} {'CIFAR-10' if dataset.startswith('cifar10') else dataset} {split} images"
    if dataset == 'cifar10-offline':
        what += f" ({kind.get(split, split)})"
    info = {'dataset': dataset, 'split': split, 'n': len(data), 'order': 'official (first n, no shuffle)',
            'exact_pixels': not (dataset == 'cifar10-offline' and split != 'test-exact'), 'description': what}
    return data.images.float() / 255, data.labels, info


def load_model(spec: str, model_kwargs: Dict[str, Any] = None):
    """'name', 'name.tag', 'hf-hub:org/repo' or 'name=CHECKPOINT' -> (model, weights file or None)."""
    from ..training.checkpoint import create_model_with_weights, resolve_weights_path
    name, _, checkpoint = spec.partition('=')
    path = resolve_weights_path(checkpoint) if checkpoint else None
    return create_model_with_weights(name, checkpoint, **(model_kwargs or {})), path


def _device(name: str) -> torch.device:
    return torch.device('cuda' if name == 'auto' and torch.cuda.is_available() else 'cpu' if name == 'auto' else name)


def run_eval(args) -> int:
    device = _device(args.device)
    spec = args.model + (f'={args.checkpoint}' if args.checkpoint else '')
    model, weights = load_model(spec, args.model_kwargs)
    model = model.to(device).eval()
    surrogates = {}
    for s in args.surrogate:
        s_model, _ = load_model(s)
        surrogates[s.partition('=')[0].replace('/', '_')] = s_model.to(device).eval()
    split = args.split or _DEFAULT_SPLIT[args.dataset]
    x, y, info = load_eval_data(args.dataset, args.data_dir, split, args.n)
    specs = build_suite(model, args.attacks, eps=args.eps, random_start=args.random_start, cw_step=args.cw_step,
                        router_steps=args.router_steps, square_queries=args.square_queries, aa_version=args.aa_version,
                        seed=args.seed, batch_size=args.batch_size, surrogates=surrogates)
    print(f"awnet eval: {spec} on {info['description']}, {device}, attacks: {', '.join(s.name for s in specs)}")
    result = evaluate_robustness(model, x, y, specs, batch_size=args.batch_size, device=device, seed=args.seed,
                                 sanity=args.sanity, progress=args.progress)
    record = build_record(result, args.model, args.checkpoint or args.model, info, args.eps, args.seed, str(device),
                          checkpoint_sha256=sha256_file(weights) if weights else None)
    out = args.out or os.path.join('output', 'eval', f"{args.model.replace('/', '_').replace(':', '_')}-{time.strftime('%Y%m%d-%H%M%S')}.json")
    write_report(record, out)
    if args.sanity:
        plot_eps_curve([record], os.path.splitext(out)[0] + '-eps.png')
    print(markdown_table(record))
    print(f'awnet eval: report in {out} (and .md{", -eps.png" if args.sanity else ""})')
    return 0


def add_eval_parser(sub) -> argparse.ArgumentParser:
    groups = ', '.join(f"{g} ({' '.join(n)})" for g, n in GROUPS.items())
    p = sub.add_parser('eval', help='Robustness evaluation: the paper\'s attacks, AutoAttack, router-aware and transfer attacks.',
                       description='Evaluate any timm model taking [0, 1] pixels, in eval mode, on the first N test images. '
                                   'Writes a JSON record, a Markdown table and an accuracy-vs-eps plot.')
    p.add_argument('--model', required=True, help='timm model name, name.tag or hf-hub:org/repo')
    p.add_argument('--checkpoint', default='', help='weights: .safetensors file or run directory of awnet train')
    p.add_argument('--model-kwargs', type=json.loads, default={}, help='extra model arguments as JSON')
    p.add_argument('--dataset', default='cifar10-offline', choices=sorted(_DEFAULT_SPLIT), help='dataset (default: %(default)s)')
    p.add_argument('--data-dir', required=True, help='dataset root (e.g. ../shared/data/cifar10)')
    p.add_argument('--split', default='', help="split (default: test-exact for cifar10-offline, test for cifar10/100, val for imagefolder)")
    p.add_argument('--n', type=int, default=1000, help='evaluate the first N images in official order (default: %(default)s)')
    p.add_argument('--attacks', nargs='+', default=['paper', 'router'], metavar='NAME',
                   help=f'attacks or groups (default: paper router; router attacks apply to AW-Nets only). Groups: {groups}')
    p.add_argument('--eps', type=number_arg, default=8 / 255, help='L-inf radius in pixel units (default: 8/255)')
    p.add_argument('--random-start', default='uniform', choices=('uniform', 'none'), help='PGD start (default: %(default)s)')
    p.add_argument('--cw-step', type=number_arg, default=0.003, help='step size of CW-inf (default: %(default)s)')
    p.add_argument('--router-steps', type=int, default=50, help='steps of the router-aware PGD attacks (default: %(default)s)')
    p.add_argument('--square-queries', type=int, default=5000, help='queries of the Square attack (default: %(default)s)')
    p.add_argument('--aa-version', default='standard', choices=('standard', 'plus'), help='AutoAttack version (default: %(default)s)')
    p.add_argument('--surrogate', action='append', default=[], metavar='MODEL[=CHECKPOINT]',
                   help='surrogate model for the transfer attacks (repeatable)')
    p.add_argument('--batch-size', type=int, default=256, help='images per batch (default: %(default)s)')
    p.add_argument('--device', default='auto', help="'auto', 'cpu' or 'cuda' (default: %(default)s)")
    p.add_argument('--seed', type=int, default=0, help='seed of every attack (default: %(default)s)')
    p.add_argument('--sanity', action=argparse.BooleanOptionalAction, default=True,
                   help='run the gradient-masking sanity checks (eps sweep, PGD-20 vs PGD-100) (default: on)')
    p.add_argument('--progress', action=argparse.BooleanOptionalAction, default=True, help='progress bars (default: on)')
    p.add_argument('--out', default='', help='report path (.json; default output/eval/<model>-<time>.json)')
    p.set_defaults(func=run_eval)
    return p


def run_plot(args) -> int:
    records = []
    for path in args.reports:
        with open(path) as f:
            records.append(json.load(f))
    plot_tradeoff(records, args.out, labels=args.labels or None)
    if args.eps_curve:
        plot_eps_curve(records, args.eps_curve)
    print(f'awnet plot: {args.out}' + (f' and {args.eps_curve}' if args.eps_curve else ''))
    return 0


def add_plot_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser('plot', help='Plot the clean / worst-case robust trade-off (and accuracy vs eps) of evaluation reports.')
    p.add_argument('reports', nargs='+', help='JSON reports of awnet eval')
    p.add_argument('--labels', nargs='*', default=[], help='one label per report (default: the model names)')
    p.add_argument('--out', default='tradeoff.png', help='trade-off plot (default: %(default)s)')
    p.add_argument('--eps-curve', default='', help='also plot accuracy vs eps of all reports to this file')
    p.set_defaults(func=run_plot)
    return p


def run_filters(args) -> int:
    means, summary = {}, {}
    labels = args.labels or [m.partition('=')[0] for m in args.models]
    if len(labels) != len(args.models):
        raise ValueError(f'{len(args.models)} models but {len(labels)} labels')
    layer_name = ''
    for label, spec in zip(labels, args.models):
        model, _ = load_model(spec)
        names = conv_layers(model)
        layer_name = names[int(args.layer)] if args.layer.lstrip('-').isdigit() else args.layer
        means[label] = filter_means(model, args.layer)
        summary[label] = dict(summarize(means[label]), layer=layer_name, model=spec)
    plot_filter_means(means, args.out, layer=layer_name)
    atomic_write_text(os.path.splitext(args.out)[0] + '.json', json.dumps(summary, indent=2) + '\n')
    for label, s in summary.items():
        print(f"{label:20s} {s['layer']}: {s['filters']} filters, mean {s['mean']:+.2e}, std {s['std']:.2e}, "
              f"excess kurtosis {s['excess_kurtosis']:.2f}")
    print(f'awnet filters: {args.out} and {os.path.splitext(args.out)[0]}.json')
    return 0


def add_filters_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser('filters', help="Distribution of per-filter weight means of a conv layer (the paper's Figures 1 and 3).")
    p.add_argument('models', nargs='+', metavar='MODEL[=CHECKPOINT]', help='models to compare, e.g. cifar_resnet18=output/standard-run')
    p.add_argument('--labels', nargs='*', default=[], help='one label per model (e.g. standard robust)')
    p.add_argument('--layer', default='1', help='conv layer name, or index among the conv layers (default: 1, the second)')
    p.add_argument('--out', default='filters.png', help='plot path; the summary numbers go beside it as .json (default: %(default)s)')
    p.set_defaults(func=run_filters)
    return p
