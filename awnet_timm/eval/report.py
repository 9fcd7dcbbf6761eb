""" Evaluation reports: a JSON record per run (with RobustBench's model_info fields), Markdown, plots

The record is what model cards and MODEL_CARD.md read. Accuracies are fractions in [0, 1]; the
`model_info` block follows RobustBench (percent strings with two decimals, eps as "8/255").
"""
import json
import os
import platform
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..utils import atomic_write, atomic_write_text, eps_string, read_json

__all__ = ['REPORT_VERSION', 'save_figure', 'build_record', 'upper_bound', 'write_report', 'load_record', 'markdown_table', 'label_offsets', 'plot_eps_curve',
           'plot_tradeoff']

REPORT_VERSION = 1


def _versions() -> Dict[str, str]:
    import timm
    import torch
    from .. import __version__
    try:
        from importlib.metadata import version
        aa = version('pyautoattack')
    except Exception:
        aa = 'not installed'
    return {'awnet_timm': __version__, 'torch': torch.__version__, 'timm': timm.__version__, 'pyautoattack': aa,
            'python': platform.python_version()}


def upper_bound(model_kwargs: Optional[Dict[str, Any]]) -> str:
    """Why a model's worst case is only an upper bound on its robust accuracy ('' when it is not): a hard route
    threshold (route_threshold at route_temperature 0) passes no gradient through the route, and no attack of the
    suite goes around it (BPDA)."""
    kwargs = model_kwargs or {}
    if kwargs.get('route_threshold') is None or kwargs.get('route_temperature', 0.) != 0.:
        return ''
    return (f"an upper bound: the hard route threshold (route_threshold={kwargs['route_threshold']!r}) passes no "
            f"gradient, and no attack here goes around it (BPDA)")


def build_record(
        result: Dict[str, Any],
        model_name: str,
        checkpoint: str,
        data: Dict[str, Any],
        eps: float,
        seed: int,
        device: str,
        checkpoint_sha256: Optional[str] = None,
        number_forward_passes: int = 1,
        model_kwargs: Optional[Dict[str, Any]] = None,
        input_normalization: Optional[Dict[str, Any]] = None,
) -> Dict[str, Any]:
    """The JSON record of one evaluation run (the output of `evaluate_robustness` plus what was evaluated;
    `model_kwargs`: the model's extra arguments, e.g. a test-time route_threshold; `input_normalization`: the
    mean/std the [0, 1] pixels were normalized with in front of a model that does not do it itself)."""
    aa = next((a for a in result['attacks'] if a['name'] == 'autoattack'), None)
    pct = lambda v: f'{100 * v:.2f}'  # noqa: E731
    record = {
        'awnet_eval_version': REPORT_VERSION,
        'model': model_name,
        'checkpoint': checkpoint,
        'checkpoint_sha256': checkpoint_sha256,
        'model_kwargs': dict(model_kwargs or {}),
        **({'input_normalization': input_normalization} if input_normalization else {}),
        'data': data,
        'norm': 'Linf',
        'eps': eps,
        'eps_str': eps_string(eps),
        'seed': seed,
        'device': device,
        **{k: result[k] for k in ('clean_acc', 'attacks', 'router')},
        'worst_case': dict(result['worst_case'], **({'upper_bound': bound} if (bound := upper_bound(model_kwargs)) else {})),
        'complete': result.get('complete', True),  # False while attacks are still running (saved after each)
        'sanity': result.get('sanity', []),
        # None: no check ran, which says nothing either way (all([]) would claim a pass)
        'sanity_passed': all(c['passed'] for c in result['sanity']) if result.get('sanity') else None,
        'eps_curve': result.get('eps_curve', []),
        'sanity_cost': result.get('sanity_cost'),
        'attack_seconds': sum(a['seconds'] for a in result['attacks']),
        'elapsed_seconds': result['elapsed_seconds'],
        'per_sample': result['per_sample'],
        'versions': _versions(),
    }
    record['model_info'] = {
        'link': '', 'name': model_name, 'authors': '', 'venue': '', 'architecture': model_name,
        'dataset': data.get('dataset', ''), 'threat_model': 'Linf', 'eps': eps_string(eps),
        'clean_acc': pct(result['clean_acc']), 'autoattack_acc': pct(aa['robust_acc']) if aa else '',
        'external': pct(result['worst_case']['robust_acc']), 'reported': '', 'additional_data': False,
        'number_forward_passes': number_forward_passes,
        'unreliable': None if record['sanity_passed'] is None else not record['sanity_passed'],
        'footnote': f"external = per-sample worst case over {', '.join(result['worst_case']['attacks'])} "
                    f"on {data.get('description', 'the data above')}" + (f'; {bound}' if bound else ''),
    }
    return record


def markdown_table(record: Dict[str, Any]) -> str:
    """One row per attack plus the worst case: robust accuracy, W-Robust accuracy, router statistics."""
    n = record['data'].get('n', '?')
    kwargs = record.get('model_kwargs') or {}
    built = f" ({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})" if kwargs else ''
    lines = [f"**{record['model']}**{built} on {record['data'].get('description', '')} (N = {n}), L-inf eps {record['eps_str']}: "
             f"clean accuracy {100 * record['clean_acc']:.2f}%", '',
             *([f"Inputs: [0, 1] pixels normalized with the model's pretrained_cfg mean "
                f"{record['input_normalization']['mean']}, std {record['input_normalization']['std']}.", '']
               if record.get('input_normalization') else []),
             '| attack | kind | robust acc (%) | W-Robust acc (%) | mean P(clean) on x_adv | detection AUC | time (s) |',
             '|---|---|---:|---:|---:|---:|---:|']
    for a in record['attacks']:
        r = a.get('router') or {}
        router = (f"{r['p_clean_adv_mean']:.3f} | {100 * r['detection_auc']:.2f}" if r else '- | -')
        lines.append(f"| {a['name']} | {a['kind']} | {100 * a['robust_acc']:.2f} | {100 * a['w_robust_acc']:.2f} | {router} | {a['seconds']:.1f} |")
    w = record['worst_case']
    lines.append(f"| **worst case** (per sample{'; upper bound' if w.get('upper_bound') else ''}) | all | "
                 f"**{100 * w['robust_acc']:.2f}** | **{100 * w['w_robust_acc']:.2f}** | | | |")
    if w.get('upper_bound'):
        lines += ['', f"The worst case is {w['upper_bound']}."]
    if not record.get('complete', True):
        lines += ['', f"**Incomplete**: {len(record['attacks'])} attack(s) done so far; the worst case is over those."]
    if record.get('router'):
        lines += ['', f"Mean P(clean) on clean inputs: {record['router']['p_clean_clean_mean']:.3f}."]
    cost = record.get('sanity_cost')
    if cost:
        lines += ['', f"Time: attacks {record['attack_seconds']:.1f} s, sanity checks {cost['seconds']:.1f} s (eps sweep on "
                      f"{cost['n']} points, {cost['eps_sweep_attacked']} point-attacks: {cost['eps_sweep_seconds']:.1f} s; "
                      f"PGD-100 on {cost['pgd100_attacked']} points: {cost['pgd100_seconds']:.1f} s)."]
    if not record.get('sanity'):
        lines += ['', 'Sanity checks: not run (nothing here says whether gradient masking inflates these numbers).']
    else:
        lines += ['', '| sanity check | passed | detail |', '|---|---|---|']
        lines += [f"| {c['check']} | {'yes' if c['passed'] else '**NO: possible gradient masking**'} | {c['detail']} |"
                  for c in record['sanity']]
    return '\n'.join(lines) + '\n'


def write_report(record: Dict[str, Any], path: str) -> None:
    """`path` (.json) and a Markdown table beside it (.md), both written atomically."""
    atomic_write_text(path, json.dumps(record, indent=2) + '\n')
    atomic_write_text(os.path.splitext(path)[0] + '.md', markdown_table(record))


def load_record(path: str) -> Dict[str, Any]:
    """An `awnet eval` record read back, with the fields the plots read checked (ValueError says which is missing)."""
    record = read_json(path, what='awnet eval record')
    if not isinstance(record, dict) or 'awnet_eval_version' not in record:
        raise ValueError(f"'{path}' is not an awnet eval record (no 'awnet_eval_version'): give JSON files written by awnet eval")
    ok = (isinstance(record.get('model'), str) and isinstance(record.get('clean_acc'), (int, float))
          and isinstance(record.get('worst_case'), dict) and isinstance(record['worst_case'].get('robust_acc'), (int, float))
          and isinstance(record.get('eps_curve', []), list))
    if not ok:
        raise ValueError(f"'{path}' is an awnet eval record without the numbers a plot needs (model, clean_acc, "
                         f"worst_case.robust_acc, eps_curve)")
    return record


def save_figure(fig, path: str):
    atomic_write(path, lambda tmp: fig.savefig(tmp, format=os.path.splitext(path)[1][1:] or 'png', dpi=150,
                                               bbox_inches='tight'))


def plot_eps_curve(records: Sequence[Dict[str, Any]], path: str):
    """Robust accuracy (PGD-20) against eps, one line per record with an eps curve; returns the figure."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for r in records:
        if r.get('eps_curve'):
            ax.plot([c['eps'] * 255 for c in r['eps_curve']], [100 * c['robust_acc'] for c in r['eps_curve']], 'o-', label=r['model'])
    ax.set_xscale('log', base=2)
    ax.set_ylim(bottom=0)  # accuracies: matplotlib's margins would show negative percentages
    ax.set_xlabel('eps (x 1/255)')
    ax.set_ylabel('robust accuracy, PGD-20 (%)')
    ax.grid(alpha=.3)
    ax.legend()
    save_figure(fig, path)
    plt.close(fig)
    return fig


def label_offsets(points: Sequence[Tuple[float, float]], near: float = 4.0, line: float = 10.0) -> List[Tuple[float, float]]:
    """Text offsets (in points) for labels of points (in %): a label near an earlier one goes one line lower."""
    offsets: List[Tuple[float, float]] = []
    for i, (x, y) in enumerate(points):
        below = sum(1 for (px, py) in points[:i] if abs(px - x) < near and abs(py - y) < near)
        offsets.append((4.0, 4.0 - line * below))
    return offsets


def plot_tradeoff(records: Sequence[Dict[str, Any]], path: str, labels: Optional[List[str]] = None):
    """Clean against worst-case robust accuracy, one point per record, with W-Robust iso-lines; returns the figure."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5, 4))
    for w in range(30, 100, 10):  # W-Robust = (clean + robust) / 2 is constant along these lines
        ax.plot([2 * w - 100, 100], [100, 2 * w - 100], color='0.85', lw=.8, zorder=0)
    points = [(100 * r['clean_acc'], 100 * r['worst_case']['robust_acc']) for r in records]
    for i, ((x, y), offset) in enumerate(zip(points, label_offsets(points))):
        ax.scatter([x], [y], zorder=2)
        ax.annotate(labels[i] if labels else records[i]['model'], (x, y), textcoords='offset points', xytext=offset, fontsize=8)
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 100)
    ax.set_xlabel('clean accuracy (%)')
    ax.set_ylabel('worst-case robust accuracy (%)')
    ax.set_title('accuracy-robustness trade-off (grey: equal W-Robust accuracy)', fontsize=9)
    save_figure(fig, path)
    plt.close(fig)
    return fig
