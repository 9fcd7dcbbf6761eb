""" Model cards: Hub YAML metadata and a README from a run's TrainConfig and an `awnet eval` record

A card says what the weights are (architecture, file, sha256), how they were trained (recipe, teachers,
data, saying when it was the JPEG copy of CIFAR-10) and how robust they are: every attack of the
evaluation record with its robust and W-Robust accuracy (paper Eq. 23), and the per-sample worst case
over all of them. The numbers are only ever those of an evaluation of the exact file being published:
`check_eval_record` refuses a record whose `checkpoint_sha256` is not that file's sha256. The YAML
(license, library_name, tags, datasets, metrics, model-index) is written by huggingface_hub's
ModelCardData. Accuracies are fractions in the record and percentages in the card.
"""
import json
import math
import os
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from huggingface_hub import EvalResult, ModelCardData

from ..training import TrainConfig
from ..utils import eps_string, read_json
from .errors import HubReleaseError

__all__ = ['CardInfo', 'load_eval_record', 'check_eval_record', 'model_card', 'zoo_row', 'pct', 'architecture_of', 'TASKS']

EVAL_VERSION = 1

_ARCHITECTURES = {
    'awnet_r18': 'AW-Net: a CIFAR ResNet-18 classifier whose filters are scaled per input and whose Clean/Adv BNs '
                 'are blended (MixBN) by a ResNet-18 adversarial router',
    'awnet_r34': 'AW-Net-L: a CIFAR ResNet-34 classifier whose filters are scaled per input and whose Clean/Adv BNs '
                 'are blended (MixBN) by a ResNet-18 adversarial router',
    'cifar_resnet18': "static CIFAR ResNet-18 (3x3 stem, no max-pool): AW-Net's baseline",
    'cifar_resnet34': "static CIFAR ResNet-34 (3x3 stem, no max-pool): AW-Net-L's baseline",
    'cifar_resnet56': "CIFAR ResNet-56 (He et al. 2016): MTARD's clean teacher",
    'cifar_wrn34_10': "pre-activation WideResNet-34-10: MTARD's robust teacher",
    'cifar_wrn28_10': 'pre-activation WideResNet-28-10',
}

_RECIPES = {
    'mtard': 'MTARD (Zhao et al., ECCV 2022): adversarial distillation from a clean and a robust teacher with '
             "adaptive teacher weights, plus the router's type loss for AW-Net (paper Eq. 22)",
    'pgd_at': 'PGD adversarial training (Madry et al., ICLR 2018)',
    'trades': 'TRADES (Zhang et al., ICML 2019)',
    'standard': 'standard (clean) training',
}

# the task a dataset option trains for (the JPEG copy of CIFAR-10 is still CIFAR-10's task), and its Hub dataset
TASKS = {'cifar10': 'cifar10', 'cifar10-offline': 'cifar10', 'cifar100': 'cifar100'}
_HUB_DATASETS = {k: f'uoft-cs/{v}' for k, v in TASKS.items()}

JPEG_COPY = ('the JPEG copy of CIFAR-10 (the public "CIFAR-10 raw jpeg images", re-encoded at JPEG quality 75, '
             'about 30 dB PSNR against the originals; official order and labels): NOT bit-exact CIFAR-10')

# The paper's own CIFAR-10 numbers (TPAMI 2024, Tables I, IV, IX; MTARD training, official test set, its attacks)
PAPER_RESULTS = {
    'awnet_r18': ('AW-Net', '26.3M', dict(clean=93.08, fgsm=77.38, pgd_sat=50.93, pgd_trades=52.37,
                                                      cw_inf=47.82, autoattack=44.56)),
    'awnet_r34': ('AW-Net-L', '38.8M', dict(clean=92.50, pgd_sat=52.74, pgd_trades=55.23, cw_inf=48.76,
                                                        autoattack=45.78)),
}

CITATION = """@article{wei2024awnet,
  title={Revisiting the Trade-off between Accuracy and Robustness via Weight Distribution of Filters},
  author={Wei, Xingxing and Zhao, Shiji and Li, Bo},
  journal={IEEE Transactions on Pattern Analysis and Machine Intelligence},
  year={2024},
  eprint={2306.03430},
  archivePrefix={arXiv}
}"""


@dataclass
class CardInfo:
    """What the card says about the exported weights themselves."""
    repo_id: str
    architecture: str
    tag: str
    model_args: Dict[str, Any]
    input_size: Tuple[int, int, int]
    num_classes: int
    label_names: Optional[Sequence[str]]
    params: int
    sha256: str
    dtype: str  # 'float32' or 'float16'
    weights_file: str  # the run's file the weights came from: best.safetensors or last.safetensors
    epoch: Optional[int]
    val_images: Optional[int] = None  # held-out images the run evaluated at that epoch (from its log)
    epochs_trained: Optional[int] = None  # the last epoch its log records: fewer than configured if it stopped early
    license: str = 'apache-2.0'
    registry_name: Optional[str] = None  # `arch.tag` when awnet_timm's pretrained cfg points at repo_id


def pct(x: float) -> str:
    """A fraction as the card prints it: a percentage with two decimals."""
    return f'{100 * x:.2f}'


def _index_value(x: float) -> float:
    return round(100 * x, 4)  # percent, without float noise


def _field(d: Any, key: str, kind, where: str):
    if not isinstance(d, dict) or key not in d:
        raise HubReleaseError(f"{where}: missing field '{key}' (expected an awnet eval record, version {EVAL_VERSION})")
    value = d[key]
    if kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, kind)
    if not ok:
        name = kind.__name__ if isinstance(kind, type) else ' or '.join(k.__name__ for k in kind)
        raise HubReleaseError(f"{where}: field '{key}' should be {name}, got {value!r}")
    return value


def _fraction(d: Dict[str, Any], key: str, where: str) -> float:
    value = _field(d, key, float, where)
    if not 0 <= value <= 1:
        raise HubReleaseError(f"{where}: '{key}' = {value} is not a fraction in [0, 1] (the record holds accuracies "
                              f"as fractions; percent strings belong in model_info only)")
    return value


def load_eval_record(path: str) -> Dict[str, Any]:
    """ An `awnet eval` record (JSON), checked for every field a card reads.

    Raises HubReleaseError naming the first missing or malformed field.
    """
    if os.path.isdir(path):
        raise HubReleaseError(f"evaluation record '{path}' is a folder: give the JSON file `awnet eval --out` wrote")
    if not os.path.isfile(path):
        raise HubReleaseError(f"evaluation record '{path}' does not exist (write one with `awnet eval` on the exported "
                              f"model.safetensors)")
    record = read_json(path, HubReleaseError, 'evaluation record')
    where = f"evaluation record '{path}'"
    version = _field(record, 'awnet_eval_version', int, where)
    if version != EVAL_VERSION:
        raise HubReleaseError(f'{where}: awnet_eval_version {version} is not supported (this awnet_timm reads version '
                              f'{EVAL_VERSION})')
    model = _field(record, 'model', str, where)
    if record.get('checkpoint_sha256', '') is None:
        raise HubReleaseError(
            f"{where}: checkpoint_sha256 is null: the evaluation of '{model}' did not record which weights file it "
            f"measured, so nothing ties its numbers to the exported file. Evaluate that file itself: `awnet eval --model "
            f"{_record_architecture(model) or '<architecture>'} --checkpoint <export folder>/model.safetensors ...`, "
            f"then export again with --eval")
    sha = _field(record, 'checkpoint_sha256', str, where)
    if not re.fullmatch(r'[0-9a-f]{64}', sha):
        raise HubReleaseError(f"{where}: checkpoint_sha256 should be 64 lowercase hex digits, got {sha!r}")
    data = _field(record, 'data', dict, where)
    for key, kind in (('dataset', str), ('split', str), ('n', int), ('exact_pixels', bool), ('description', str)):
        _field(data, key, kind, f'{where}, data')
    for key, kind in (('norm', str), ('eps', float), ('eps_str', str), ('seed', int)):
        _field(record, key, kind, where)
    _fraction(record, 'clean_acc', where)
    attacks = _field(record, 'attacks', list, where)
    if not attacks:
        raise HubReleaseError(f'{where}: attacks is empty: a card needs at least one attack')
    for i, attack in enumerate(attacks):
        at = f'{where}, attacks[{i}]'
        _field(attack, 'name', str, at)
        _field(attack, 'kind', str, at)
        _field(attack, 'params', dict, at)
        _fraction(attack, 'robust_acc', at)
        _fraction(attack, 'w_robust_acc', at)
        _field(attack, 'seconds', float, at)
        router = _field(attack, 'router', (dict, type(None)), at)
        if router is not None:
            _fraction(router, 'p_clean_adv_mean', f'{at}.router')
            _fraction(router, 'detection_auc', f'{at}.router')
    worst = _field(record, 'worst_case', dict, where)
    _fraction(worst, 'robust_acc', f'{where}, worst_case')
    _fraction(worst, 'w_robust_acc', f'{where}, worst_case')
    _field(worst, 'attacks', list, f'{where}, worst_case')
    router = _field(record, 'router', (dict, type(None)), where)
    if router is not None:
        _fraction(router, 'p_clean_clean_mean', f'{where}, router')
    for i, check in enumerate(_field(record, 'sanity', list, where)):
        for key, kind in (('check', str), ('passed', bool), ('detail', str)):
            _field(check, key, kind, f'{where}, sanity[{i}]')
    _field(record, 'elapsed_seconds', float, where)
    _field(record, 'model_info', dict, where)
    _field(record, 'versions', dict, where)
    return record


def architecture_of(model: str) -> str:
    """The architecture of a model name: awnet_r18 of awnet_r18, awnet_r18.tag and hf-hub:org/awnet_r18.tag."""
    return model.split(':')[-1].split('/')[-1].split('.')[0]


def _record_architecture(model: str) -> Optional[str]:
    """The architecture a record's model was: a `local-dir:` folder's is in its config.json (None once it is gone)."""
    if not model.startswith('local-dir:'):
        return architecture_of(model)
    try:
        config = read_json(os.path.join(model[len('local-dir:'):], 'config.json'))
    except (OSError, ValueError):
        return None  # the sha256 check alone ties the record to the file
    return config.get('architecture') if isinstance(config, dict) else None


# Model arguments that change what a trained AW-Net computes at test time, with the value that means "as the paper"
TEST_TIME_ARGS = {'route_threshold': None, 'route_temperature': 0., 'clean_share_max': 1.}


def check_eval_record(record: Dict[str, Any], architecture: str, sha256: str, weights_path: str,
                      trained_as: Optional[str] = None, model_args: Optional[Dict[str, Any]] = None) -> None:
    """Refuse a record made on another architecture, on another file than `weights_path` (sha256 `sha256`), or with
    test-time model arguments (route threshold, bounded routing) other than those the export's `model_args` load;
    `trained_as`: the base model a compact variant was trained (and evaluated) as, e.g. cifar_resnet18."""
    if _record_architecture(record['model']) not in (architecture, trained_as, None):
        raise HubReleaseError(f"the evaluation record is of model '{record['model']}', the export is '{architecture}'")
    given, loads = record.get('model_kwargs') or {}, model_args or {}
    if record['model'].startswith('local-dir:'):  # the folder's own arguments, then the record's on top
        given = {**loads, **given}
    for key, default in TEST_TIME_ARGS.items():
        if given.get(key, default) != loads.get(key, default):
            raise HubReleaseError(
                f"the evaluation record was made with {key}={given.get(key, default)!r}, but the export loads "
                f"{key}={loads.get(key, default)!r}: its numbers are of another model. Evaluate the export as it loads "
                f"(`awnet eval --model local-dir:<export folder>` without --model-kwargs), or train with the argument")
    if record['checkpoint_sha256'] != sha256:
        raise HubReleaseError(
            f"the evaluation record was made on a file with sha256 {record['checkpoint_sha256']} "
            f"({record.get('checkpoint', '?')}), but the exported {os.path.basename(weights_path)} has sha256 {sha256}. "
            f"A card only carries numbers measured on the exact file it describes: run `awnet eval` on the exported "
            f"file ({weights_path}; for --dtype fp16 that is the float16 file), then export again with --eval "
            f"(the export is deterministic, so the file and its sha256 stay the same).")


def _bound(record: Dict[str, Any]) -> str:
    """' (upper bound)' beside a worst case that is only an upper bound (`eval.report.upper_bound` says why)."""
    return ' (upper bound)' if record['worst_case'].get('upper_bound') else ''


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return eps_string(value) if 0 < value < 1 else f'{value:g}'  # 8/255, not 0.0313725
    if isinstance(value, (list, tuple)):
        return '(' + ', '.join(_fmt(v) for v in value) + ')'
    return str(value)


def _cell(value: Any) -> str:
    return str(value).replace('|', '\\|').replace('\n', ' ')  # a table cell stays one cell


def _base(path: str) -> str:
    """A local path without the machine's part (a weights file keeps its run directory's name); Hub names stay."""
    if path.startswith('hf-hub:') or '/' not in path.replace(os.sep, '/'):
        return path
    parts = [p for p in path.replace(os.sep, '/').split('/') if p]
    return '/'.join(parts[-2:] if path.endswith('.safetensors') else parts[-1:])


def _data_name(cfg: TrainConfig) -> str:
    return {'cifar10-offline': 'the JPEG copy of CIFAR-10 (not bit-exact)', 'cifar10': 'CIFAR-10',
            'cifar100': 'CIFAR-100'}.get(cfg.dataset, f"the ImageFolder dataset '{_base(cfg.data_dir)}'")


def _training_data(cfg: TrainConfig) -> str:
    n = f'{cfg.train_size} images of ' if cfg.train_size else ''
    if cfg.dataset == 'cifar10-offline':
        text = f'{n}the CIFAR-10 training set, as {JPEG_COPY}'
    elif cfg.dataset in ('cifar10', 'cifar100'):
        text = f'{n}the {_data_name(cfg)} training set (torchvision download, official pixels)'
    else:
        text = f"{n}the '{cfg.train_split}' split of the ImageFolder dataset '{_base(cfg.data_dir)}'"
    aug = []
    if cfg.img_size:
        aug.append(f'resized to {cfg.img_size}x{cfg.img_size}')
    if cfg.crop_pad:
        aug.append(f'random crops with {cfg.crop_pad}-pixel zero padding')
    if cfg.hflip:
        aug.append('horizontal flips')
    return text + ('; ' + ', '.join(aug) if aug else '; no augmentation')


def _selection(cfg: TrainConfig, info: CardInfo) -> str:
    epoch = f'epoch {info.epoch} of {cfg.epochs}' if info.epoch else f'{cfg.epochs} epochs configured'
    if info.weights_file.startswith('best'):
        # the count the run's log measured (a split smaller than --val-size gives fewer), else the configured one
        n = info.val_images if info.val_images is not None else cfg.val_size
        if cfg.val_split == 'test':
            held = f'the first {n} images of the test split (as the paper picks its best W-Robust checkpoint)'
        elif cfg.val_split == 'holdout':
            held = f'{n} training images held out of training'
        else:
            held = f"{n} images of the '{cfg.val_split}' split"
        if info.val_images is None:
            held += ' (as configured; fewer if the split was smaller)'
        caution = ('. **Caution: this checkpoint was chosen on test images, so test accuracies measured on those '
                   'images are optimistic**' if cfg.val_split == 'test' else '')
        return (f'`{info.weights_file}`: the epoch with the best W-Robust accuracy (clean and PGD-{cfg.val_attack_steps}) '
                f'on {held}; {epoch}{caution}')
    return f'`{info.weights_file}`: the last epoch of the run; {epoch}'


def _epochs(cfg: TrainConfig, info: CardInfo) -> str:
    """The epochs of the schedule, and those trained where the run stopped before its end."""
    if info.epochs_trained is not None and info.epochs_trained < cfg.epochs:
        return f'{cfg.epochs} epochs planned, {info.epochs_trained} trained (stopped before its schedule ended)'
    return f'{cfg.epochs} epochs'


def _lr_schedule(cfg: TrainConfig) -> str:
    """The lr schedule of a run, as `training/schedules.py` builds it."""
    warmup = f'{cfg.warmup_epochs} linear warm-up epoch(s) from lr/100, then ' if cfg.warmup_epochs else ''
    if cfg.sched == 'multistep':
        return f'lr x{cfg.decay_rate} from epochs {", ".join(map(str, cfg.decay_milestones))}' + (
            f', the first {cfg.warmup_epochs} epoch(s) a linear warm-up' if cfg.warmup_epochs else '')
    if cfg.sched == 'onecycle':
        return f'one-cycle lr: linear from 0 to {cfg.lr} over {cfg.onecycle_peak:.0%} of the steps, then linear to 0'
    shape = 'cosine' if cfg.sched == 'cosine' else 'linear'
    return f'{warmup}{shape} decay to 0 over the epochs, per step'


def _training_attack(cfg: TrainConfig) -> str:
    """The training attack of a run, as `training/recipes.py` builds it."""
    if cfg.attack == 'nfgsm':
        step = cfg.nfgsm_step if cfg.nfgsm_step is not None else cfg.eps
        return (f'N-FGSM (de Jorge et al., 2022): one step of {_fmt(step)} from x + U(-{cfg.nfgsm_noise:g} eps, '
                f'{cfg.nfgsm_noise:g} eps), not projected back onto the eps-ball, eps {_fmt(cfg.eps)}')
    return (f'L-inf PGD-{cfg.attack_steps}, eps {_fmt(cfg.eps)}, step {_fmt(cfg.attack_step)}, '
            f'{cfg.resolved_attack_start} random start')


def _recipe_lines(cfg: TrainConfig, info: CardInfo) -> List[str]:
    awnet = info.architecture.startswith('awnet_')
    lines = [f'- **Recipe:** `{cfg.recipe}`, {_RECIPES.get(cfg.recipe, cfg.recipe)}',
             f'- **Data:** {_training_data(cfg)}',
             f'- **Weights:** {_selection(cfg, info)}',
             f'- **Schedule:** {_epochs(cfg, info)}, batch {cfg.batch_size}, SGD momentum {cfg.momentum}, lr {cfg.lr}'
             + (f' (router {cfg.router_lr})' if awnet else '') + f', weight decay {cfg.weight_decay}, '
             + _lr_schedule(cfg)]
    if cfg.recipe != 'standard':
        lines.append(f'- **Training attack:** {_training_attack(cfg)}, model in {cfg.attack_bn} mode while attacking'
                     + (f", AW-Net route '{cfg.attack_route}'" if awnet else ''))
    if awnet and cfg.recipe in ('mtard', 'pgd_at'):
        lines.append('- **Router training:** ' + (
            f'router-aware (not in the paper): {cfg.router_aware:g} of each batch also attacked with the router\'s '
            f'outputs held constant and P(clean) pushed up (random weight up to 0.4, eps scaled by 0.4-1.1), labelled '
            f'adversarial and trained through the router\'s own route' if cfg.router_aware else
            "the paper's (the training attack on the Adv BN path only)"))
    if cfg.recipe == 'mtard' and cfg.kl_reduction != 'mean':
        lines.append(f"- **Distillation KL:** `{cfg.kl_reduction}` (summed over the classes, averaged over the batch; "
                     f"MTARD's code averages over batch x classes)")
    if cfg.recipe == 'mtard':
        lines.append(f'- **MTARD:** student temperature tau {cfg.tau}, teacher-weight step eta {cfg.eta}'
                     + (f", router type-loss weight {cfg.type_loss_weight}" if awnet else ''))
        for role, name, ckpt in (('clean', cfg.teacher_nat, cfg.teacher_nat_checkpoint),
                                 ('robust', cfg.teacher_adv, cfg.teacher_adv_checkpoint)):
            weights = f'weights `{_base(ckpt)}`' if ckpt else 'its own pretrained weights'
            lines.append(f'- **{role.capitalize()} teacher:** `{name}`, {weights}')
    elif cfg.recipe == 'trades':
        lines.append(f'- **TRADES:** beta {cfg.trades_beta}' + (f', router type-loss weight {cfg.type_loss_weight}' if awnet else ''))
    elif cfg.recipe == 'pgd_at' and awnet:
        lines.append(f'- **Router type-loss weight:** {cfg.type_loss_weight}')
    if cfg.pretrained:
        frozen = [n for n, on in (('router', cfg.freeze_router), ('backbone', cfg.freeze_backbone)) if on]
        lines.append(f'- **Initial weights:** `{_base(cfg.pretrained)}`' + (f' (frozen: {", ".join(frozen)})' if frozen else ''))
    lines.append(f'- **Seed:** {cfg.seed}; precision `{cfg.precision}`')
    return lines


def _public_config(cfg: TrainConfig) -> Dict[str, Any]:
    d = cfg.to_dict()
    for key in ('data_dir', 'output', 'resume', 'pretrained', 'teacher_nat_checkpoint', 'teacher_adv_checkpoint'):
        d[key] = _base(d[key]) if d[key] else d[key]  # local paths say nothing to a reader
    return d


def _usage(info: CardInfo) -> str:
    registry = (f"\n# or through awnet_timm's registry:\n"
                f"# model = timm.create_model('{info.registry_name}', pretrained=True).eval()" if info.registry_name else '')
    router = ('\nlogits, r = model.forward_with_router(x)  # r.p_clean: the router\'s P(clean) per image'
              if info.architecture.startswith('awnet_') else '')
    return f"""```python
import timm, torch
import awnet_timm  # registers the AW-Net models with timm (timm has no plugin discovery)

model = timm.create_model('hf-hub:{info.repo_id}', pretrained=True).eval(){registry}
x = torch.rand(8, {', '.join(map(str, info.input_size))})  # pixels in [0, 1]: the model normalizes inside, eps is in pixel units
logits = model(x){router}
```

Downloads go to the Hugging Face cache; with a warm cache `HF_HUB_OFFLINE=1` loads without network, and
`HF_ENDPOINT=<mirror>` downloads through a Hub mirror."""


def _eval_section(record: Dict[str, Any], info: CardInfo) -> List[str]:
    data = record['data']
    out = ['## Robustness evaluation', '',
           f"Measured by `awnet eval` on this exact file: `model.safetensors` with sha256 `{info.sha256}`, the "
           f"`checkpoint_sha256` of the evaluation record `awnet_eval.json` in this repo"
           + (' (the float16 weights, evaluated as stored)' if info.dtype == 'float16' else '') + '.', '',
           f"- **Data:** {data['description']} ({data['n']} images, dataset `{data['dataset']}`, split `{data['split']}`, "
           f"exact pixels: {'yes' if data['exact_pixels'] else 'no'})",
           f"- **Threat model:** {record['norm']}, eps {record['eps_str']}; seed {record['seed']}; "
           f"{record['elapsed_seconds']:.0f} s in all"]
    if not data['exact_pixels']:
        out.append(f'- **Caution:** the evaluation images are not the exact CIFAR-10 pixels (e.g. {JPEG_COPY}); these '
                   f'numbers are not comparable with official test-set numbers')
    out += ['', f"**Clean accuracy: {pct(record['clean_acc'])} %.** W-Robust accuracy = (clean + robust) / 2 "
            f'(paper Eq. 23). The worst case counts an image as robust only if it withstands every attack below.', '',
            '| attack | kind | settings | robust acc (%) | W-Robust acc (%) | router: mean P(clean) on x_adv | '
            'router: detection AUC | seconds |',
            '|---|---|---|---:|---:|---:|---:|---:|']
    for a in record['attacks']:
        r = a['router']
        settings = _cell(', '.join(f'{k}={_fmt(v)}' for k, v in a['params'].items()) or '-')
        router = f"{r['p_clean_adv_mean']:.3f} | {r['detection_auc']:.4f}" if r else '- | -'
        out.append(f"| `{a['name']}` | {a['kind']} | {settings} | {pct(a['robust_acc'])} | {pct(a['w_robust_acc'])} | "
                   f"{router} | {a['seconds']:.0f} |")
    worst = record['worst_case']
    out.append(f"| **worst case** | per-sample minimum{_bound(record)} | {len(worst['attacks'])} attacks: "
               f"{', '.join(worst['attacks'])} | **{pct(worst['robust_acc'])}** | **{pct(worst['w_robust_acc'])}** | - | - | - |")
    if worst.get('upper_bound'):
        out += ['', f"The worst case is {worst['upper_bound']}."]
    if record['router']:
        out += ['', f"The router's mean P(clean) on the clean images: {record['router']['p_clean_clean_mean']:.3f}."]
    if not record['sanity']:
        out += ['', '**Sanity checks** (Carlini et al. 2019): not run for this record.']
    else:
        out += ['', '**Sanity checks** (Carlini et al. 2019):', '', '| check | passed | detail |', '|---|---|---|']
        out += [f"| {_cell(c['check'])} | {'yes' if c['passed'] else '**NO**'} | {_cell(c['detail'])} |" for c in record['sanity']]
    out += ['', 'RobustBench `model_info` record:', '', '```json', json.dumps(record['model_info'], indent=2), '```', '',
            'Versions: ' + ', '.join(f'{k} {v}' for k, v in record['versions'].items()) + '.']
    return out


def _attack_acc(record: Dict[str, Any], name: str) -> str:
    return next((pct(a['robust_acc']) for a in record['attacks'] if a['name'] == name), '-')


def _compare_section(record: Optional[Dict[str, Any]], info: CardInfo, others: Dict[str, Dict[str, Any]]) -> List[str]:
    """This checkpoint's evaluation beside other models' records (e.g. the static twin trained beside it)."""
    rows = ([(f'**this checkpoint** (`{info.architecture}.{info.tag}`)', record)] if record is not None else []) + \
        list(others.items())
    out = ['', '## Side by side', '',
           'Each row is that model\'s own `awnet eval` record; compare rows only where the images (N, data) and '
           'attacks agree. The worst case is over every attack of its row.', '',
           '| model | data (N) | clean | FGSM | PGD-20 | CW-inf | AutoAttack | worst case | W-Robust (worst case) | '
           'attacks |', '|---|---|---:|---:|---:|---:|---:|---:|---:|---:|']
    for label, r in rows:
        data = r['data']
        out.append(f"| {_cell(label)} | {'exact' if data['exact_pixels'] else 'NOT exact'} {data['split']} ({data['n']}) | "
                   f"{pct(r['clean_acc'])} | {_attack_acc(r, 'fgsm')} | {_attack_acc(r, 'pgd_sat')} | "
                   f"{_attack_acc(r, 'cw_inf')} | {_attack_acc(r, 'autoattack')} | {pct(r['worst_case']['robust_acc'])}{_bound(r)} | "
                   f"{pct(r['worst_case']['w_robust_acc'])} | {len(r['worst_case']['attacks'])} |")
    return out


def _paper_section(architecture: str) -> List[str]:
    if architecture not in PAPER_RESULTS:
        return []
    name, params, r = PAPER_RESULTS[architecture]
    cols = ('clean', 'fgsm', 'pgd_sat', 'pgd_trades', 'cw_inf', 'autoattack')
    wr = f"{(r['clean'] + r['autoattack']) / 2:.2f}"
    return ['', "## The paper's numbers (not this checkpoint)", '',
            f'Reported by Wei, Zhao & Li (TPAMI 2024) for {name} ({params} parameters in their units of 2^20), MTARD '
            f'training on the official '
            f'CIFAR-10 training set, evaluated on the official test set with their attacks. They are here for '
            f'comparison only; the table above is what this file measured.', '',
            '| clean | FGSM | PGD_sat | PGD_trades | CW_inf | AutoAttack | W-Robust (AA) |',
            '|---:|---:|---:|---:|---:|---:|---:|',
            '| ' + ' | '.join(f'{r[c]:.2f}' if c in r else '-' for c in cols) + f' | {wr} |']


def _card_data(cfg: TrainConfig, info: CardInfo, record: Optional[Dict[str, Any]]) -> ModelCardData:
    datasets = [_HUB_DATASETS[cfg.dataset]] if cfg.dataset in _HUB_DATASETS else []
    results = []
    if record is not None:
        data = record['data']
        dataset_type = _HUB_DATASETS.get(data['dataset'], data['dataset'])
        if dataset_type not in datasets and dataset_type in _HUB_DATASETS.values():
            datasets.append(dataset_type)
        split = 'test' if data['split'].startswith('test') else data['split']
        threat = f"{record['norm']}, eps {record['eps_str']}"

        def result(name, value, **args):
            return EvalResult(task_type='image-classification', task_name='Image Classification',
                              dataset_type=dataset_type, dataset_name=data['description'], dataset_split=split,
                              metric_type='accuracy', metric_name=name, metric_value=_index_value(value),
                              metric_args=args or None)
        results.append(result('Clean accuracy', record['clean_acc']))
        for a in record['attacks']:
            results.append(result(f"Robust accuracy, {a['name']} ({threat})", a['robust_acc'],
                                  attack=a['name'], norm=record['norm'], eps=record['eps_str']))
        results.append(result(f"Robust accuracy, worst case over {len(record['worst_case']['attacks'])} attacks "
                              f"({threat}){_bound(record)}",
                              record['worst_case']['robust_acc'], attack='worst_case', norm=record['norm'], eps=record['eps_str']))
        results.append(result(f'W-Robust accuracy, worst case ({threat})', record['worst_case']['w_robust_acc'],
                              attack='worst_case', norm=record['norm'], eps=record['eps_str']))
    return ModelCardData(
        license=info.license,
        library_name='timm',
        pipeline_tag='image-classification',
        tags=['image-classification', 'timm', 'awnet_timm', 'adversarial-robustness', info.architecture],
        datasets=datasets or None,
        metrics=['accuracy'],
        model_name=info.repo_id if results else None,
        eval_results=results or None,
    )


def model_card(cfg: TrainConfig, info: CardInfo, record: Optional[Dict[str, Any]] = None,
               compare: Optional[Dict[str, Dict[str, Any]]] = None) -> str:
    """ README.md for a Hub repo: YAML metadata, usage, model details, training, robustness, the paper's numbers.

    `record` must already be checked against the file (check_eval_record); without one the card says the
    weights are not evaluated yet. `compare` maps labels to other models' records (load_eval_record), shown in a
    side-by-side table with this one's.
    """
    arch = info.architecture
    labels = f" ({', '.join(info.label_names)})" if info.label_names else ''
    body = [f'# {info.repo_id}', '',
            f"`{arch}`: {_ARCHITECTURES.get(arch, arch)}. Trained with awnet_timm's `{cfg.recipe}` recipe on "
            f"{_data_name(cfg)}. AW-Net is from *Revisiting the Trade-off between Accuracy and "
            f"Robustness via Weight Distribution of Filters* (Wei, Zhao & Li, TPAMI 2024, "
            f"[arXiv:2306.03430](https://arxiv.org/abs/2306.03430)); awnet_timm is an independent implementation.",
            '', '## Usage', '', _usage(info), '',
            '## Model details', '',
            f'- **Architecture:** `{arch}`' + (f", model arguments `{json.dumps(info.model_args, sort_keys=True)}`"
                                                 if info.model_args else ''),
            f'- **Parameters:** {info.params / 1e6:.2f}M ({info.params:,})',
            f"- **Input:** {'x'.join(map(str, info.input_size))} pixels in [0, 1]; normalization is inside the model "
            f'(pretrained cfg mean 0, std 1)',
            f'- **Classes:** {info.num_classes}{labels}',
            f'- **Weights:** `model.safetensors`, {info.dtype}'
            + (' (timm loads them into the float32 model)' if info.dtype == 'float16' else '') + f', sha256 `{info.sha256}`',
            f'- **License:** {info.license}', '',
            '## Training', ''] + _recipe_lines(cfg, info) + [
            '', '<details><summary>The run\'s TrainConfig (local paths reduced to their last component)</summary>', '',
            '```json', json.dumps(_public_config(cfg), indent=2, sort_keys=True), '```', '', '</details>', '']
    if record is not None:
        body += _eval_section(record, info)
    else:
        body += ['## Robustness evaluation', '',
                 'Not evaluated yet. Run `awnet eval` on this `model.safetensors` and export again with `--eval`; '
                 '`awnet publish` refuses an unevaluated folder unless told otherwise.']
    if compare:
        body += _compare_section(record, info, compare)
    body += _paper_section(arch)
    body += ['', '## Citation', '', '```bibtex', CITATION, '```', '']
    return '---\n' + _card_data(cfg, info, record).to_yaml() + '\n---\n\n' + '\n'.join(body)


def zoo_row(cfg: TrainConfig, info: CardInfo, record: Optional[Dict[str, Any]]) -> str:
    """The row of this export in MODEL_CARD.md's zoo table (its numbers are the card's)."""
    data = 'JPEG copy of CIFAR-10' if cfg.dataset == 'cifar10-offline' else cfg.dataset
    if record is not None:
        data += f"; eval: {record['data']['n']} test images, {'exact' if record['data']['exact_pixels'] else 'NOT exact'} pixels"
        aa = next((a['robust_acc'] for a in record['attacks'] if a['name'] == 'autoattack'), None)
        numbers = [pct(record['clean_acc']), pct(aa) if aa is not None else '-',
                   pct(record['worst_case']['robust_acc']) + _bound(record), pct(record['worst_case']['w_robust_acc'])]
    else:
        numbers = ['not evaluated'] + ['-'] * 3
    trained = info.epochs_trained if info.epochs_trained is not None else cfg.epochs
    recipe = f'{cfg.recipe}, {trained} ep' if trained >= cfg.epochs else f'{cfg.recipe}, {trained} of {cfg.epochs} ep'
    return (f'| `{info.architecture}` | `{info.tag}` | {info.params / 1e6:.2f}M | {data} | {recipe} | '
            + ' | '.join(numbers) + f' | [{info.repo_id}](https://huggingface.co/{info.repo_id}) |')
