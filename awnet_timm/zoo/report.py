""" `awnet zoo report`: a zoo folder's slices and its training stages' holdout curves, as tables and one plot

The campaign's record over many slices (`manifest.json`): what each slice trained, how fast and for how much CPU
time, and each training stage's holdout accuracy epoch by epoch (from its run's log.jsonl) against its cumulative
training hours, with the slice boundaries marked: the curve that says whether further slices still improve a model.
"""
import os
import statistics
from typing import Any, Callable, Dict, List, Optional

from ..eval.report import save_figure
from ..utils import read_json
from .budget import measured_epochs
from .plan import ZooError

__all__ = ['stage_curves', 'missing_data', 'slice_table', 'curve_table', 'plot_curves', 'load_manifest', 'provenance', 'latest_evaluation']


def load_manifest(out: str) -> Dict[str, Any]:
    path = os.path.join(out, 'manifest.json')
    if os.path.isfile(out):
        raise ZooError(f"'{out}' is a file: give the --out folder of `awnet zoo run`, the folder that holds "
                       f"manifest.json ('{os.path.dirname(out) or '.'}' for this one)")
    if not os.path.isfile(path):
        raise ZooError(f"'{out}' holds no zoo run (no manifest.json): give the --out folder of `awnet zoo run`")
    m = read_json(path, ZooError, 'zoo manifest')
    if not isinstance(m, dict) or not isinstance(m.get('stages'), dict):
        raise ZooError(f"'{path}' is not a manifest written by `awnet zoo run`")
    return m


def stage_curves(out: str, manifest: Dict[str, Any]) -> Dict[str, List[Dict[str, Any]]]:
    """Per training stage with a run: its epochs (epoch, holdout clean / PGD, cumulative training hours), oldest first."""
    curves = {}
    for name, s in manifest['stages'].items():
        if s.get('kind') != 'train' or not s.get('run_dir'):
            continue
        hours, rows = 0., []
        for r in measured_epochs(os.path.join(out, s['run_dir'])):
            hours += r['epoch_seconds'] / 3600
            rows.append({'epoch': r['epoch'], 'hours': hours, 'val_clean_acc': r.get('val_clean_acc'),
                         'val_pgd_acc': r.get('val_pgd_acc')})
        if rows:
            curves[name] = rows
    return curves


def missing_data(out: str, manifest: Dict[str, Any], curves: Dict[str, List[Dict[str, Any]]]) -> List[str]:
    """What the report cannot show, one line each: a report that leaves a stage or a slice out must say so."""
    missing = []
    slices = manifest.get('slices')
    if not isinstance(slices, list):
        missing.append(f"the manifest has no 'slices' list (got {slices!r}): no slice can be shown")
    else:
        missing += [f"slice {k} has no stage records (stages: {sl.get('stages')!r}): what it trained is unknown"
                    for k, sl in enumerate(slices, 1) if isinstance(sl, dict) and not isinstance(sl.get('stages'), dict)]
    for name, s in manifest['stages'].items():
        if s.get('kind') != 'train' or name in curves:
            continue
        if not s.get('run_dir'):
            missing.append(f"training stage '{name}' has no run folder in the manifest: no holdout curve")
        elif not os.path.isdir(os.path.join(out, s['run_dir'])):
            missing.append(f"training stage '{name}': its run folder {os.path.join(out, s['run_dir'])} is missing: "
                           f"no holdout curve")
        else:
            missing.append(f"training stage '{name}': no epoch in {os.path.join(out, s['run_dir'], 'log.jsonl')}: "
                           f"no holdout curve")
    return missing


def slice_table(manifest: Dict[str, Any]) -> str:
    """One row per slice and training stage it trained: epochs, images/s, CPU-minutes, holdout at its end."""
    lines = ['| slice | started | budget (min) | wall (min) | CPU (min) | stage | precision | epochs | images/s | '
             'holdout clean / PGD-10 (last epoch) |', '|---:|---|---:|---:|---:|---|---|---|---:|---|']
    slices = manifest.get('slices')
    for k, sl in enumerate(slices if isinstance(slices, list) else [], 1):
        head = (f"| {k} | {sl.get('started', '')}{' (restored)' if sl.get('restored') else ''} | {sl.get('budget_minutes', 0):g} | "
                f"{(sl.get('wall_seconds') or 0) / 60:.0f} | {sl.get('cpu_minutes') or 0:.0f} |")
        trained = {n: e for n, e in (sl.get('stages') or {}).items() if e.get('epochs_trained')}
        if not isinstance(sl.get('stages'), dict):
            lines.append(f'{head} (no stage records) | | | | |')
            continue
        if not trained:
            note = 'warm start' if sl.get('warm_start') else 'evaluation / export only' if sl.get('finished') else \
                'ended before its first epoch did'
            lines.append(f'{head} ({note}) | | | | |')
        for name, e in trained.items():
            last = e.get('holdout_last') or {}
            holdout = (f"{100 * last['val_clean_acc']:.1f}% / {100 * last['val_pgd_acc']:.1f}% (epoch {last['epoch']})"
                       if 'val_pgd_acc' in last else '')
            if e.get('robust_collapse_epochs'):
                holdout += f"; PGD collapsed at epoch(s) {', '.join(map(str, e['robust_collapse_epochs']))}"
            lines.append(f"{head} {name} | {e.get('precision', '')} | {e.get('epochs_before', 0)} -> "
                         f"{e.get('epochs_after', '')} | {e.get('images_per_second', 0):.0f} | {holdout} |")
    return '\n'.join(lines)


def curve_table(curves: Dict[str, List[Dict[str, Any]]]) -> str:
    lines = ['| stage | epoch | training hours | holdout clean | holdout PGD-10 |', '|---|---:|---:|---:|---:|']
    for name, rows in curves.items():
        for r in rows:
            if r['val_clean_acc'] is None:
                continue
            lines.append(f"| {name} | {r['epoch']} | {r['hours']:.2f} | {100 * r['val_clean_acc']:.1f} | "
                         f"{100 * r['val_pgd_acc']:.1f} |")
    return '\n'.join(lines)


def plot_curves(curves: Dict[str, List[Dict[str, Any]]], manifest: Dict[str, Any], path: str,
                stages: Optional[List[str]] = None):
    """Holdout clean (dashed) and PGD-10 (solid) accuracy against training hours, per stage; slice ends as ticks."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for i, (name, rows) in enumerate(curves.items()):
        if stages and name not in stages:
            continue
        rows = [r for r in rows if r['val_clean_acc'] is not None]
        if not rows:
            continue
        color = f'C{i}'
        hours = [r['hours'] for r in rows]
        ax.plot(hours, [100 * r['val_pgd_acc'] for r in rows], '-o', ms=3, color=color, label=f'{name} PGD-10')
        ax.plot(hours, [100 * r['val_clean_acc'] for r in rows], '--', color=color, label=f'{name} clean')
        ends = set()
        for sl in manifest['slices'] if isinstance(manifest.get('slices'), list) else []:
            if not isinstance(sl, dict):
                continue
            if name in (sl.get('redone') or {}):  # the stage started again: earlier slices trained another run
                ends = set()
            e = (sl.get('stages') or {}).get(name) or {}
            if e.get('epochs_trained'):
                ends.add(e.get('epochs_after'))
        for r in rows:
            if r['epoch'] in ends:  # the last epoch of a slice
                ax.axvline(r['hours'], color=color, lw=.5, alpha=.4)
    ax.set_ylim(0, 100)
    ax.set_xlabel("the stage's training hours (wall clock, its epochs only)")
    ax.set_ylabel('holdout accuracy (%)')
    ax.set_title(f"zoo plan {manifest.get('plan_name', '')}: holdout per epoch (thin lines: slice ends)", fontsize=9)
    ax.grid(alpha=.3)
    ax.legend(fontsize=7, ncol=2)
    save_figure(fig, path)
    plt.close(fig)
    return fig


def latest_evaluation(manifest: Dict[str, Any], name: str) -> Dict[str, Any]:
    """The zoo's last complete evaluation of a stage ({} when there is none); the runner also checks it is of the
    stage's current weights."""
    for s in manifest['stages'].values():
        r = (s.get('results') or {}).get(name) if s.get('kind') == 'evaluate' else None
        if r and r.get('complete'):
            return r
    return {}


def provenance(manifest: Dict[str, Any], name: str,
               evaluation: Optional[Callable[[str], Dict[str, Any]]] = None) -> str:
    """ The card section that says how the zoo trained a stage: plan, slices, epochs, time, speed, holdout, teachers.

    Cards of the zoo's exports end with it, and `scripts/release_cpu_campaign.sh` appends it to releases
    (`awnet zoo report DIR --provenance STAGE`). `evaluation(teacher)` gives a teacher's measured numbers.
    """
    evaluation = evaluation or (lambda n: latest_evaluation(manifest, n))
    m, s = manifest, manifest['stages'][name]
    settings = s['settings']
    slices = [x for x in m['slices'] if name in x.get('stages', {}) and x['stages'][name].get('epochs_trained')]
    epochs = [e for x in slices for e in x['stages'][name].get('epoch_seconds', [])]
    speed = (s.get('measured') or {}).get('images_per_second') or (s.get('probe') or {}).get('images_per_second', 0.)
    flops = (s.get('probe') or {}).get('flops_per_image')
    budgets = ', '.join(f"{x['budget_minutes']:g}" for x in slices)
    cpu = f", {s['cpu_seconds'] / 60:.0f} CPU-minutes (process time, all threads)" if s.get('cpu_seconds') else ''
    median = f", a median epoch of {statistics.median(epochs):.0f} s" if epochs else ''
    best = s.get('best') or {}
    holdout = (f" Holdout at the chosen epoch {best['epoch']}: {100 * best['val_clean_acc']:.1f}% clean, "
               f"{100 * best['val_pgd_acc']:.1f}% PGD-10." if 'val_pgd_acc' in best else '')
    precisions = sorted({x['stages'][name].get('precision') for x in slices} - {None})
    lines = ['', '## Trained by `awnet zoo`', '',
             f"Plan `{m['plan_name']}`, stage `{name}`, on {s['device']} ({', '.join(precisions) or s['precision']}) "
             f"in {max(1, len(slices))} run(s) of {budgets or m['budget_minutes']} minutes, seed {settings['seed']}: "
             f"{s['epochs_done']} epoch(s) of a planned {s['epochs_planned']} over {s['images_per_epoch']} images, "
             f"{s['recipe']} recipe, best checkpoint by W-Robust accuracy on the {s.get('selection', 'holdout')}, "
             f"{speed:.0f} training images/s measured over whole epochs"
             + (f" ({flops * speed / 1e12:.2f} TFLOP/s)" if flops else '') + f"{median}, {s['seconds'] / 60:.1f} minutes"
             + f"{cpu}.{holdout}", '']
    for role, key in (('clean', 'teacher_nat'), ('robust', 'teacher_adv')):
        if not settings.get(key):
            continue
        teacher = (s.get('teachers') or {}).get(key)
        t = m['stages'].get(teacher, {})
        measured = evaluation(teacher) if teacher else {}
        acc = ', '.join(f"{100 * v['clean_acc']:.2f}% clean on the {v['data']}" for v in measured['clean'].values()) \
            if measured else 'not measured'
        if measured and 'pgd20_acc' in measured:
            acc += f", {100 * measured['pgd20_acc']:.2f}% under PGD-20 on {measured['pgd20_n']} exact test images"
        lines.append(f"- {role.capitalize()} teacher: `{t.get('model')}` trained by stage `{teacher}` ({t.get('recipe')}, "
                     f"{t.get('epochs_done')} epoch(s)): {acc}.")
    return '\n'.join(lines) + '\n'
