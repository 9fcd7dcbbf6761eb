""" `awnet eval`, `awnet plot` and `awnet filters`: the evaluation harness from the command line """
import argparse
import json
import os
import re
import time
from typing import Any, Dict, Optional, Tuple

import torch

from ..data import load_dataset
from ..utils import atomic_write_text, check_output_path, number_arg, read_json, resolve_device, sha256_file
from .filters import conv_layer_name, filter_means, plot_filter_means, summarize
from .harness import SANITY_N, answered_by, check_earlier_result, evaluate_robustness
from .report import build_record, load_record, markdown_table, plot_eps_curve, plot_tradeoff, write_report
from .suite import GROUPS, build_suite, validate_suite_args

__all__ = ['add_eval_parser', 'add_plot_parser', 'add_filters_parser', 'load_eval_data', 'load_model', 'weights_file']

# The exact CIFAR-10 test images in two: the development set may choose anything (release bars, thresholds, plans);
# the report set scores each released model once and chooses nothing. [start, stop) indices of split test-exact.
IMAGE_SETS = {'development': (0, 500), 'report': (500, 1017)}
_DEFAULT_SPLIT = {'cifar10-offline': 'test-exact', 'cifar10': 'test', 'cifar100': 'test', 'imagefolder': 'val'}


def image_set_name(dataset: str, split: str, start: int, stop: int) -> str:
    """'development set' or 'report set' for a range of the exact CIFAR-10 test images within one of them, else ''."""
    if dataset != 'cifar10-offline' or split != 'test-exact':
        return ''
    for name, (lo, hi) in IMAGE_SETS.items():
        if lo <= start and stop <= hi:
            return f'{name} set'
    return ''


def load_eval_data(dataset: str, data_dir: str, split: str, n: Optional[int], img_size: Optional[int] = None,
                   in_chans: int = 3, start: int = 0, download: bool = False) -> Tuple[torch.Tensor, torch.Tensor, Dict[str, Any]]:
    """ n images of a split (None: all) from image `start` on, as [0, 1] pixels, and a description of what was taken.

    CIFAR: images start .. start+n-1 in the official order. ImageFolder (no official order): a fixed random subset
    (seed 0, kept in folder order) when n is below the folder's size, else all of it (no `start`).
    """
    if n is not None and n < 1:
        raise ValueError(f'--n must be a positive number of images, got {n}')
    if isinstance(start, bool) or not isinstance(start, int) or start < 0:
        raise ValueError(f'--start must be an image index >= 0, got {start!r}')
    if start and dataset == 'imagefolder':
        raise ValueError('--start takes CIFAR images from an index on; an ImageFolder has no official order: use --n')
    data = load_dataset(dataset, data_dir, split, download=download, limit=None if n is None else start + n,
                        img_size=img_size, in_chans=in_chans)
    if start >= len(data) or (n is not None and len(data) < start + n):
        have = len(data) - start
        raise ValueError(f'asked for {n or "all"} images of {dataset}/{split} from image {start}, which has only '
                         f'{max(have, 0)} from there ({len(data)} in all)')
    data = data.subset(start)
    kind = {'test-exact': 'exact pixels', 'test': 'JPEG copy, not bit-exact', 'train': 'JPEG copy, not bit-exact'}
    if dataset == 'imagefolder':
        from torchvision.datasets import ImageFolder
        total = len(ImageFolder(os.path.join(data_dir, split)).samples)
        subset = len(data) < total
        order = 'fixed random subset (seed 0), in folder order' if subset else 'all images, in folder order'
        what = (f'{len(data)} of the {total} ImageFolder {split} images (a fixed random subset, seed 0)' if subset
                else f'all {total} ImageFolder {split} images')
    else:
        name = 'CIFAR-10' if dataset.startswith('cifar10') else dataset
        if start:
            order = f'official, images {start}-{start + len(data) - 1} (no shuffle)'
            what = f'{name} {split} images {start}-{start + len(data) - 1} ({len(data)})'
        else:
            order = 'official (first n, no shuffle)'
            what = f'first {len(data)} {name} {split} images'
    if dataset == 'cifar10-offline':
        image_set = image_set_name(dataset, split, start, start + len(data))
        what += f" ({kind.get(split, split)}{', the ' + image_set if image_set else ''})"
    info = {'dataset': dataset, 'split': split, 'n': len(data), 'order': order,
            'exact_pixels': not (dataset == 'cifar10-offline' and split != 'test-exact'), 'description': what}
    if start:
        info['start'] = start
    if img_size is not None:
        info['img_size'] = img_size
    return data.images.float() / 255, data.labels, info


def _in_chans(model: torch.nn.Module) -> int:
    """The channel count the model takes (its first conv's), which ImageFolder images are decoded to."""
    conv = next((m for m in model.modules() if isinstance(m, torch.nn.Conv2d)), None)
    return conv.in_channels if conv is not None else 3


def weights_file(model: torch.nn.Module, name: str, checkpoint: str = '') -> Optional[str]:
    """ The file `model`'s weights were read from, for the record's sha256; None for a model without weights.

    A checkpoint path is that file (a run directory: its best, else last, weights); `local-dir:` and Hub names
    (as the model or as the checkpoint) are resolved through the pretrained cfg timm loaded them with.
    """
    from ..training.checkpoint import resolve_weights_path
    source = checkpoint or name
    if checkpoint and not checkpoint.startswith(('hf-hub:', 'local-dir:')) and os.path.exists(checkpoint):
        return resolve_weights_path(checkpoint)
    if not (source.startswith(('hf-hub:', 'local-dir:')) or '.' in source):
        return None  # a bare architecture name: randomly initialised
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    if cfg.get('source') == 'local-dir' and cfg.get('file'):
        path = os.path.join(cfg['file'], 'model.safetensors')  # what timm reads first in an export folder
        return path if os.path.isfile(path) else None
    if cfg.get('hf_hub_id'):
        from huggingface_hub import try_to_load_from_cache
        repo, _, revision = cfg['hf_hub_id'].partition('@')
        cached = try_to_load_from_cache(repo, cfg.get('hf_hub_filename') or 'model.safetensors', revision=revision or None)
        return cached if isinstance(cached, str) else None
    return cfg.get('file') if isinstance(cfg.get('file'), str) and os.path.isfile(cfg['file']) else None


def load_model(spec: str, model_kwargs: Dict[str, Any] = None):
    """'name', 'name.tag', 'hf-hub:org/repo', 'local-dir:folder' or 'name=CHECKPOINT' -> (model, weights file or None)."""
    from ..training.checkpoint import create_model_with_weights
    name, _, checkpoint = spec.partition('=')
    kwargs = model_kwargs or {}
    try:
        model = create_model_with_weights(name, checkpoint, **kwargs)
    except TypeError as e:  # a key the model's constructor does not take: say which, not where Python noticed it
        key = re.search(r"unexpected keyword argument '([^']+)'", str(e))
        if key is None or key[1] not in kwargs:
            raise
        raise ValueError(f"--model-kwargs: {name} takes no argument '{key[1]}' (given {sorted(kwargs)}); check its "
                         f"spelling, or drop it for a model that does not have it") from None
    return model, weights_file(model, name, checkpoint)


def dataset_classes(dataset: str, data_dir: str, split: str) -> int:
    """How many classes a dataset's labels range over (an ImageFolder: its split's class folders)."""
    if dataset == 'imagefolder':
        from torchvision.datasets.folder import find_classes
        return len(find_classes(os.path.join(data_dir, split))[0])
    return 100 if dataset == 'cifar100' else 10


def check_classes(heads: Any, name: str, classes: int, dataset: str) -> None:
    """Refuse a classifier head (of `heads` classes, the model's num_classes) of another class count than the labels':
    its scores of the extra classes make every accuracy wrong without an error (a 1000-class head on 10 labels)."""
    if isinstance(heads, int) and not isinstance(heads, bool) and heads != classes:
        raise ValueError(f'the model gives {heads} class scores, but the labels go from 0 to {classes - 1} ({dataset} '
                         f'has {classes} classes): evaluate a model made for these classes, or build {name} with '
                         f'--model-kwargs \'{{"num_classes": {classes}}}\'')


def pixel_input(model: torch.nn.Module, in_chans: int) -> Tuple[torch.nn.Module, Optional[Dict[str, Any]]]:
    """ (model taking [0, 1] pixels, the normalization put in front of it or None).

    Attacks and their eps work on [0, 1] pixels; a timm model whose pretrained_cfg has another mean/std than
    0/1 (an ImageNet-normalized one) is wrapped to normalize its pixels with them, as timm's transforms would.
    """
    from ..training.teachers import PixelInput
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    mean, std = tuple(cfg.get('mean') or ()), tuple(cfg.get('std') or ())
    if all(m == 0 for m in mean) and all(v == 1 for v in std):
        return model, None
    if len(mean) not in (1, in_chans) or len(std) not in (1, in_chans):
        raise ValueError(f'the model\'s pretrained_cfg normalizes {len(mean)} channels (mean {mean}, std {std}), but it '
                         f'takes {in_chans}: give a model whose cfg matches its input channels')
    norm = {'mean': [float(m) for m in mean], 'std': [float(v) for v in std], 'source': 'pretrained_cfg'}
    return PixelInput(model, norm['mean'], norm['std']), norm


def check_eval_args(args) -> None:
    """The attack names and numbers of `awnet eval`, checked before a model or an image is loaded (ValueError)."""
    validate_suite_args(args.attacks, eps=args.eps, random_start=args.random_start, cw_step=args.cw_step,
                        router_steps=args.router_steps, square_queries=args.square_queries, aa_version=args.aa_version,
                        batch_size=args.aa_batch_size)
    if not isinstance(args.model_kwargs, dict):
        raise ValueError(f'--model-kwargs must be a JSON object (e.g. \'{{"route_threshold": 0.9}}\'), got {args.model_kwargs!r}')
    for flag, value in (('--batch-size', args.batch_size), ('--sanity-n', args.sanity_n)):
        if value < 1:
            raise ValueError(f'{flag} must be at least 1, got {value}')


def _is_report(path: str) -> bool:
    """Whether `path` is a JSON report that awnet eval wrote (so that writing it again loses nothing of anyone's)."""
    try:
        with open(path, encoding='utf-8') as f:
            record = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and 'awnet_eval_version' in record


def check_report_target(out: str, sanity: bool) -> None:
    """ Refuse an --out whose files (the .json, the .md and -eps.png beside it) exist but were not written by awnet
    eval: a report overwrites its own files only, never notes or a report of another tool. """
    stem = os.path.splitext(out)[0]
    ours = os.path.isfile(out) and _is_report(out)
    if os.path.exists(out) and not ours:
        raise ValueError(f"--out '{out}' exists and is not a report of awnet eval: it is left as it is; give another "
                         f"--out, or move it away")
    for beside in [stem + '.md'] + ([stem + '-eps.png'] if sanity else []):
        if os.path.exists(beside) and not ours:
            raise ValueError(f"'{beside}' exists beside --out '{out}', which holds no report of awnet eval, so it was "
                             f"not written by it and is left as it is; give another --out, or move it away")


def earlier_report(path: str, model: str, sha: Optional[str], data: Dict[str, Any], eps: float, seed: int,
                   model_kwargs: Optional[Dict[str, Any]] = None) -> Optional[Dict[str, Any]]:
    """ The report at `path` that `awnet eval --resume` continues (None where there is none yet), once it is one of
    this evaluation: the same model name, model arguments, weights (sha256), images, eps and seed (ValueError names
    what differs). """
    if not os.path.exists(path):
        return None
    record = read_json(path, what='awnet eval report')
    if not isinstance(record, dict) or 'awnet_eval_version' not in record or 'per_sample' not in record:
        raise ValueError(f"--resume: '{path}' is not an awnet eval report; give the --out of the evaluation to continue")
    now = {'model': model, 'model_kwargs': json.loads(json.dumps(model_kwargs or {})), 'checkpoint_sha256': sha,
           'data': json.loads(json.dumps(data)), 'eps': eps, 'seed': seed}
    before = dict(record, model_kwargs=record.get('model_kwargs', {}))  # reports before model_kwargs was recorded: none
    for key, value in now.items():
        if before.get(key) != value:
            raise ValueError(f"--resume: '{path}' is another evaluation: its {key} is {before.get(key)!r}, this one's "
                             f"{value!r}; give another --out, or drop --resume to start it again")
    try:
        check_earlier_result(record, data['n'])
    except ValueError as e:
        raise ValueError(f"--resume: '{path}': {e}") from None
    return record


def run_eval(args) -> int:
    check_eval_args(args)
    device = resolve_device(args.device)
    if args.resume and not args.out:
        raise ValueError('--resume continues the report at --out: give --out')
    out = args.out or os.path.join('output', 'eval', f"{args.model.replace('/', '_').replace(':', '_')}-{time.strftime('%Y%m%d-%H%M%S')}.json")
    check_output_path(out)  # before any attack: an unwritable path must not cost the evaluation
    check_report_target(out, args.sanity)
    spec = args.model + (f'={args.checkpoint}' if args.checkpoint else '')
    model, weights = load_model(spec, args.model_kwargs)
    heads, in_chans = getattr(model, 'num_classes', None), _in_chans(model)
    model, normalization = pixel_input(model, in_chans)
    model = model.to(device).eval()
    surrogates = {}
    for s in args.surrogate:
        s_model, _ = load_model(s)
        surrogates[s.partition('=')[0].replace('/', '_')] = s_model.to(device).eval()
    specs = build_suite(model, args.attacks, eps=args.eps, random_start=args.random_start, cw_step=args.cw_step,
                        router_steps=args.router_steps, square_queries=args.square_queries, aa_version=args.aa_version,
                        seed=args.seed, batch_size=args.aa_batch_size, surrogates=surrogates, progress=args.progress)
    split = args.split or _DEFAULT_SPLIT[args.dataset]
    x, y, info = load_eval_data(args.dataset, args.data_dir, split, args.n, args.img_size, in_chans, args.start,
                                args.download)
    check_classes(heads, args.model, dataset_classes(args.dataset, args.data_dir, split), args.dataset)
    if normalization:
        print(f"awnet eval: {args.model} expects normalized inputs (its pretrained_cfg): [0, 1] pixels are normalized "
              f"with mean {normalization['mean']}, std {normalization['std']}")
    print(f"awnet eval: {spec} on {info['description']}, {device}, attacks: {', '.join(s.name for s in specs)}")
    sha = sha256_file(weights) if weights else None
    if args.resume and sha is None:
        raise ValueError(f'--resume continues the evaluation of one set of weights, and {args.model} has none: it is '
                         'initialized anew each run; give --checkpoint, a local-dir: or hf-hub: model, or drop --resume')
    previous = earlier_report(out, args.model, sha, info, args.eps, args.seed, args.model_kwargs) if args.resume else None
    if previous is not None:
        names = [a['name'] for a in previous['attacks']]
        if answered_by(previous, specs, len(x), args.sanity, args.sanity_n, args.random_start):
            print(markdown_table(previous))
            print(f'awnet eval: {out} is complete for these attacks and checks: nothing to continue')
            return 0
        print(f"awnet eval: continuing {out}: {', '.join(names) or 'no attack'} finished "
              f"({previous.get('elapsed_seconds', 0.0) / 60:.1f} min), taken from it")

    def save(result):  # after every attack, so an interruption or a late failure loses nothing
        record = build_record(result, args.model, args.checkpoint or args.model, info, args.eps, args.seed, str(device),
                              checkpoint_sha256=sha, model_kwargs=args.model_kwargs, input_normalization=normalization)
        write_report(record, out)
        return record

    result = evaluate_robustness(model, x, y, specs, batch_size=args.batch_size, device=device, seed=args.seed,
                                 sanity=args.sanity, sanity_n=args.sanity_n, random_start=args.random_start,
                                 progress=args.progress, on_attack=save, previous=previous)
    record = save(result)
    if args.sanity:
        plot_eps_curve([record], os.path.splitext(out)[0] + '-eps.png')
    print(markdown_table(record))
    print(f'awnet eval: report in {out} (and .md{", -eps.png" if args.sanity else ""})')
    return 0


def _json_arg(text: str) -> Any:
    """argparse type of --model-kwargs: any JSON (that it is an object is checked with the other arguments)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f'not valid JSON ({e.msg} at character {e.pos} of {text!r}): expected an '
                                         f'object such as \'{{"route_threshold": 0.9}}\'') from None


def _switch(p: argparse.ArgumentParser, flag: str, default: bool, help_text: str) -> None:
    action = p.add_argument(flag, action=argparse.BooleanOptionalAction, default=default)
    action.help = help_text  # set afterwards: some Pythons' BooleanOptionalAction append their own '(default: ...)'


def add_eval_parser(sub) -> argparse.ArgumentParser:
    groups = ', '.join(f"{g} ({' '.join(n)})" for g, n in GROUPS.items())
    p = sub.add_parser('eval', help='Robustness evaluation: the paper\'s attacks, AutoAttack, router-aware and transfer attacks.',
                       description='Evaluate any timm model taking [0, 1] pixels, in eval mode, on the first N test images. '
                                   'Writes a JSON record, a Markdown table and an accuracy-vs-eps plot. A model with an HPM '
                                   'head (head=hpm) also gets, without asking, MSA and a transfer attack from its FC head '
                                   '(the surrogate hpm_fc) and the black-box attacks, as its paper evaluates it; the '
                                   'worst case is taken over all of them.')
    p.add_argument('--model', required=True, help='timm model name, name.tag or hf-hub:org/repo')
    p.add_argument('--checkpoint', default='', help='weights: .safetensors file or run directory of awnet train')
    p.add_argument('--model-kwargs', type=_json_arg, default={}, metavar='JSON', help='extra model arguments as JSON')
    p.add_argument('--dataset', default='cifar10-offline', choices=sorted(_DEFAULT_SPLIT), help='dataset (default: %(default)s)')
    p.add_argument('--data-dir', required=True, help='dataset root (e.g. ../shared/data/cifar10)')
    p.add_argument('--download', action='store_true',
                   help="let torchvision download the dataset into --data-dir (datasets 'cifar10' and 'cifar100')")
    p.add_argument('--split', default='', help="split (default: test-exact for cifar10-offline, test for cifar10/100, val for imagefolder)")
    p.add_argument('--n', type=int, default=1000,
                   help='images: the first N in official order (ImageFolder: a fixed random subset) (default: %(default)s)')
    p.add_argument('--start', type=int, default=0,
                   help='first image index (CIFAR): of the exact test images, 0-499 are the development set and 500-1016 '
                        'the report set (--start 500 --n 517) (default: %(default)s)')
    p.add_argument('--img-size', type=int, default=None,
                   help='resize ImageFolder images to this size (needed when their sizes differ; default: as they are)')
    p.add_argument('--attacks', nargs='+', default=['paper', 'router'], metavar='NAME',
                   help=f'attacks or groups (default: paper router; router attacks apply to AW-Nets only). Groups: {groups}')
    p.add_argument('--eps', type=number_arg, default=8 / 255, help='L-inf radius in pixel units (default: 8/255)')
    p.add_argument('--random-start', default='uniform', choices=('uniform', 'none'),
                   help='start of every PGD attack and of the sanity checks (default: %(default)s)')
    p.add_argument('--cw-step', type=number_arg, default=None,
                   help='step size of CW-inf (default: 0.003 at eps 8/255, scaled with eps like every step size)')
    p.add_argument('--router-steps', type=int, default=50, help='steps of the router-aware PGD attacks (default: %(default)s)')
    p.add_argument('--square-queries', type=int, default=5000, help='queries of the Square attack (default: %(default)s)')
    p.add_argument('--aa-version', default='standard', choices=('standard', 'plus'), help='AutoAttack version (default: %(default)s)')
    p.add_argument('--surrogate', action='append', default=[], metavar='MODEL[=CHECKPOINT]',
                   help='surrogate model for the transfer attacks (repeatable; an HPM model adds its own, hpm_fc)')
    p.add_argument('--batch-size', type=int, default=256, help='images per batch of the PGD attacks (default: %(default)s)')
    p.add_argument('--aa-batch-size', type=int, default=500,
                   help='images per batch of AutoAttack and Square, which run once over all N (default: %(default)s)')
    p.add_argument('--device', default='auto', help="'auto', 'cpu', 'cuda' or 'cuda:N' (default: %(default)s)")
    p.add_argument('--seed', type=int, default=0, help='seed of every attack (default: %(default)s)')
    _switch(p, '--sanity', True, 'run the gradient-masking sanity checks (eps sweep, PGD-20 vs PGD-100) (default: on)')
    p.add_argument('--sanity-n', type=int, default=SANITY_N,
                   help='points of the sanity checks (the first ones of the N) (default: %(default)s)')
    _switch(p, '--progress', True, 'progress bars (default: on)')
    p.add_argument('--out', default='', help='report path (.json; default output/eval/<model>-<time>.json); written '
                                             'after every attack')
    p.add_argument('--resume', action='store_true',
                   help='continue the report at --out, from an interrupted run of this evaluation (same model, weights, '
                        'images, eps and seed): its finished attacks are kept, the others run; without a report there, '
                        'start one')
    p.set_defaults(func=run_eval)
    return p


def run_plot(args) -> int:
    if args.labels and len(args.labels) != len(args.reports):
        raise ValueError(f'{len(args.reports)} reports but {len(args.labels)} labels: give one label per report')
    for path in (args.out, args.eps_curve):
        if path:
            check_output_path(path)
    records = [load_record(path) for path in args.reports]
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
    check_output_path(args.out)
    layer_name = ''
    for label, spec in zip(labels, args.models):
        model, _ = load_model(spec)
        layer_name = conv_layer_name(model, args.layer)
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
