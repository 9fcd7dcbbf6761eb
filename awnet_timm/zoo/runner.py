""" `awnet zoo run`: a plan's stages inside one time budget, with a manifest written after every stage

Budget rules (M minutes from the start of the run):
- evaluation and export stages keep their share of M, reserved from the start;
- a training stage gets the time left before that reserve, split among the training stages still to
  run by their shares; its probe measures images/s and the stage trains the most whole epochs that fit
  (at most `max_epochs`); a stage that cannot fit `min_epochs` does not start, and stages that need it
  are skipped;
- stages of one `epochs_group` (the two students) are probed together and train the same number of
  epochs, chosen from their pooled shares and summed epoch times;
- a running stage gets `max_minutes`: past its time it stops at an epoch boundary, and its best
  checkpoint (by W-Robust accuracy) is what later stages use;
- evaluation runs chunks of images until its deadline, never fewer than `n_min` images.
Every stage's outcome goes into `OUT/manifest.json` (written atomically) as soon as it ends; a run with
`--resume` keeps the training stages that finished and redoes the rest.
"""
import json
import os
import platform
import time
from dataclasses import dataclass, replace
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from ..data import load_dataset
from ..data.offline_cifar10 import OFFLINE_CIFAR10_FILES, load_offline_cifar10
from ..eval.cli import load_eval_data
from ..eval.harness import evaluate_robustness
from ..eval.report import build_record, write_report
from ..eval.suite import build_suite, pgd_spec
from ..hub.export import export_checkpoint
from ..training import TrainConfig, create_model_with_weights, load_teacher, train
from ..training.checkpoint import CheckpointError
from ..training.trainer import DivergenceError
from ..training.config import ConfigError
from ..utils import atomic_write, atomic_write_text, resolve_device, sha256_file
from .budget import Probe, device_name, fit_epochs, probe_stage, uses_autocast
from .plan import EvaluateStage, ExportStage, Plan, TrainStage, ZooError

__all__ = ['run_zoo', 'ZooResult', 'MANIFEST_VERSION', 'merge_chunks', 'summary_table', 'stage_config']

MANIFEST_VERSION = 1
FINISHED = ('done', 'shortened')


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


def _eval_splits(dataset: str) -> Tuple[Tuple[str, ...], str]:
    """(splits scored for clean accuracy, split of the attack evaluation)."""
    if dataset == 'cifar10-offline':
        return ('test', 'test-exact'), 'test-exact'
    if dataset in ('cifar10', 'cifar100'):
        return ('test',), 'test'
    return ('val',), 'val'


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
    one is the size-weighted mean of the chunks' AUCs (recorded as such in `chunks`).
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
    return {
        'clean_acc': clean,
        'attacks': attacks,
        'worst_case': dict(results[0]['worst_case'], robust_acc=worst, w_robust_acc=(clean + worst) / 2),
        'router': {'p_clean_clean_mean': weighted([r['router']['p_clean_clean_mean'] for r in results])} if router else None,
        'per_sample': bits,
        'elapsed_seconds': sum(r['elapsed_seconds'] for r in results),
        'chunks': {'sizes': sizes, 'detection_auc': 'size-weighted mean of the chunks\' AUCs'},
    }


def summary_table(manifest: Dict[str, Any]) -> str:
    lines = ['| stage | status | model | recipe | epochs | images/s | TFLOP/s | seconds | result |',
             '|---|---|---|---|---:|---:|---:|---:|---|']
    for name, s in manifest['stages'].items():
        probe = s.get('probe') or {}
        epochs = f"{s['epochs_done']}/{s['epochs_planned']}" if 'epochs_planned' in s else ''
        result = s.get('reason', '')
        if s.get('kind') == 'train' and s.get('best'):
            b = s['best']
            result = f"val clean {100 * b['val_clean_acc']:.1f}%, PGD {100 * b['val_pgd_acc']:.1f}% (epoch {b['epoch']})"
        elif s.get('kind') == 'evaluate' and s.get('status') in FINISHED:
            result = '; '.join(f"{k}: clean {100 * v['clean_acc']:.1f}%" + (
                f", worst {100 * v['worst_case_robust_acc']:.1f}% (N={v['n']})" if 'worst_case_robust_acc' in v else '')
                for k, v in s.get('results', {}).items())
        elif s.get('kind') == 'export' and s.get('status') in FINISHED:
            result = ', '.join(os.path.basename(f) for f in s.get('folders', {}).values())
        lines.append(f"| {name} | {s.get('status', '')} | {s.get('model', '')} | {s.get('recipe', '')} | {epochs} | "
                     f"{probe.get('images_per_second', 0):.1f} | {probe.get('tflops', 0):.3f} | "
                     f"{s.get('seconds', 0):.1f} | {result} |".replace('| 0.0 | 0.000 |', '| | |'))
    return '\n'.join(lines)


def stage_config(plan: Plan, stage: TrainStage, data_dir: str, output: str, device: str = 'auto', progress: bool = True,
                 teachers: Optional[Dict[str, Tuple[str, str]]] = None) -> TrainConfig:
    """ The TrainConfig of a training stage: the plan's shared fields, the stage's, the run's paths.

    `teachers` maps the stages named as '@stage' teachers to (model name, weights file). PGD-k's step is 2.5 eps / k
    unless the plan gives one; `lr_batch` scales lr and router_lr linearly to the stage's batch size.
    """
    values = dict(plan.train, **stage.config)
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


class _Run:
    def __init__(self, plan: Plan, budget_minutes: float, data_dir: str, out: str, device: str, resume: bool,
                 progress: bool):
        if not budget_minutes > 0:
            raise ZooError(f'the budget must be > 0 minutes, got {budget_minutes}')
        self.t0 = time.time()
        self.plan, self.budget = plan, budget_minutes * 60
        self.deadline = self.t0 + self.budget
        self.out = os.path.abspath(out)
        self.device = resolve_device(device)
        self.device_arg = device
        self.progress = progress
        self.path = os.path.join(self.out, 'manifest.json')
        self.probed_groups = set()
        old = self._previous(resume)
        self.data_dir = self._data(data_dir)
        self.manifest = {
            'zoo_version': MANIFEST_VERSION, 'plan_name': plan.name, 'budget_minutes': budget_minutes,
            'started': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(self.t0)), 'device': device_name(self.device),
            'data_dir': data_dir, 'decoded_data_dir': self.data_dir if self.data_dir != data_dir else None,
            'versions': _versions(), 'plan': plan.to_dict(), 'groups': dict(old.get('groups', {})), 'stages': {},
        }
        for s in plan.stages:  # finished training stages of the resumed run are kept
            prev = old.get('stages', {}).get(s.name)
            if isinstance(s, TrainStage) and prev and prev.get('status') in FINISHED:
                self.manifest['stages'][s.name] = dict(prev, resumed=True)
        self.save()

    def _previous(self, resume: bool) -> Dict[str, Any]:
        if not os.path.isfile(self.path):
            return {}
        if not resume:
            raise ZooError(f"'{self.out}' already holds a zoo run (manifest.json): pass --resume to continue it, "
                           f"or another --out")
        with open(self.path) as f:
            old = json.load(f)
        if old.get('plan_name') != self.plan.name:
            raise ZooError(f"'{self.out}' holds a run of plan '{old.get('plan_name')}', not '{self.plan.name}'")
        return old

    def _data(self, data_dir: str) -> str:
        full = self.plan.train.get('train_size') is None
        if self.plan.dataset == 'cifar10-offline' and full:
            with np.load(os.path.join(data_dir, OFFLINE_CIFAR10_FILES['train'])) as f:
                jpeg = 'jpeg' in f.files
            if jpeg:  # decode the 60,000 JPEGs once, not once per stage
                t = time.time()
                decoded = decode_offline_cifar10(data_dir, os.path.join(self.out, 'data'))
                print(f'awnet zoo: decoded the CIFAR-10 JPEGs into {decoded} ({time.time() - t:.1f} s)')
                return decoded
        return data_dir

    def rel(self, path: str) -> str:
        """Paths in the manifest are relative to the run folder, so the folder can move (pack, unpack, copy)."""
        return os.path.relpath(path, self.out)

    def path_of(self, rel: str) -> str:
        return os.path.join(self.out, rel)

    def save(self):
        self.manifest['elapsed_seconds'] = time.time() - self.t0
        atomic_write_text(self.path, json.dumps(self.manifest, indent=2) + '\n')

    def left(self) -> float:
        return self.deadline - time.time()

    def reserved_after(self, i: int) -> float:
        return sum(s.share for s in self.plan.stages[i + 1:] if not isinstance(s, TrainStage)) * self.budget

    def train_share_left(self, i: int) -> float:
        return sum(s.share for s in self.plan.stages[i:] if isinstance(s, TrainStage)
                   and self.manifest['stages'].get(s.name, {}).get('status') not in FINISHED)

    def finished(self, name: str) -> bool:
        return self.manifest['stages'].get(name, {}).get('status') in FINISHED

    def blocked_by(self, stage) -> List[str]:
        deps = list(stage.after) + (stage.teacher_refs() if isinstance(stage, TrainStage) else [])
        return [d for d in deps if not self.finished(d)]

    # training ---------------------------------------------------------------------------------------------------
    def config(self, stage: TrainStage) -> TrainConfig:
        teachers = {}
        for name in stage.teacher_refs():
            ref = self.manifest['stages'][name]
            teachers[name] = (ref['model'], self.path_of(ref['weights']))
        return stage_config(self.plan, stage, self.data_dir, os.path.join(self.out, 'runs'), self.device_arg,
                            self.progress, teachers)

    def shaped(self, cfg: TrainConfig, epochs: int) -> TrainConfig:
        """The config for `epochs` epochs, the paper's step decays kept at 75% and 90% of them."""
        milestones = cfg.decay_milestones
        if 'decay_milestones' not in self.plan.train:  # 1-based epochs that start with the lower lr; never the first
            milestones = tuple(m if m >= 2 else epochs + 1 for m in (round(0.75 * epochs), round(0.9 * epochs)))
        return replace(cfg, epochs=epochs, decay_milestones=milestones)

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

    def skip(self, stage, reason: str, status: str = 'skipped'):
        self.manifest['stages'][stage.name] = {'kind': stage.kind, 'status': status, 'reason': reason, 'seconds': 0.0}
        print(f'awnet zoo: {stage.name} {status}: {reason}')
        self.save()

    def run_train(self, i: int, stage: TrainStage):
        t = time.time()
        available = self.left() - self.reserved_after(i)
        group = [s for s in self.plan.stages[i:] if isinstance(s, TrainStage) and stage.epochs_group
                 and s.epochs_group == stage.epochs_group and not self.finished(s.name) and not self.blocked_by(s)]
        shares = sum(s.share for s in group) if group else stage.share
        allotted = max(0., available) * shares / self.train_share_left(i)
        if allotted <= 0:
            return self.skip(stage, f'no time left before the reserve of the later stages ({available:.0f} s)')
        cfg = self.config(stage)
        fresh = group and stage.epochs_group in self.probed_groups
        known = self.manifest['groups'][stage.epochs_group]['probes'].get(stage.name) if fresh else None
        if known:  # probed with its group a moment ago, on this device
            fields = {k: known[k] for k in ('images_per_second', 'val_images_per_second', 'flops_per_image',
                                            'setup_seconds', 'batch_size')}
            probe, epoch_seconds, images = Probe(**fields), known['epoch_seconds'], known['images_per_epoch']
        else:
            probe, epoch_seconds, images = self.probe(stage, cfg)
        estimates = {}
        if group and stage.epochs_group in self.manifest['groups']:
            epochs = self.manifest['groups'][stage.epochs_group]['epochs']
            estimates = {s.name: self.manifest['groups'][stage.epochs_group].get('estimates', {}).get(s.name, 0.)
                         for s in group[1:]}
            need = probe.setup_seconds + epochs * epoch_seconds
        elif group:
            probes = {stage.name: (probe, epoch_seconds)}
            counts = {stage.name: images}
            for s in group[1:]:
                other, other_epoch, counts[s.name] = self.probe(s, self.config(s))
                probes[s.name] = (other, other_epoch)
            left = allotted - (time.time() - t)
            epochs = fit_epochs(left, sum(e for _, e in probes.values()), sum(p.setup_seconds for p, _ in probes.values()),
                                min(s.max_epochs for s in group))
            estimates = {n: p.setup_seconds + epochs * e for n, (p, e) in probes.items() if n != stage.name}
            self.probed_groups.add(stage.epochs_group)
            self.manifest['groups'][stage.epochs_group] = {
                'epochs': epochs, 'members': [s.name for s in group], 'seconds': left, 'estimates': estimates,
                'probes': {n: dict(p.to_dict(), epoch_seconds=e, images_per_epoch=counts[n]) for n, (p, e) in probes.items()}}
            need = probe.setup_seconds + epochs * epoch_seconds
        else:
            epochs = fit_epochs(allotted - (time.time() - t), epoch_seconds, probe.setup_seconds, stage.max_epochs)
            need = probe.setup_seconds + max(epochs, stage.min_epochs) * epoch_seconds
        budget = allotted - (time.time() - t) - sum(estimates.values())
        base = {'kind': 'train', 'model': cfg.model, 'recipe': cfg.recipe, 'probe': dict(probe.to_dict(), epoch_seconds=epoch_seconds),
                'device': device_name(self.device), 'precision': 'bf16' if uses_autocast(cfg, self.device) else 'fp32',
                'allotted_seconds': budget, 'images_per_epoch': images}
        if epochs < stage.min_epochs or need > budget:
            self.manifest['stages'][stage.name] = dict(base, status='skipped', seconds=time.time() - t, epochs_planned=epochs,
                                                       epochs_done=0, reason=f'cannot finish: {max(epochs, stage.min_epochs)} '
                                                       f'epoch(s) need {need:.0f} s, {budget:.0f} s left for this stage')
            print(f"awnet zoo: {stage.name} skipped: {self.manifest['stages'][stage.name]['reason']}")
            return self.save()
        cfg = replace(self.shaped(cfg, epochs), max_minutes=budget / 60)
        run_dir = os.path.join(cfg.output, cfg.run_name)
        if os.path.exists(run_dir):  # an interrupted attempt: keep it aside, start clean
            os.replace(run_dir, f"{run_dir}.interrupted-{time.strftime('%Y%m%d-%H%M%S')}")
        print(f'awnet zoo: {stage.name}: {cfg.model} {cfg.recipe}, {epochs} epoch(s) of {images} images in {budget:.0f} s '
              f'(probe: {probe.images_per_second:.1f} img/s, {probe.tflops:.3f} TFLOP/s, epoch ~{epoch_seconds:.1f} s)')
        result = train(cfg)
        weights = os.path.join(result.run_dir, 'best.safetensors')
        if not os.path.isfile(weights):
            weights = os.path.join(result.run_dir, 'last.safetensors')
        self.manifest['stages'][stage.name] = dict(
            base, status='done' if result.finished else 'shortened', run_dir=self.rel(result.run_dir), settings=cfg.to_dict(),
            teachers={k: v[1:] for k, v in stage.config.items() if k in ('teacher_nat', 'teacher_adv') and str(v).startswith('@')},
            epochs_planned=epochs, epochs_done=result.epochs_done, seconds=time.time() - t, weights=self.rel(weights),
            best=result.best, last=result.last,
            **({} if result.finished else {'reason': f'stopped at epoch {result.epochs_done} to stay within its time'}))
        self.save()

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

    def release_folder(self, name: str) -> str:
        s = self.manifest['stages'][name]
        return os.path.join(self.out, 'releases', f"{s['model']}.{s['recipe']}_{self.plan.name}")

    def export(self, name: str, dtype: str, record: Optional[str] = None) -> str:
        s = self.manifest['stages'][name]
        result = export_checkpoint(self.path_of(s['run_dir']), self.release_folder(name), eval_record=record, dtype=dtype,
                                   tag=f"{s['recipe']}_{self.plan.name}", weights=os.path.basename(s['weights'])[:-12],
                                   overwrite=True)
        return result.folder

    def run_evaluate(self, i: int, stage: EvaluateStage):
        t = time.time()
        eval_deadline = self.deadline - self.reserved_after(i)
        clean_splits, attack_split = _eval_splits(self.plan.dataset)
        cache, results = {}, {}
        eps = self.plan.train.get('eps', TrainConfig.eps)  # the threat model the students were trained for
        record_dir = os.path.join(self.out, 'eval')
        self.manifest['stages'][stage.name] = {'kind': 'evaluate', 'status': 'running', 'results': results, 'seconds': 0.}
        for name in stage.teachers:
            if not self.finished(name):
                continue
            s = self.manifest['stages'][name]
            model = create_model_with_weights(s['model'], self.path_of(s['weights'])).to(self.device).eval()
            r = {split: self._clean(model, split, stage.clean_n, stage, cache) for split in clean_splits}
            res = {'model': s['model'], 'weights_sha256': sha256_file(self.path_of(s['weights'])), 'clean': r,
                   'clean_acc': r[attack_split]['clean_acc']}
            if s['recipe'] != 'standard':  # a robust teacher's PGD-20 accuracy on the first n_min images
                x, y, info = self._split(attack_split, stage.n_min, cache)
                out = evaluate_robustness(model, x, y, [pgd_spec('pgd_sat', eps, 2 / 255, 20)], stage.batch_size,
                                          self.device, sanity=False, progress=self.progress)
                res.update(pgd20_acc=out['attacks'][0]['robust_acc'], pgd20_n=len(y))
            results[name] = res
            self.save()
        students = [n for n in stage.students if self.finished(n)]
        for k, name in enumerate(students):
            folder = self.export(name, stage.dtype)
            weights = os.path.join(folder, 'model.safetensors')
            model = create_model_with_weights(f'local-dir:{folder}').to(self.device).eval()
            r = {split: self._clean(model, split, stage.clean_n, stage, cache) for split in clean_splits}
            student_deadline = time.time() + (eval_deadline - time.time()) / (len(students) - k)
            results[name] = {'model': self.manifest['stages'][name]['model'], 'release': self.rel(folder), 'clean': r,
                             'clean_acc': r[attack_split]['clean_acc']}
            x_all, y_all, info = self._split(attack_split, stage.n_target, cache)
            specs = build_suite(model, stage.attacks, eps=eps, router_steps=stage.router_steps, batch_size=stage.batch_size)
            chunks, n = [], 0
            while n < len(y_all):
                size = min(stage.chunk, len(y_all) - n)
                if n >= stage.n_min:
                    per_image = sum(c['elapsed_seconds'] for c in chunks) / n
                    if time.time() + per_image * size > student_deadline:
                        break
                chunks.append(evaluate_robustness(model, x_all[n:n + size], y_all[n:n + size], specs, stage.batch_size,
                                                  self.device, sanity=False, progress=self.progress))
                n += size
                merged = merge_chunks(chunks)
                data = dict(info, n=n, description=info['description'].replace(f"first {len(y_all)} ", f'first {n} '))
                record = build_record(merged, results[name]['model'], weights, data, eps, 0, str(self.device),
                                      checkpoint_sha256=sha256_file(weights))
                record['chunks'] = merged['chunks']
                path = os.path.join(record_dir, f'{name}.json')
                write_report(record, path)  # each chunk's work is kept as soon as it is done
                results[name].update(record=self.rel(path), n=n, worst_case_robust_acc=merged['worst_case']['robust_acc'],
                                     attacks={a['name']: a['robust_acc'] for a in merged['attacks']})
                self.manifest['stages'][stage.name]['seconds'] = time.time() - t
                self.save()
        self.manifest['stages'][stage.name].update(status='done', seconds=time.time() - t)
        if not students:
            self.manifest['stages'][stage.name]['reason'] = 'no student finished training'
        self.save()

    # export -----------------------------------------------------------------------------------------------------
    def provenance(self, name: str) -> str:
        m, s = self.manifest, self.manifest['stages'][name]
        settings = s['settings']
        lines = ['', '## Trained by `awnet zoo`', '',
                 f"Plan `{m['plan_name']}` with a budget of {m['budget_minutes']:g} minutes on {s['device']} ({s['precision']}), "
                 f"seed {settings['seed']}: {s['epochs_done']} epoch(s) (planned {s['epochs_planned']}) of {s['images_per_epoch']} "
                 f"images, {s['recipe']} recipe, {s['probe']['images_per_second']:.0f} training images/s "
                 f"({s['probe']['tflops']:.2f} TFLOP/s achieved), {s['seconds'] / 60:.1f} minutes.", '']
        evaluation = next((v.get('results', {}) for v in m['stages'].values() if v.get('kind') == 'evaluate'), {})
        for role, key in (('clean', 'teacher_nat'), ('robust', 'teacher_adv')):
            if not settings.get(key):
                continue
            teacher = s['teachers'].get(key)
            t = m['stages'].get(teacher, {})
            measured = evaluation.get(teacher)
            acc = ', '.join(f"{100 * v['clean_acc']:.2f}% clean on the {v['data']}" for v in measured['clean'].values()) if measured else 'not measured'
            if measured and 'pgd20_acc' in measured:
                acc += f", {100 * measured['pgd20_acc']:.2f}% under PGD-20 on {measured['pgd20_n']} exact test images"
            lines.append(f"- {role.capitalize()} teacher: `{t.get('model')}` trained by stage `{teacher}` ({t.get('recipe')}, "
                         f"{t.get('epochs_done')} epoch(s)): {acc}.")
        return '\n'.join(lines) + '\n'

    def run_export(self, i: int, stage: ExportStage):
        t = time.time()
        evaluation = next((v.get('results', {}) for v in self.manifest['stages'].values() if v.get('kind') == 'evaluate'), {})
        folders = {}
        for name in stage.students:
            if not self.finished(name):
                continue
            record = evaluation.get(name, {}).get('record')
            folder = self.export(name, stage.dtype, record and self.path_of(record))
            readme = os.path.join(folder, 'README.md')
            with open(readme) as f:
                card = f.read()
            atomic_write_text(readme, card + self.provenance(name))
            folders[name] = self.rel(folder)
        entry = {'kind': 'export', 'status': 'done', 'folders': folders, 'seconds': time.time() - t}
        if not folders:
            entry['reason'] = 'no student finished training'
        self.manifest['stages'][stage.name] = entry
        self.save()

    def run(self) -> ZooResult:
        for i, stage in enumerate(self.plan.stages):
            if self.finished(stage.name):
                print(f'awnet zoo: {stage.name} kept from the earlier run')
                continue
            blocked = self.blocked_by(stage)
            if blocked:
                self.skip(stage, f"needs {', '.join(blocked)}, which did not finish")
                continue
            try:
                if isinstance(stage, TrainStage):
                    self.run_train(i, stage)
                elif isinstance(stage, EvaluateStage):
                    self.run_evaluate(i, stage)
                else:
                    self.run_export(i, stage)
            except (ConfigError, CheckpointError, DivergenceError, ValueError, RuntimeError, FileNotFoundError) as e:
                self.skip(stage, f'{type(e).__name__}: {e}', status='failed')
            except BaseException:
                self.manifest['stages'].setdefault(stage.name, {'kind': stage.kind})['status'] = 'interrupted'
                self.save()
                raise
        self.manifest['finished'] = time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())
        self.save()
        failed = [n for n, s in self.manifest['stages'].items() if s['status'] == 'failed']
        print(f"\nawnet zoo: plan {self.plan.name}, budget {self.budget / 60:g} min, used {(time.time() - self.t0) / 60:.2f} min "
              f"on {self.manifest['device']}\n{summary_table(self.manifest)}\nmanifest: {self.path}")
        return ZooResult(self.out, self.manifest, failed)


def run_zoo(plan: Plan, budget_minutes: float, data_dir: str, out: str, device: str = 'auto', resume: bool = False,
            progress: bool = True) -> ZooResult:
    """Run `plan` within `budget_minutes` on the data in `data_dir`, writing runs, records, releases and manifest.json to `out`."""
    if not os.path.isdir(data_dir):
        raise ZooError(f"data directory '{data_dir}' does not exist (e.g. ../shared/data/cifar10 for the offline CIFAR-10 copy)")
    return _Run(plan, budget_minutes, data_dir, out, device, resume, progress).run()

