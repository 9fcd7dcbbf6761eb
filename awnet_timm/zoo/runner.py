""" `awnet zoo run`: a plan's stages inside one time budget (a slice), with a manifest written after every step

One `awnet zoo run` is a slice of M minutes from its start; `--resume` continues the run in `--out` with
another slice. A plan with `"campaign": true` is meant to be run as many slices (e.g. one per session, in the
background: `awnet zoo run --plan P --resume --budget-minutes M --out output/campaign/zoo`).

Training stages:
- a stage's planned total of epochs is fixed when it starts and saved as its run's `epochs` (one lr schedule over
  it): in a campaign it is `max_epochs`; otherwise the most whole epochs that fit this slice (up to `max_epochs`),
  refitted on a resume while the stage (or its group) has not finished;
- a slice trains a stage from its own last checkpoint (exact resume) for as many epochs as fit its time, and stops
  at an epoch boundary: 'done' (planned total reached), 'partial' (a campaign stage with epochs to go: the next
  slice continues it), 'shortened' (out of a fit run's time: final), 'interrupted' (Ctrl-C: the next slice continues
  it). Its best checkpoint, chosen on a holdout of the training images, is what later stages use;
- time: the slice's time left before the evaluation/export reserve is split among the training stages still to run
  by their shares (in a campaign, among those whose dependencies have finished); an epoch's time is the slowest of the
  stage's last three measured epochs but one over 3x their median (the throughput probe only before it has any), and a running stage gets the rest
  of its time as the trainer's `max_minutes`, which stops it by the epochs it measures as it runs;
- stages of one `epochs_group` (students compared with each other) share one planned total and train in lock-step,
  one epoch per trainer call, the members that are behind first: a round starts only when all of it fits, so the
  members end every slice at the same epoch count; in a campaign the group waits until every member can start;
- a stage depends on its `after` stages and '@stage' teachers being 'done' (or 'shortened' in a fit run).
Evaluation and export run on the models whose weights changed since they last ran (students that are still
training included, marked by their epochs; `--redo evaluate` asks for all again); in a campaign they keep their
share only in a slice where a student has new weights or can train, and a model's evaluation that finds no time
left waits for the next slice (a fit run evaluates at least `n_min` images of every student, even past the deadline).
A campaign's evaluation takes in its students once an epoch of one of their runs has reached the stage's
`min_holdout_pgd` in holdout PGD accuracy (read from the runs' logs), all of them from then on (the static twin beside
AW-Net at equal epochs); until then it holds no share for them, and records them as waiting. A student's evaluation
runs the sanity checks on the first `sanity_n` images of its first chunk, and an AW-Net student is also attacked by
transfer from the stage's static students at their current weights ('transfer_pgd', each surrogate's sha256 in the
attack's parameters); a student's result stands while its weights, its expanded attacks with their parameters and
its sanity checks are what the stage asks for now (`answered_by`, as `awnet eval --resume` decides).

A campaign folder that `scripts/campaign_state.py` saved through git and restored on a fresh machine continues
exactly; the restore is recorded in `manifest['restored']` and in the slice that follows it.

A campaign whose folder is gone starts a new one from the released weights with `--warm-start RELEASES` (recorded in
`manifest['warm_start']`; `_Run._warm_start` has the rules); with the folder there, the option is unused.

`--resume` refuses a plan whose training stage changed since it started (`--redo NAME` trains it again from scratch,
its dependents too); a changed evaluate or export stage is redone, and the run says so.
`OUT/manifest.json` (written atomically) holds the plan, every stage's state, and `slices`: one entry per run with
its start, budget, CPU-minutes, the epochs each stage trained, their measured images/s and holdout accuracies.
"""
import dataclasses
import json
import math
import os
import platform
import re
import shutil
import time
from dataclasses import dataclass, replace
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..data import load_dataset
from ..data.offline_cifar10 import OFFLINE_CIFAR10_FILES, load_offline_cifar10
from ..eval.cli import load_eval_data
from ..eval.harness import answered_by, evaluate_robustness
from ..eval.report import build_record, write_report
from ..eval.suite import GROUPS, AttackSpec, build_suite
from ..hub.export import export_checkpoint
from ..models import AWNet
from ..models.awnet import registered_variant
from ..training import TrainConfig, create_model_with_weights, load_run_config, load_teacher, train
from ..training.checkpoint import CheckpointError, load_train_state
from ..training.config import ConfigError
from ..training.trainer import RESUMABLE_CHANGES, DivergenceError, RunInterrupted
from ..utils import atomic_write, atomic_write_text, read_json, resolve_device, sha256_file
from .budget import Probe, device_name, measured_epochs, next_epoch_seconds, probe_stage
from .plan import EvaluateStage, ExportStage, Plan, TrainStage, ZooError, eval_splits
from .report import latest_evaluation, provenance

__all__ = ['run_zoo', 'ZooResult', 'MANIFEST_VERSION', 'merge_chunks', 'summary_table', 'stage_config']

MANIFEST_VERSION = 2
FINAL = ('done', 'shortened')  # a training stage that trains no further: its dependents may start
_ONE_EPOCH = 1e-9  # max_minutes already spent: the trainer stops at its first epoch boundary (one epoch per call)
_NOT_COMPARED = set(RESUMABLE_CHANGES) | {'teacher_nat_checkpoint', 'teacher_adv_checkpoint'}  # paths of this run


@dataclass
class ZooResult:
    out: str
    manifest: Dict[str, Any]
    failed: List[str]


def _versions() -> Dict[str, str]:
    import timm
    from .. import __version__
    return {'awnet_timm': __version__, 'torch': torch.__version__, 'timm': timm.__version__,
            'python': platform.python_version()}


def _now(t: Optional[float] = None) -> str:
    return time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(t))


def decode_offline_cifar10(src: str, dst: str) -> str:
    """Decode the JPEG npz files of the offline CIFAR-10 copy once into plain x/y npz files in `dst`."""
    for split, name in OFFLINE_CIFAR10_FILES.items():
        target = os.path.join(dst, name)
        if os.path.isfile(target):
            continue
        x, y = load_offline_cifar10(src, split)

        def write(tmp, x=x, y=y):
            with open(tmp, 'wb') as f:
                np.savez(f, x=x, y=y)
        atomic_write(target, write)
    return dst


def merge_chunks(results: List[Dict[str, Any]]) -> Dict[str, Any]:
    """ One `evaluate_robustness` result from results on consecutive chunks of images.

    Accuracies and the worst case are recomputed from the per-sample bits (exact); router means are
    size-weighted means (exact); a chunk's detection AUC is a ranking within the chunk, so the merged
    one is the size-weighted mean of the chunks' AUCs (recorded as such in `chunks`). The sanity checks, run with the
    first chunk only, are that chunk's (said in `chunks`).
    """
    sizes = [len(r['per_sample']['clean']) for r in results]
    n = sum(sizes)
    bits = {k: ''.join(r['per_sample'][k] for r in results) for k in results[0]['per_sample']}
    acc = lambda b: b.count('1') / len(b)  # noqa: E731
    weighted = lambda values: sum(v * s for v, s in zip(values, sizes)) / n  # noqa: E731
    clean = acc(bits['clean'])
    attacks = []
    for i, first in enumerate(results[0]['attacks']):
        robust = acc(bits[first['name']])
        a = dict(first, robust_acc=robust, w_robust_acc=(clean + robust) / 2,
                 seconds=sum(r['attacks'][i]['seconds'] for r in results))
        warnings = [w for r in results for w in r['attacks'][i].get('autoattack_warnings', [])]
        if warnings:
            a['autoattack_warnings'] = warnings
        if first['router'] is not None:
            a['router'] = {k: weighted([r['attacks'][i]['router'][k] for r in results]) for k in first['router']}
        attacks.append(a)
    worst = acc(bits['worst_case'])
    router = results[0]['router']
    sanity = {k: results[0][k] for k in ('sanity', 'eps_curve', 'sanity_cost') if k in results[0]}
    chunks = {'sizes': sizes, 'detection_auc': 'size-weighted mean of the chunks\' AUCs'}
    if sanity:
        chunks['sanity'] = (f"run with the first chunk ({sizes[0]} images; eps sweep and PGD-100 on its first "
                            f"{sanity['sanity_cost']['n']}): their attack comparisons are of that chunk's accuracies")
    return {
        'clean_acc': clean,
        'attacks': attacks,
        'worst_case': dict(results[0]['worst_case'], robust_acc=worst, w_robust_acc=(clean + worst) / 2),
        'router': {'p_clean_clean_mean': weighted([r['router']['p_clean_clean_mean'] for r in results])} if router else None,
        'per_sample': bits,
        'elapsed_seconds': sum(r['elapsed_seconds'] for r in results),
        'chunks': chunks,
        **sanity,
    }


def _result_text(name: str, v: Dict[str, Any]) -> str:
    text = f"{name}: clean {100 * v['clean_acc']:.1f}% (N={v['clean_n']})"
    if 'worst_case_robust_acc' in v:
        text += f", worst {100 * v['worst_case_robust_acc']:.1f}% (N={v['worst_case_n']})"
    if 'pgd20_acc' in v:
        text += f", PGD-20 {100 * v['pgd20_acc']:.1f}% (N={v['pgd20_n']})"
    return text + (f" at epoch {v['epochs_done']}/{v['epochs_planned']}" if v.get('epochs_done') != v.get('epochs_planned') else '')


def summary_table(manifest: Dict[str, Any]) -> str:
    lines = ['| stage | status | model | recipe | epochs | images/s | TFLOP/s | seconds | result |',
             '|---|---|---|---|---:|---:|---:|---:|---|']
    for name, s in manifest['stages'].items():
        probe = s.get('probe') or {}
        speed = (s.get('measured') or {}).get('images_per_second') or probe.get('images_per_second', 0)
        epochs = f"{s['epochs_done']}/{s['epochs_planned']}" if 'epochs_planned' in s else ''
        result = s.get('reason', '')
        if s.get('kind') == 'train' and s.get('best'):
            b = s['best']
            result = (f"holdout clean {100 * b['val_clean_acc']:.1f}%, PGD {100 * b['val_pgd_acc']:.1f}% (epoch {b['epoch']})"
                      + (f"; {result}" if result else ''))
        elif s.get('kind') == 'evaluate' and s.get('results'):
            result = '; '.join([_result_text(k, v) for k, v in s['results'].items() if 'clean_acc' in v] +
                               [f'{k}: waiting ({w})' for k, w in (s.get('waiting') or {}).items()])
        elif s.get('kind') == 'export' and s.get('folders'):
            result = ', '.join(os.path.basename(f) for f in s['folders'].values())
        lines.append(f"| {name} | {s.get('status', '')} | {s.get('model', '')} | {s.get('recipe', '')} | {epochs} | "
                     f"{speed:.1f} | {probe.get('tflops', 0):.3f} | "
                     f"{s.get('seconds', 0):.1f} | {result} |".replace('| 0.0 | 0.000 |', '| | |'))
    return '\n'.join(lines)


def _release_epochs(card: str) -> Optional[Tuple[int, int]]:
    """(epochs trained, planned total) as a release's card states them (the zoo's provenance line), if it does."""
    if not os.path.isfile(card):
        return None
    with open(card) as f:
        found = re.search(r'(\d+) epoch\(s\) of a planned (\d+)', f.read())
    return (int(found.group(1)), int(found.group(2))) if found else None


def _model_of(plan: Plan, name: str) -> str:
    return dict(plan.train, **plan.stage(name).config).get('model', TrainConfig.model)


def stage_config(plan: Plan, stage: TrainStage, data_dir: str, output: str, device: str = 'auto', progress: bool = True,
                 teachers: Optional[Dict[str, Tuple[str, str]]] = None) -> TrainConfig:
    """ The TrainConfig of a training stage: the plan's shared fields, the stage's, the run's paths.

    `teachers` maps the stages named as '@stage' teachers to (model name, weights file). The best checkpoint is
    chosen on a holdout of the training images unless the plan says otherwise. PGD-k's step is 2.5 eps / k unless
    the plan gives one; `lr_batch` scales lr and router_lr linearly to the stage's batch size.
    """
    values = dict(plan.train, **stage.config)
    values.setdefault('val_split', 'holdout')
    values.update(dataset=plan.dataset, data_dir=data_dir, output=output, run_name=stage.name, device=device,
                  progress=progress)
    for key in ('teacher_nat', 'teacher_adv'):
        if str(values.get(key, '')).startswith('@'):
            values[key], values[f'{key}_checkpoint'] = (teachers or {})[values[key][1:]]
    if stage.lr_batch:
        scale = values.get('batch_size', TrainConfig.batch_size) / stage.lr_batch
        values['lr'] = values.get('lr', TrainConfig.lr) * scale
        values['router_lr'] = values.get('router_lr', TrainConfig.router_lr) * scale
    cfg = TrainConfig.from_dict(values)
    if cfg.recipe != 'standard' and 'attack_step' not in values:
        cfg = replace(cfg, attack_step=2.5 * cfg.eps / cfg.attack_steps)  # PGD-k's step: 2.5 eps / k
    return cfg


def shaped(plan: Plan, stage: TrainStage, cfg: TrainConfig, epochs: int) -> TrainConfig:
    """The config for a planned total of `epochs`, the paper's step decays kept at 75% and 90% of them."""
    milestones = cfg.decay_milestones
    if 'decay_milestones' not in plan.train and 'decay_milestones' not in stage.config:
        # 1-based epochs that start with the lower lr; never the first
        milestones = tuple(m if m >= 2 else epochs + 1 for m in (round(0.75 * epochs), round(0.9 * epochs)))
    return replace(cfg, epochs=epochs, decay_milestones=milestones)


def _dynamic(model: torch.nn.Module) -> bool:
    """An AW-Net with a router (what the router attacks need, and what transfer from a static twin is for)."""
    return isinstance(model, AWNet) and model.router is not None


def _say(text: str):
    print(f'awnet zoo: {text}', flush=True)  # flushed: a background run's log is a file


def _plain(value: Any) -> Any:
    """A value as JSON gives it back (tuples as lists), for comparing a plan with the one a manifest saved."""
    return json.loads(json.dumps(value))


@dataclass
class _Member:
    """A training stage as one slice sees it: how far its run is and what its next epoch costs."""
    stage: TrainStage
    cfg: TrainConfig  # the stage's config with its teachers, before the planned total is set
    run_dir: str
    done: int  # epochs its run has saved (0: not started)
    planned: int  # the planned total its run was started with (0: not started)
    epoch_seconds: float
    setup_seconds: float  # one trainer call's time outside its epochs (building, loading, checkpoint)
    images: int  # training images per epoch
    probe: Optional[Dict[str, Any]]
    estimate: str  # 'measured' (its run's epochs) or 'probe'
    target: int = 0  # the epoch count this slice trains it to

    @property
    def call_seconds(self) -> float:
        return self.setup_seconds + self.epoch_seconds


class _Run:
    def __init__(self, plan: Plan, budget_minutes: float, data_dir: str, out: str, device: str, resume: bool,
                 progress: bool, redo: Sequence[str] = (), warm_start: Optional[str] = None):
        self.t0, self.cpu0 = time.time(), time.process_time()
        self.plan, self.budget = plan, budget_minutes * 60
        self.deadline = self.t0 + self.budget
        self.out = os.path.abspath(out)
        self.device = resolve_device(device)
        self.device_arg = device
        self.progress = progress
        self.path = os.path.join(self.out, 'manifest.json')
        self.current = ''  # the stage being worked on, named when the run is interrupted
        self.sha_cache: Dict[Tuple[str, float, int], str] = {}
        unknown = sorted(set(redo) - {s.name for s in plan.stages})
        if unknown:
            raise ZooError(f"cannot redo {', '.join(unknown)}: the stages of plan '{plan.name}' are "
                           f"{', '.join(s.name for s in plan.stages)}")
        self.asked_redo = set(redo)
        old = self._previous(resume)
        self._preflight()
        redone = self._decide(old)
        self.data_dir = self._data(data_dir)
        slices = old.get('slices')
        if slices is None and old:  # a run of zoo_version 1: its one run becomes the first slice
            slices = [{'started': old.get('started'), 'budget_minutes': old.get('budget_minutes'),
                       'wall_seconds': old.get('elapsed_seconds'), 'zoo_version': old.get('zoo_version'),
                       'stages': {n: {'epochs_after': s.get('epochs_done')} for n, s in old.get('stages', {}).items()
                                  if isinstance(s, dict) and s.get('kind') == 'train'}}]
        self.slice = {'started': _now(self.t0), 'budget_minutes': budget_minutes, 'device': device_name(self.device),
                      'plan_sha256': _plan_sha(plan), 'resumed': bool(old), 'redone': redone, 'stages': {},
                      'evaluated': [], 'exported': []}
        self.manifest = {
            'zoo_version': MANIFEST_VERSION, 'plan_name': plan.name, 'campaign': plan.campaign,
            'budget_minutes': budget_minutes, 'started': old.get('started', self.slice['started']),
            'device': device_name(self.device), 'data_dir': data_dir,
            'decoded_data_dir': self.data_dir if self.data_dir != data_dir else None,
            'versions': _versions(), 'plan': plan.to_dict(), 'groups': {}, 'stages': {}, 'slices': list(slices or []) + [self.slice],
        }
        self._carry(old, redone)
        if old.get('warm_start'):
            self.manifest['warm_start'] = old['warm_start']
        if old.get('restored'):  # scripts/campaign_state.py brought the folder back on a fresh machine
            self.manifest['restored'] = old['restored']
            if old['restored'][-1]['at'] >= ((slices or [{}])[-1].get('started') or ''):  # since the last slice
                self.slice['restored'] = old['restored'][-1]['commit']
        if warm_start is not None:
            if old:
                _say(f"--warm-start unused: {self.out} holds the campaign, which continues from its own checkpoints")
            else:
                self._warm_start(warm_start)
        self.save()

    # the run folder ----------------------------------------------------------------------------------------------
    def _warm_start(self, folder: str):
        """ Start from the released weights in `folder` (the campaign's own folder is gone), and record it.

        A stage whose `release` is in `folder` and that other stages use as a teacher becomes 'done' with those weights
        (copied into its run folder beside the stage's config, so it loads as a run does, and evaluated again like any
        new weights); any other released stage trains its planned epochs from them (`pretrained`, a new schedule);
        the rest train from scratch. `manifest['warm_start']` says which and why.
        """
        teachers = {t for s in self.plan.stages if isinstance(s, TrainStage) for t in s.teacher_refs()}
        record = {'from': os.path.abspath(folder), 'at': _now(), 'stages': {}}
        released = [s for s in self.plan.stages if isinstance(s, TrainStage) and s.release
                    and os.path.isdir(os.path.join(folder, s.release))]
        for s in released:  # every release is checked before anything is written
            if not os.path.isfile(os.path.join(folder, s.release, 'model.safetensors')):
                raise ZooError(f"--warm-start: '{os.path.join(folder, s.release)}' has no model.safetensors (the weights "
                               f"of a release are kept out of the tree): restore them first with "
                               f"`python scripts/release_weights.py restore`")
        for s in self.plan.stages:
            if not isinstance(s, TrainStage):
                continue
            if s not in released:
                why = f'no release {s.release} in {folder}' if s.release else 'the plan names no release for it'
                record['stages'][s.name] = {'start': 'from scratch', 'why': why}
                continue
            release = os.path.join(folder, s.release)
            source = os.path.join(release, 'model.safetensors')
            epochs = _release_epochs(os.path.join(release, 'README.md'))
            run = self.run_dir(s.name)
            os.makedirs(run, exist_ok=True)
            weights = os.path.join(run, 'released.safetensors')
            atomic_write(weights, lambda tmp: shutil.copyfile(source, tmp))
            entry = {'release': s.release, 'source': os.path.abspath(source), 'sha256': self.sha(weights),
                     'weights': self.rel(weights), 'release_epochs': epochs}
            if s.name in teachers:
                cfg = shaped(self.plan, s, self.config(s), s.max_epochs)
                atomic_write_text(os.path.join(run, 'config.json'), cfg.to_json())  # the weights load as the run's
                done, planned = epochs or (None, None)
                self.manifest['stages'][s.name] = dict(
                    kind='train', status='done', model=cfg.model, recipe=cfg.recipe, run_dir=self.rel(run),
                    settings=cfg.to_dict(), weights=self.rel(weights), epochs_done=done, epochs_planned=planned,
                    seconds=0.0, device='', precision='', warm_start=entry,
                    reason=f'warm start: the released {s.release} (sha256 {entry["sha256"][:12]}), not trained here')
                record['stages'][s.name] = dict(entry, start='done: the released weights')
            else:
                record['stages'][s.name] = dict(entry, start='trains its planned epochs from the released weights')
        self.manifest['warm_start'] = record
        self.slice['warm_start'] = True
        for name, r in record['stages'].items():
            _say(f"warm start: {name} {r['start']}" + (f" ({r['why']})" if 'why' in r else f" ({r['release']})"))

    def warm_weights(self, name: str) -> str:
        """The released weights a warm-started training stage starts from ('' for none)."""
        r = ((self.manifest.get('warm_start') or {}).get('stages') or {}).get(name) or {}
        return self.path_of(r['weights']) if r.get('start', '').startswith('trains') else ''

    def _previous(self, resume: bool) -> Dict[str, Any]:
        if os.path.exists(self.out) and not os.path.isdir(self.out):
            raise ZooError(f"--out '{self.out}' is a file: give a folder for the run")
        if not os.path.exists(self.path):
            return {}
        if not resume:
            raise ZooError(f"'{self.out}' already holds a zoo run (manifest.json): pass --resume to continue it, "
                           f"or another --out")
        old = read_json(self.path, ZooError, 'zoo manifest')
        if not (isinstance(old, dict) and isinstance(old.get('stages'), dict) and isinstance(old.get('plan'), dict)):
            raise ZooError(f"zoo manifest '{self.path}' is not one written by `awnet zoo run` (expected an object with "
                           f"plan and stages): move it away, or give another --out")
        if not isinstance(old.get('zoo_version'), int) or old['zoo_version'] > MANIFEST_VERSION:
            raise ZooError(f"zoo manifest '{self.path}' is version {old.get('zoo_version')!r}; this awnet_timm reads "
                           f"versions up to {MANIFEST_VERSION}")
        if old.get('plan_name') != self.plan.name:
            raise ZooError(f"'{self.out}' holds a run of plan '{old.get('plan_name')}', not '{self.plan.name}'")
        return old

    def _preflight(self):
        """Checks that need the machine (files named by the plan), before the first stage."""
        for s in self.plan.stages:
            if not isinstance(s, TrainStage):
                continue
            cfg = dict(self.plan.train, **s.config)
            for key in ('teacher_nat_checkpoint', 'teacher_adv_checkpoint'):
                if cfg.get(key) and not os.path.exists(cfg[key]):
                    raise ZooError(f"plan '{self.plan.name}', stage '{s.name}': {key} '{cfg[key]}' does not exist")

    def _data(self, data_dir: str) -> str:
        full = self.plan.train.get('train_size') is None
        if self.plan.dataset == 'cifar10-offline' and full:
            with np.load(os.path.join(data_dir, OFFLINE_CIFAR10_FILES['train'])) as f:
                jpeg = 'jpeg' in f.files
            if jpeg:  # decode the 60,000 JPEGs once, not once per stage
                t = time.time()
                decoded = decode_offline_cifar10(data_dir, os.path.join(self.out, 'data'))
                _say(f'decoded the CIFAR-10 JPEGs into {decoded} ({time.time() - t:.1f} s)')
                return decoded
        return data_dir

    def run_dir(self, name: str) -> str:
        return os.path.join(self.out, 'runs', name)

    def saved(self, name: str) -> Tuple[int, int]:
        """(epochs saved, planned total) of a stage's run: (0, 0) before its first checkpoint."""
        state = os.path.join(self.run_dir(name), 'last.state.safetensors')
        if not os.path.isfile(state):
            return 0, 0
        return load_train_state(state)[3]['epoch'], load_run_config(self.run_dir(name)).epochs

    def _changed(self, stage, before: Optional[Dict[str, Any]]) -> List[str]:
        """How a stage differs from the plan it was run with (its definition, and for training its run's config)."""
        changes = []
        now = dataclasses.asdict(stage)
        if before is not None:
            keys = ('kind', 'config', 'max_epochs', 'lr_batch') if isinstance(stage, TrainStage) else \
                [k for k in now if k not in ('name', 'share', 'optional', 'min_holdout_pgd')]  # when, not what
            # a key the saved plan predates had its default (what the stage gave then is the stage's own affair)
            was = {k: _plain(before.get(k, getattr(type(stage), k, None))) for k in keys}
            changes += [f'{k}: was {was[k]!r}, now {_plain(now.get(k))!r}' for k in keys if was[k] != _plain(now.get(k))]
        config = os.path.join(self.run_dir(stage.name), 'config.json')
        if isinstance(stage, TrainStage) and os.path.isfile(config):
            saved = load_run_config(self.run_dir(stage.name))
            teachers = {n: (_model_of(self.plan, n), '') for n in stage.teacher_refs()}
            expected = shaped(self.plan, stage, stage_config(self.plan, stage, '', '', teachers=teachers), saved.epochs)
            expected = replace(expected, decay_milestones=saved.decay_milestones) if 'decay_milestones' not in \
                {**self.plan.train, **stage.config} else expected  # a refitted run keeps the decays it started with
            changes += [f'{f.name}: the run has {getattr(saved, f.name)!r}, the plan gives {getattr(expected, f.name)!r}'
                        for f in dataclasses.fields(TrainConfig)
                        if f.name not in _NOT_COMPARED and _plain(getattr(saved, f.name)) != _plain(getattr(expected, f.name))]
        return changes

    def _decide(self, old: Dict[str, Any]) -> Dict[str, str]:
        """The stages whose earlier work is redone, and why; refuses a training stage that changed after it started."""
        before = {s.get('name'): s for s in old.get('plan', {}).get('stages', []) if isinstance(s, dict)}
        records = old.get('stages', {})
        redo: Dict[str, str] = {}
        for s in self.plan.stages:
            train_stage = isinstance(s, TrainStage)
            started = train_stage and (os.path.isfile(os.path.join(self.run_dir(s.name), 'config.json'))
                                       or bool((records.get(s.name) or {}).get('run_dir')))
            sources = [d for d in list(s.after) + (s.teacher_refs() if train_stage else []) if d in redo]
            if s.name in self.asked_redo:
                redo[s.name] = 'asked for (--redo)'
            elif started and sources:
                redo[s.name] = f"trained after {', '.join(sources)}, which is redone"
            elif old and (changes := self._changed(s, before.get(s.name))):
                if not train_stage:
                    redo[s.name] = f"changed in the plan ({'; '.join(changes)})"
                elif started:
                    raise ZooError(f"stage '{s.name}' changed in the plan since it started ({'; '.join(changes)}): restore "
                                   f"the plan, or pass --redo {s.name} to train it again from scratch (its run is kept aside)")
        return redo

    def _carry(self, old: Dict[str, Any], redone: Dict[str, str]):
        """Keep the earlier state of every stage that is not redone; set aside the runs of those that are."""
        records = old.get('stages', {})
        for s in self.plan.stages:
            if s.name in redone:
                _say(f'{s.name} redone: {redone[s.name]}')
                run = self.run_dir(s.name)
                if isinstance(s, TrainStage) and os.path.exists(run):
                    os.replace(run, f"{run}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
                continue
            prev = records.get(s.name)
            if not isinstance(prev, dict):
                continue
            prev = dict(prev, resumed=True)
            used = [n for n, r in records.items() if isinstance(r, dict) and s.name in (r.get('teachers') or {}).values()]
            if self.plan.campaign and prev.get('status') == 'shortened' and not used:
                prev.update(status='partial', reason='a campaign trains it on to its planned total')
            self.manifest['stages'][s.name] = prev

    def rel(self, path: str) -> str:
        """Paths in the manifest are relative to the run folder, so the folder can move (pack, unpack, copy)."""
        return os.path.relpath(path, self.out)

    def path_of(self, rel: str) -> str:
        return os.path.join(self.out, rel)

    def save(self):
        now = time.time()
        self.manifest['elapsed_seconds'] = now - self.t0
        self.slice.update(wall_seconds=now - self.t0, cpu_minutes=(time.process_time() - self.cpu0) / 60)
        atomic_write_text(self.path, json.dumps(self.manifest, indent=2) + '\n')

    def left(self) -> float:
        return self.deadline - time.time()

    def sha(self, path: str) -> str:
        st = os.stat(path)
        key = (path, st.st_mtime, st.st_size)
        if key not in self.sha_cache:
            self.sha_cache[key] = sha256_file(path)
        return self.sha_cache[key]

    # state of the stages ----------------------------------------------------------------------------------------
    def record(self, name: str) -> Dict[str, Any]:
        return self.manifest['stages'].get(name) or {}

    def final(self, name: str) -> bool:
        return self.record(name).get('status') in FINAL

    def blocked_by(self, stage) -> List[str]:
        deps = list(stage.after) + (stage.teacher_refs() if isinstance(stage, TrainStage) else [])
        return [d for d in deps if not self.final(d)]

    def weights(self, name: str) -> Optional[str]:
        """The weights a stage's dependents, its evaluation and its export use (its best checkpoint so far)."""
        r = self.record(name)
        if r.get('status') == 'failed' or not r.get('weights') or not os.path.isfile(self.path_of(r['weights'])):
            return None
        return self.path_of(r['weights'])

    def note(self, name: str, status: str, reason: str):
        """A stage's status and why, keeping what its record says of its run."""
        kind = self.plan.stage(name).kind
        self.manifest['stages'][name] = dict(self.record(name) or {'kind': kind, 'seconds': 0.0}, status=status, reason=reason)
        _say(f'{name} {status}: {reason}')
        self.save()

    def has_work(self, stage) -> bool:
        """Whether an evaluate or export stage will have new weights to take in this slice (a fit run: always)."""
        if not self.plan.campaign:
            return True
        done = self.record(stage.name).get('results' if isinstance(stage, EvaluateStage) else 'sources', {})
        for name in self.ready(stage):
            w = self.weights(name)
            if isinstance(stage, EvaluateStage):
                stale = bool(w) and not self.evaluated(name, stage, done)
            else:
                stale = bool(w) and (done.get(name) or {}).get('source_sha256') != self.sha(w)
            if stale or (not self.final(name) and not self.blocked_by(self.plan.stage(name))):
                return True
        return False

    def holdout_pgd(self, name: str) -> float:
        """The highest holdout PGD accuracy of any epoch in a stage's run log (0 before its first epoch)."""
        return max([r.get('val_pgd_acc') or 0. for r in measured_epochs(self.run_dir(name))] + [0.])

    def ready(self, stage) -> List[str]:
        """The stage's students it takes in: in a campaign, an evaluation waits until one of them has reached a holdout
        PGD accuracy of `min_holdout_pgd` in an epoch of its run (below it no release is in sight, and the slice's time
        goes to training), then takes them all in, so that each is seen beside the others at the same epochs. Read from
        the runs' logs, which only grow: once open, the gate stays open whatever the best checkpoint (chosen by
        W-Robust, it may sit a little below the floor) or the evaluations a --redo dropped."""
        floor = getattr(stage, 'min_holdout_pgd', 0.) if self.plan.campaign else 0.
        if not floor or any(self.holdout_pgd(n) >= floor for n in stage.students):
            return list(stage.students)
        return []

    def reserved_after(self, i: int) -> float:
        return sum(s.share for s in self.plan.stages[i + 1:] if not isinstance(s, TrainStage) and self.has_work(s)) * self.budget

    def train_share_left(self, i: int) -> float:
        return sum(s.share for s in self.plan.stages[i:] if isinstance(s, TrainStage) and not self.final(s.name)
                   and not (self.plan.campaign and self.blocked_by(s)))

    # training ---------------------------------------------------------------------------------------------------
    def config(self, stage: TrainStage) -> TrainConfig:
        teachers = {}
        for name in stage.teacher_refs():
            teachers[name] = (self.record(name)['model'], self.weights(name))
        cfg = stage_config(self.plan, stage, self.data_dir, os.path.join(self.out, 'runs'), self.device_arg,
                           self.progress, teachers)
        warm = self.warm_weights(stage.name)
        return replace(cfg, pretrained=warm) if warm else cfg

    def teachers(self, cfg: TrainConfig, num_classes: int):
        if cfg.recipe != 'mtard':
            return None
        return [load_teacher(cfg.teacher_nat, cfg.teacher_nat_checkpoint, num_classes, self.device),
                load_teacher(cfg.teacher_adv, cfg.teacher_adv_checkpoint, num_classes, self.device)]

    def probe(self, stage: TrainStage, cfg: TrainConfig) -> Tuple[Probe, float, int]:
        """(probe, seconds of one epoch, images per epoch) of a stage."""
        data = load_dataset(cfg.dataset, cfg.data_dir, cfg.train_split, False, cfg.img_size, cfg.train_size)
        val = 0 if cfg.val_size == 0 else min(cfg.val_size, len(data) if cfg.val_split == 'holdout' else cfg.val_size)
        n_train = len(data) - (val if cfg.val_split == 'holdout' else 0)
        images = (n_train // cfg.batch_size) * cfg.batch_size  # the trainer drops the last partial batch
        probe = probe_stage(cfg, data, self.teachers(cfg, len(data.classes)), self.device, **self.plan.probe)
        return probe, probe.epoch_seconds(images, val), images

    def member(self, stage: TrainStage) -> _Member:
        """Where a stage's run stands; its epoch time from its own measured epochs, or from a probe before it has any."""
        cfg, run_dir, prev = self.config(stage), self.run_dir(stage.name), self.record(stage.name)
        done, planned = self.saved(stage.name)
        records = [r for r in measured_epochs(run_dir) if r['epoch'] <= done]
        probe = prev.get('probe')
        if records:
            setup = prev.get('setup_seconds', (probe or {}).get('setup_seconds', 0.0))
            return _Member(stage, cfg, run_dir, done, planned, next_epoch_seconds(records, 0.), setup,
                           records[-1]['images'], probe, 'measured')
        p, epoch_seconds, images = self.probe(stage, cfg)
        return _Member(stage, cfg, run_dir, done, planned, epoch_seconds, p.setup_seconds, images,
                       dict(p.to_dict(), epoch_seconds=epoch_seconds), 'probe')

    def planned_total(self, members: List[_Member], finished: List[str], seconds: float) -> Tuple[int, int]:
        """(planned total, epochs to reach in this slice) of a stage or group; see the module's rules."""
        cap = min(m.stage.max_epochs for m in members)
        started = [m for m in members if m.planned]
        if finished:  # a fit run's group whose other members stopped: the same epochs as theirs
            return self.record(finished[0])['epochs_planned'], max(self.record(n)['epochs_done'] for n in finished)
        if self.plan.campaign:
            total = started[0].planned if started else cap
            return total, total
        lowest = max([m.done for m in members] + [max(m.stage.min_epochs for m in members)])
        calls = len(members) > 1  # a group trains one epoch per call

        def need(total):
            return sum((total - m.done) * (m.call_seconds if calls else m.epoch_seconds) for m in members) + \
                (0. if calls else members[0].setup_seconds)
        fitting = [e for e in range(lowest, cap + 1) if need(e) <= seconds]
        if not fitting and not any(m.done for m in members):  # its min_epochs do not fit: it does not start
            return lowest, 0
        total = fitting[-1] if fitting else max(m.done for m in members)
        return total, total

    def run_train(self, i: int, stage: TrainStage) -> List[str]:
        """Train a stage, or its whole epochs group, in this slice; returns the stages it handled."""
        plan = self.plan
        group = [stage] if not stage.epochs_group else [
            s for s in plan.stages[i:] if isinstance(s, TrainStage) and s.epochs_group == stage.epochs_group
            and not self.final(s.name)]
        handled = [s.name for s in group]
        finished = [s.name for s in plan.stages if isinstance(s, TrainStage) and stage.epochs_group
                    and s.epochs_group == stage.epochs_group and self.final(s.name)]
        blocked = {s.name: self.blocked_by(s) for s in group if self.blocked_by(s)}
        for s in group:
            if s.name in blocked:
                self.note(s.name, 'skipped', f"needs {', '.join(blocked[s.name])}, which did not finish")
            elif blocked and plan.campaign:  # a group starts together, so that its members stay at equal epochs
                self.note(s.name, 'partial' if self.record(s.name).get('epochs_done') else 'skipped',
                          f"waits until its group's {', '.join(blocked)} can start")
        group = [s for s in group if s.name not in blocked and not (blocked and plan.campaign)]
        if not group:
            return handled
        t = time.time()
        share = sum(s.share for s in group)
        allotted = (self.left() - self.reserved_after(i)) * share / max(self.train_share_left(i), share)
        members = [self.member(s) for s in group]
        allotted -= time.time() - t  # the probes'
        total, target = self.planned_total(members, finished, allotted)
        for m in members:
            m.target = min(target, m.planned) if plan.campaign and m.planned else target
        if stage.epochs_group:
            self.manifest['groups'][stage.epochs_group] = {
                'members': [m.stage.name for m in members] + finished, 'epochs_planned': total, 'target': target,
                'seconds': allotted, 'estimates': {m.stage.name: {'epoch_seconds': m.epoch_seconds, 'setup_seconds': m.setup_seconds,
                                                                  'from': m.estimate, 'epochs_before': m.done} for m in members}}
        deadline = time.time() + allotted
        trained = {m.stage.name: 0 for m in members}
        for m in members:  # a run that reached its target before its record did (stopped between the two)
            if m.done and m.done >= m.target and self.record(m.stage.name).get('epochs_done') != m.done:
                self.train_call(m, total, _ONE_EPOCH, allotted)
        if len(members) == 1:
            m = members[0]
            if m.done < m.target and deadline - time.time() >= m.call_seconds:
                trained[m.stage.name] = self.train_call(m, total, (deadline - time.time()) / 60, allotted)
        else:  # lock-step: the members behind first, a round only when all of it fits
            while True:
                behind = [m for m in members if m.done < m.target]
                if not behind:
                    break
                low = min(m.done for m in behind)
                round_ = [m for m in behind if m.done == low]
                if deadline - time.time() < sum(m.call_seconds for m in round_):
                    break
                for m in round_:
                    trained[m.stage.name] += self.train_call(m, total, _ONE_EPOCH, allotted)
        for m in members:
            self.conclude(m, total, trained[m.stage.name], max(0., deadline - time.time()))
        return handled

    def train_call(self, m: _Member, total: int, max_minutes: float, allotted: float) -> int:
        """One trainer call of a stage from its own last checkpoint; returns the epochs it trained."""
        name = m.stage.name
        cfg = replace(shaped(self.plan, m.stage, m.cfg, total), resume='auto', max_minutes=max_minutes)
        if m.done and 'decay_milestones' not in {**self.plan.train, **m.stage.config}:
            cfg = replace(cfg, decay_milestones=load_run_config(m.run_dir).decay_milestones)  # the decays it started with
        self.current = name
        _say(f"{name}: {cfg.model} {cfg.recipe}, epoch {m.done + 1}{'' if max_minutes == _ONE_EPOCH else '+'} of {total} "
             f"({m.images} images/epoch, ~{m.epoch_seconds:.0f} s/epoch {m.estimate}, {self.left():.0f} s left in the slice)")
        t, cpu, before = time.time(), time.process_time(), m.done
        result = train(cfg)
        seconds, cpu_seconds = time.time() - t, time.process_time() - cpu
        records = [r for r in measured_epochs(m.run_dir) if r['epoch'] <= result.epochs_done]
        new = [r for r in records if r['epoch'] > before]
        m.done, m.planned, m.estimate = result.epochs_done, total, 'measured'
        m.epoch_seconds = next_epoch_seconds(records, m.epoch_seconds)
        m.setup_seconds = max(0., seconds - sum(r['epoch_seconds'] for r in new))
        prev = self.record(name)
        weights = os.path.join(result.run_dir, 'best.safetensors')
        if not os.path.isfile(weights):
            weights = os.path.join(result.run_dir, 'last.safetensors')
        measured = {'epochs': len(records), 'epoch_seconds': sum(r['epoch_seconds'] for r in records) / max(1, len(records)),
                    'images_per_second': sum(r['images'] for r in records) / max(1e-9, sum(r['epoch_seconds'] for r in records))}
        self.manifest['stages'][name] = dict(
            kind='train', status='done' if m.done >= total else 'partial', model=cfg.model, recipe=cfg.recipe,
            probe=m.probe, device=device_name(self.device), precision='bf16' if cfg.autocast(self.device) else 'fp32',
            allotted_seconds=allotted, images_per_epoch=m.images, run_dir=self.rel(result.run_dir), settings=cfg.to_dict(),
            selection=f'{cfg.val_split}: {cfg.val_size} images' if cfg.val_size else 'none (last epoch)',
            teachers={k: v[1:] for k, v in m.stage.config.items() if k in ('teacher_nat', 'teacher_adv') and str(v).startswith('@')},
            epochs_planned=total, epochs_done=m.done, seconds=prev.get('seconds', 0.) + seconds,
            cpu_seconds=prev.get('cpu_seconds', 0.) + cpu_seconds, setup_seconds=m.setup_seconds, measured=measured,
            weights=self.rel(weights), best=result.best, last=result.last, **({'resumed': True} if prev.get('resumed') else {}))
        entry = self.slice['stages'].setdefault(name, {'epochs_before': before, 'epochs_trained': 0, 'calls': 0, 'seconds': 0.,
                                                       'cpu_seconds': 0., 'epoch_seconds': [], 'images': 0})
        entry.update(epochs_after=m.done, epochs_trained=entry['epochs_trained'] + len(new), calls=entry['calls'] + 1,
                     seconds=entry['seconds'] + seconds, cpu_seconds=entry['cpu_seconds'] + cpu_seconds,
                     epoch_seconds=entry['epoch_seconds'] + [r['epoch_seconds'] for r in new],
                     images=entry['images'] + sum(r['images'] for r in new), holdout_last=result.last and {
                         k: result.last[k] for k in ('epoch', 'val_clean_acc', 'val_pgd_acc', 'val_w_robust_acc') if k in result.last},
                     holdout_best=result.best, precision=self.manifest['stages'][name]['precision'])
        collapsed = [r['epoch'] for r in new if r.get('robust_collapse')]
        if collapsed:  # catastrophic overfitting, flagged by the trainer: kept in the slice's record and said
            entry['robust_collapse_epochs'] = entry.get('robust_collapse_epochs', []) + collapsed
            _say(f"{name}: holdout PGD accuracy collapsed at epoch(s) {', '.join(map(str, collapsed))} (below half the "
                 f"best epoch's); the best checkpoint stays at epoch {(result.best or {}).get('epoch')}")
        entry['images_per_second'] = entry['images'] / max(1e-9, sum(entry['epoch_seconds']))
        self.save()
        return len(new)

    def conclude(self, m: _Member, total: int, trained: int, seconds_left: float):
        """A stage's status at the end of its part of the slice."""
        name = m.stage.name
        if m.done and m.done >= total:
            return
        if m.done:  # a run its record does not know yet (stopped before the manifest was written)
            self.manifest['stages'].setdefault(name, {'kind': 'train', 'seconds': 0.}).update(epochs_done=m.done,
                                                                                                epochs_planned=total)
        short = f'an epoch needs ~{m.call_seconds:.0f} s, {seconds_left:.0f} s were left'
        if not m.done:
            epochs = max(m.target or total, 1)  # a target of 0: its min_epochs did not fit
            need = epochs * (m.call_seconds if m.stage.epochs_group else m.epoch_seconds) + m.setup_seconds
            return self.note(name, 'skipped', f'cannot finish: {epochs} epoch(s) need ~{need:.0f} s, '
                             f'{seconds_left:.0f} s left for this stage')
        if self.plan.campaign:
            return self.note(name, 'partial', f'{m.done}/{total} epochs: the next slice continues it'
                             + ('' if trained else f' ({short})'))
        if m.done >= m.target:
            return self.note(name, 'shortened', f"trained to its group's {m.done} epoch(s)")
        self.note(name, 'shortened', f'stopped at epoch {m.done} of {total} to stay within its time')

    # evaluation ---------------------------------------------------------------------------------------------------
    def _split(self, split: str, n: Optional[int], cache: Dict):
        key = (split, n)
        if key not in cache:
            cache[key] = load_eval_data(self.plan.dataset, self.data_dir, split, n)
        return cache[key]

    def _clean(self, model, split: str, n: Optional[int], stage: EvaluateStage, cache) -> Dict[str, Any]:
        x, y, info = self._split(split, n, cache)
        r = evaluate_robustness(model, x, y, [], batch_size=stage.batch_size, device=self.device, sanity=False, progress=False)
        return {'clean_acc': r['clean_acc'], 'n': len(y), 'data': info['description']}

    def architecture(self, name: str) -> str:
        """The name a stage's model is released and recorded under: awnet_r18_025 for awnet_r18 at a quarter of the
        widths (its registered variant, as the export's config.json says), else the model it trained."""
        cfg = load_run_config(self.path_of(self.record(name)['run_dir']))
        return registered_variant(cfg.model, cfg.model_args())[0]

    def release_folder(self, name: str) -> str:
        return os.path.join(self.out, 'releases', f"{self.architecture(name)}.{self.record(name)['recipe']}_{self.plan.name}")

    def load(self, name: str) -> torch.nn.Module:
        """A stage's current weights (its run's own fp32 file), in eval mode on the run's device."""
        return create_model_with_weights(self.record(name)['model'], self.weights(name)).to(self.device).eval()

    def suite(self, name: str, stage: EvaluateStage, model: torch.nn.Module) -> List[AttackSpec]:
        """The attacks of a student: the stage's, and for an AW-Net the transfer from the stage's static students at
        their current weights (each surrogate's sha256 in the attack's parameters); transfer attacks are dropped
        where there is no surrogate."""
        twins = {}
        if _dynamic(model):
            for n in stage.students:
                if n != name and self.weights(n) and not _dynamic(twin := self.load(n)):
                    twins[n] = twin
        transfer = ('transfer',) + GROUPS['transfer']
        names = [a for a in stage.attacks if twins or a not in transfer]
        if twins and not any(a in ('transfer', 'transfer_pgd') for a in names):
            names.append('transfer_pgd')
        eps = self.plan.train.get('eps', TrainConfig.eps)  # the threat model the students were trained for
        specs = build_suite(model, names, eps=eps, router_steps=stage.router_steps, batch_size=stage.batch_size,
                            surrogates=twins)
        for spec in specs:
            used = [n for n in [spec.params.get('surrogate')] + list(spec.params.get('surrogates', [])) if n in twins]
            if used:
                spec.params['surrogate_sha256'] = {n: self.sha(self.weights(n)) for n in used}
        return specs

    def evaluated(self, name: str, stage: EvaluateStage, results: Dict[str, Any]) -> bool:
        """Whether a model's result stands: complete, of its current weights, and for a student a record of the
        attacks (expanded, with their parameters) and the sanity checks the stage asks for now."""
        r, weights = results.get(name) or {}, self.weights(name)
        if not (r.get('complete') and weights and r.get('source_sha256') == self.sha(weights)):
            return False
        if name not in stage.students:
            return True
        try:
            record = read_json(self.path_of(r['record']), ZooError, 'evaluation record')
        except (KeyError, OSError, ZooError):  # no record to answer for it: it is evaluated again
            return False
        if not isinstance(record, dict):
            return False
        first = ((record.get('chunks') or {}).get('sizes') or [0])[0]
        return answered_by(record, self.suite(name, stage, self.load(name)), first, True, stage.sanity_n)

    def export(self, name: str, dtype: str, record: Optional[str] = None) -> str:
        s = self.record(name)
        result = export_checkpoint(self.path_of(s['run_dir']), self.release_folder(name), eval_record=record, dtype=dtype,
                                   tag=f"{s['recipe']}_{self.plan.name}", weights=os.path.basename(s['weights'])[:-12],
                                   overwrite=True)
        return result.folder

    def evaluate_teacher(self, name: str, stage: EvaluateStage, cache) -> Dict[str, Any]:
        clean_splits, attack_split = eval_splits(self.plan.dataset)
        s, model = self.record(name), self.load(name)
        r = {split: self._clean(model, split, stage.clean_n, stage, cache) for split in clean_splits}
        res = {'model': self.architecture(name), 'clean': r, 'clean_acc': r[attack_split]['clean_acc'],
               'clean_n': r[attack_split]['n']}
        if s['recipe'] != 'standard':  # a robust teacher's PGD-20 accuracy on the first n_min images
            x, y, info = self._split(attack_split, stage.n_min, cache)
            eps = self.plan.train.get('eps', TrainConfig.eps)
            specs = build_suite(model, ['pgd_sat'], eps=eps)  # PGD-20, its step scaled with eps
            out = evaluate_robustness(model, x, y, specs, stage.batch_size, self.device, sanity=False, progress=self.progress)
            res.update(pgd20_acc=out['attacks'][0]['robust_acc'], pgd20_n=len(y), pgd20_params=specs[0].params)
        _say(f'{stage.name}: {_result_text(name, dict(res, epochs_done=s["epochs_done"], epochs_planned=s["epochs_planned"]))}')
        return res

    def evaluate_student(self, name: str, stage: EvaluateStage, cache, deadline: float, results: Dict[str, Any]):
        """Clean accuracy, then the attacks chunk by chunk until `deadline` (never fewer than n_min images), the sanity
        checks with the first chunk."""
        clean_splits, attack_split = eval_splits(self.plan.dataset)
        eps = self.plan.train.get('eps', TrainConfig.eps)  # the threat model the students were trained for
        t = time.time()
        folder = self.export(name, stage.dtype)
        weights = os.path.join(folder, 'model.safetensors')
        model = create_model_with_weights(f'local-dir:{folder}').to(self.device).eval()
        r = {split: self._clean(model, split, stage.clean_n, stage, cache) for split in clean_splits}
        res = results[name] = {'model': self.architecture(name), 'release': self.rel(folder), 'clean': r,
                               'clean_acc': r[attack_split]['clean_acc'], 'clean_n': r[attack_split]['n']}
        x_all, y_all, info = self._split(attack_split, stage.n_target, cache)
        specs = self.suite(name, stage, model)
        chunks, n = [], 0
        while n < len(y_all):
            size = min(stage.chunk, len(y_all) - n)
            if n >= stage.n_min:
                per_image = sum(c['elapsed_seconds'] for c in chunks) / n
                if time.time() + per_image * size > deadline:
                    break

            def on_attack(partial, first=n, size=size):
                a = partial['attacks'][-1]
                _say(f"{stage.name} {name}, images {first + 1}-{first + size}: {a['name']} {100 * a['robust_acc']:.1f}% "
                     f"robust ({a['seconds']:.0f} s)")
            chunks.append(evaluate_robustness(model, x_all[n:n + size], y_all[n:n + size], specs, stage.batch_size,
                                              self.device, sanity=not chunks, sanity_n=stage.sanity_n,
                                              progress=self.progress, on_attack=on_attack))
            n += size
            merged = merge_chunks(chunks)
            data = dict(info, n=n, description=info['description'].replace(f"first {len(y_all)} ", f'first {n} '))
            record = build_record(merged, res['model'], weights, data, eps, 0, str(self.device),
                                  checkpoint_sha256=sha256_file(weights))
            record['chunks'] = merged['chunks']
            path = os.path.join(self.out, 'eval', f'{name}.json')
            write_report(record, path)  # each chunk's work is kept as soon as it is done
            res.update(record=self.rel(path), worst_case_robust_acc=merged['worst_case']['robust_acc'], worst_case_n=n,
                       attacks={a['name']: a['robust_acc'] for a in merged['attacks']}, attacks_n=n)
            _say(f"{stage.name} {name}: {n}/{len(y_all)} images attacked: clean {100 * merged['clean_acc']:.1f}%, worst case "
                 f"{100 * merged['worst_case']['robust_acc']:.1f}% ({time.time() - t:.0f} s)")
            self.save()

    def run_evaluate(self, i: int, stage: EvaluateStage):
        """Evaluate the listed models whose weights changed since their last evaluation (teachers first)."""
        t = time.time()
        eval_deadline = self.deadline - self.reserved_after(i)
        prev = self.record(stage.name)
        results = {n: r for n, r in prev.get('results', {}).items() if self.weights(n)}  # of weights that still exist
        entry = self.manifest['stages'][stage.name] = {'kind': 'evaluate', 'status': 'running', 'results': results,
                                                        'seconds': prev.get('seconds', 0.)}
        cache, deferred, evaluated = {}, [], []
        waiting = [n for n in stage.students if n not in self.ready(stage) and self.weights(n)]
        names = [n for n in stage.teachers + tuple(self.ready(stage)) if self.weights(n)]
        pending = [n for n in names if not self.evaluated(n, stage, results)]
        for n in pending:
            if (results.get(n) or {}).get('complete') and results[n].get('source_sha256') == self.sha(self.weights(n)):
                _say(f'{stage.name}: {n} evaluated again: its record does not hold the attacks (expanded, with their '
                     f'parameters) and the sanity checks the stage asks for now')
        for k, name in enumerate(pending):
            if self.plan.campaign and time.time() >= eval_deadline:
                deferred.append(name)
                continue
            self.current = stage.name
            source, s = self.sha(self.weights(name)), self.record(name)
            results[name] = {'complete': False}
            if name in stage.teachers:
                results[name] = self.evaluate_teacher(name, stage, cache)
            else:
                students_left = len([n for n in pending[k:] if n in stage.students])
                self.evaluate_student(name, stage, cache, time.time() + (eval_deadline - time.time()) / students_left, results)
            results[name].update(source_sha256=source, epochs_done=s['epochs_done'], epochs_planned=s['epochs_planned'],
                                 complete=True)
            evaluated.append(name)
            entry['seconds'] = prev.get('seconds', 0.) + time.time() - t
            self.save()
        self.slice['evaluated'] = evaluated
        entry.update(status='partial' if deferred else 'done' if results else 'skipped',
                     seconds=prev.get('seconds', 0.) + time.time() - t)
        if deferred:
            entry['reason'] = f"no time left for {', '.join(deferred)}: a later slice evaluates them"
        elif not results and not waiting:
            entry['reason'] = 'no student or teacher has weights yet'
        elif not pending and not waiting:
            entry['reason'] = 'no weights changed since the last evaluation'
        if waiting:
            entry['waiting'] = {n: f'highest holdout PGD {100 * self.holdout_pgd(n):.1f}% < min_holdout_pgd '
                                   f'{100 * stage.min_holdout_pgd:g}%' for n in waiting}
            entry['reason'] = '; '.join(filter(None, [entry.get('reason'), 'not yet evaluated (the time goes to training): ' +
                                                      ', '.join(f'{n} ({w})' for n, w in entry['waiting'].items())]))
        self.save()

    # export -----------------------------------------------------------------------------------------------------
    def evaluation(self, name: str) -> Dict[str, Any]:
        """The latest evaluation of a stage's current weights ({} when there is none)."""
        r = latest_evaluation(self.manifest, name)
        return r if r and self.weights(name) and r.get('source_sha256') == self.sha(self.weights(name)) else {}

    def provenance(self, name: str) -> str:
        return provenance(self.manifest, name, self.evaluation)

    def run_export(self, i: int, stage: ExportStage):
        """Export the listed students whose weights or evaluation changed since their last export."""
        t = time.time()
        prev = self.record(stage.name)
        folders = {n: f for n, f in prev.get('folders', {}).items() if self.weights(n)}
        sources = {n: v for n, v in prev.get('sources', {}).items() if n in folders}
        exported = []
        for name in stage.students:
            weights = self.weights(name)
            if not weights:
                continue
            record = self.evaluation(name).get('record')
            key = {'source_sha256': self.sha(weights), 'record': record,
                   'record_sha256': self.sha(self.path_of(record)) if record else None}
            old = folders.get(name, '')
            if sources.get(name) == key and old == self.rel(self.release_folder(name)) and os.path.isdir(self.path_of(old)):
                continue
            self.current = stage.name
            folder = self.export(name, stage.dtype, record and self.path_of(record))
            if old and old != self.rel(folder) and os.path.isdir(self.path_of(old)):  # an earlier name of this release
                shutil.rmtree(self.path_of(old))
                _say(f'{stage.name}: {name} is released as {os.path.basename(folder)} now; removed {old}')
            readme = os.path.join(folder, 'README.md')
            with open(readme) as f:
                card = f.read()
            atomic_write_text(readme, card + self.provenance(name))
            folders[name], sources[name] = self.rel(folder), key
            exported.append(name)
        self.slice['exported'] = exported
        entry = {'kind': 'export', 'status': 'done' if folders else 'skipped', 'folders': folders, 'sources': sources,
                 'seconds': prev.get('seconds', 0.) + time.time() - t}
        if not folders:
            entry['reason'] = 'no student has weights yet'
        elif not exported:
            entry['reason'] = 'no weights or evaluation changed since the last export'
        self.manifest['stages'][stage.name] = entry
        self.save()

    # the slice --------------------------------------------------------------------------------------------------
    def fail(self, name: str, e: BaseException):
        self.note(name, 'failed', f'{type(e).__name__}: {e}')

    def interrupted(self, name: str, e: BaseException):
        r = self.manifest['stages'].setdefault(name, {'kind': self.plan.stage(name).kind, 'seconds': 0.})
        kept = f'; its run keeps epoch {e.epochs_saved}' if isinstance(e, RunInterrupted) and e.epochs_saved else ''
        if isinstance(e, RunInterrupted):
            r['epochs_done'] = e.epochs_saved
        r.update(status='interrupted', reason=f'interrupted{kept}: the next --resume continues it')
        self.slice.update(interrupted=_now(), interrupted_stage=name)
        self.save()
        _say(f'{name} interrupted{kept}')

    def run(self) -> ZooResult:
        handled = set()
        for i, stage in enumerate(self.plan.stages):
            if stage.name in handled:
                continue
            if isinstance(stage, TrainStage) and self.final(stage.name):
                _say(f'{stage.name} kept from an earlier run ({self.record(stage.name)["status"]})')
                continue
            blocked = self.blocked_by(stage)
            if blocked and not isinstance(stage, TrainStage):
                self.note(stage.name, 'skipped', f"needs {', '.join(blocked)}, which did not finish")
                continue
            self.current = stage.name
            try:
                if isinstance(stage, TrainStage):
                    handled.update(self.run_train(i, stage))
                elif isinstance(stage, EvaluateStage):
                    self.run_evaluate(i, stage)
                else:
                    self.run_export(i, stage)
            except (ConfigError, CheckpointError, DivergenceError, ValueError, RuntimeError, FileNotFoundError) as e:
                self.fail(self.current, e)
            except BaseException as e:
                self.interrupted(self.current, e)
                raise
        self.manifest['finished'] = self.slice['finished'] = _now()
        self.save()
        failed = [n for n, s in self.manifest['stages'].items() if s['status'] == 'failed']
        print(f"\nawnet zoo: plan {self.plan.name}, slice {len(self.manifest['slices'])}, budget {self.budget / 60:g} min, "
              f"used {(time.time() - self.t0) / 60:.2f} min ({self.slice['cpu_minutes']:.1f} CPU-minutes) on "
              f"{self.manifest['device']}\n{summary_table(self.manifest)}\nmanifest: {self.path}", flush=True)
        return ZooResult(self.out, self.manifest, failed)


def _plan_sha(plan: Plan) -> str:
    import hashlib
    return hashlib.sha256(json.dumps(plan.to_dict(), sort_keys=True).encode()).hexdigest()


def run_zoo(plan: Plan, budget_minutes: float, data_dir: str, out: str, device: str = 'auto', resume: bool = False,
            progress: bool = True, redo: Sequence[str] = (), warm_start: Optional[str] = None) -> ZooResult:
    """ Run `plan` for one slice of `budget_minutes` on the data in `data_dir`, writing runs, records, releases and
    manifest.json to `out`; `resume` continues the run in `out`, `redo` names stages to do again from scratch;
    `warm_start` (a folder of released Hub folders) starts a run whose `out` holds none from the released weights. """
    if not isinstance(plan, Plan):
        raise ZooError(f"run_zoo takes a Plan (e.g. load_plan('smoke')), got {type(plan).__name__} {plan!r}")
    if isinstance(redo, str) or not all(isinstance(n, str) for n in redo):
        raise ZooError(f"redo is a list of stage names, got {redo!r}")
    if isinstance(budget_minutes, bool) or not isinstance(budget_minutes, (int, float)) or not 0 < budget_minutes < math.inf:
        raise ZooError(f'the budget must be a finite number of minutes > 0, got {budget_minutes!r}')
    if not os.path.isdir(data_dir):
        raise ZooError(f"data directory '{data_dir}' does not exist (e.g. ../shared/data/cifar10 for the offline CIFAR-10 copy)")
    if warm_start is not None and not os.path.isdir(warm_start):
        raise ZooError(f"--warm-start '{warm_start}' is not a folder (e.g. hub/releases, holding <name>.<tag>/ release "
                       f"folders)")
    return _Run(plan, budget_minutes, data_dir, out, device, resume, progress, redo, warm_start).run()
