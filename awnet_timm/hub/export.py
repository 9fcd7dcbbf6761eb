""" Export a training run as a Hugging Face Hub repo folder: weights, timm config.json, model card

The folder holds what timm's `hf-hub:` and `local-dir:` loaders read, written by timm's own `save_for_hf`:
- `model.safetensors`: the run's best (or last) weights, float32 or float16;
- `config.json`: architecture, num_classes, model_args and pretrained_cfg (mean 0 / std 1: inputs are
  [0, 1] pixels, the model normalizes);
- `README.md`: the model card (card.py), with the robustness table when an evaluation record is given;
- `awnet_eval.json`: that evaluation record, when given (its `checkpoint_sha256` is the sha256 of
  `model.safetensors`; its local `checkpoint` path becomes the file's name in the repo, and a `local-dir:`
  model its architecture).
The folder is written into a temporary directory beside the target and renamed into place, so a
failed export never leaves a half-written folder. The export is deterministic: exporting the same run
again gives a byte-identical `model.safetensors`, which is what lets `awnet eval` run on the exported
file before the card is written (export, evaluate that file, export again with the record).
"""
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import timm
import torch
from safetensors import SafetensorError, safe_open
from timm.models import save_for_hf

from ..models.awnet import HUB_ORG, registered_variant
from ..training import TrainConfig, create_model_with_weights, load_run_config
from ..training.arat import deploy_adv_bn
from ..training.checkpoint import CheckpointError, nonfinite_tensors, read_log
from ..utils import sha256_file, usual_mode
from .card import TASKS, CardInfo, architecture_of, check_eval_record, load_eval_record, model_card, zoo_row
from .errors import HubReleaseError, check_repo_id

__all__ = ['ExportResult', 'export_checkpoint', 'default_tag', 'RELEASE_FILES', 'DTYPES']

RELEASE_FILES = ('model.safetensors', 'config.json', 'README.md', 'awnet_eval.json')
DTYPES = {'fp32': torch.float32, 'fp16': torch.float16}


@dataclass
class ExportResult:
    folder: str
    repo_id: str
    architecture: str
    tag: str
    sha256: str
    dtype: str
    params: int
    evaluated: bool
    zoo_row: str


def default_tag(cfg: TrainConfig) -> str:
    """ `<recipe>[_hpm]_<dataset>`, e.g. mtard_cifar10, pgd_at_hpm_cifar10 for a model with the HPM head (another
    classifier than the FC one of `<recipe>_<dataset>`); the JPEG copy of CIFAR-10 is still CIFAR-10's task. """
    recipe = cfg.recipe + ('_hpm' if cfg.model_args().get('head') == 'hpm' else '')
    if cfg.dataset not in TASKS:
        raise HubReleaseError(f"no default tag for dataset '{cfg.dataset}': pass --tag (e.g. {recipe}_<dataset>)")
    return f'{recipe}_{TASKS[cfg.dataset]}'


def _find_run(checkpoint: str, weights: str):
    """(run directory, weights file) from a run directory or a weights file inside one."""
    if os.path.isdir(checkpoint):
        run_dir, path = checkpoint, os.path.join(checkpoint, f'{weights}.safetensors')
        if not os.path.isfile(path):
            present = sorted(f for f in os.listdir(run_dir) if f.endswith('.safetensors') and '.state.' not in f)
            raise HubReleaseError(f"run directory '{run_dir}' has no {weights}.safetensors (it has: "
                                  f"{', '.join(present) or 'no weights'}); choose another with --weights")
    elif os.path.isfile(checkpoint):
        run_dir, path = os.path.dirname(os.path.abspath(checkpoint)), checkpoint
        if not checkpoint.endswith('.safetensors') or checkpoint.endswith('.state.safetensors'):
            raise HubReleaseError(f"'{checkpoint}' is not a weights file of a run (best.safetensors or last.safetensors)")
    else:
        raise HubReleaseError(f"checkpoint '{checkpoint}' does not exist: give a run directory of `awnet train` "
                              f"or a .safetensors weights file inside one")
    if not os.path.isfile(os.path.join(run_dir, 'config.json')):
        raise HubReleaseError(f"'{run_dir}' is not a run directory of `awnet train` (no config.json beside the weights): "
                              f"the model card needs the run's TrainConfig")
    return run_dir, path


def _epoch(path: str) -> Optional[int]:
    try:
        with safe_open(path, 'pt') as f:
            epoch = (f.metadata() or {}).get('epoch')
    except (SafetensorError, OSError):
        return None
    return int(epoch) if epoch and epoch.isdigit() else None


def _label_names(cfg: TrainConfig, model) -> Optional[list]:
    if cfg.dataset in ('cifar10', 'cifar10-offline'):
        names = model.pretrained_cfg.get('label_names')
        return list(names) if names and len(names) == model.num_classes else None
    folder = os.path.join(cfg.data_dir, cfg.train_split)
    if cfg.dataset == 'imagefolder' and os.path.isdir(folder):
        names = sorted(e.name for e in os.scandir(folder) if e.is_dir())  # ImageFolder's class order
        return names if len(names) == model.num_classes else None
    return None


def _val_images(records: List[Dict[str, Any]], epoch: Optional[int]) -> Optional[int]:
    """How many held-out images the run evaluated at `epoch` (its log record), if it says."""
    return next((r['val_images'] for r in records if epoch is not None and r.get('epoch') == epoch
                 and isinstance(r.get('val_images'), int)), None)


def _epochs_trained(records: List[Dict[str, Any]]) -> Optional[int]:
    """The last epoch the run's log records (a run stopped by its time limit trains fewer than configured)."""
    epochs = [r['epoch'] for r in records if isinstance(r.get('epoch'), int)]
    return max(epochs) if epochs else None


def _registered_cfg(name: str):
    try:
        return timm.models.get_pretrained_cfg(name, allow_unregistered=True)
    except RuntimeError:  # an architecture of awnet_timm with another tag
        return None


def _write_json(path: str, value: Any) -> None:
    with open(path, 'w') as f:
        json.dump(value, f, indent=2)
        f.write('\n')


def _check_out_dir(out_dir: str, overwrite: bool) -> None:
    """Refuse, before any work, an output folder that is a file, lies under a file, or exists without `overwrite`."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise HubReleaseError(f"'{out_dir}' is a file: an export is a folder; give --out a folder path")
    if os.path.isdir(out_dir) and not overwrite:
        raise HubReleaseError(f"'{out_dir}' already exists: pass --overwrite to replace it")
    parent = os.path.dirname(out_dir)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise HubReleaseError(f"cannot write '{out_dir}': '{parent}' is a file, not a folder")


def _shipped_record(record: dict, architecture: str) -> dict:
    """The record as the repo holds it: its local checkpoint path becomes the file's name in the repo, and a model
    loaded from a folder (`local-dir:PATH`) becomes its architecture, the name `--checkpoint` evaluations record."""
    shipped = dict(record, checkpoint='model.safetensors')
    local = record['model'] if record['model'].startswith('local-dir:') else None
    if local:
        shipped['model'] = architecture
        shipped['model_info'] = {k: architecture if v == local else v for k, v in record['model_info'].items()}
    return shipped


def _install(tmp: str, out_dir: str, overwrite: bool) -> None:
    """Move the finished temporary folder to out_dir; an old export is only removed once the new one is in place."""
    if not os.path.exists(out_dir):
        os.replace(tmp, out_dir)
        return
    if not overwrite:
        raise HubReleaseError(f"'{out_dir}' already exists: pass --overwrite to replace it")
    old = tempfile.mkdtemp(dir=os.path.dirname(out_dir), prefix=f'.{os.path.basename(out_dir)}.old.')
    os.replace(out_dir, os.path.join(old, 'export'))
    os.replace(tmp, out_dir)
    shutil.rmtree(old)


def export_checkpoint(
        checkpoint: str,
        out_dir: Optional[str] = None,
        *,
        eval_record: Optional[str] = None,
        dtype: str = 'fp32',
        tag: Optional[str] = None,
        repo_id: Optional[str] = None,
        weights: str = 'best',
        releases_dir: str = os.path.join('hub', 'releases'),
        overwrite: bool = False,
        compare: Optional[Dict[str, str]] = None,
) -> ExportResult:
    """ Write the Hub repo folder of a training run; returns where it is and what it holds.

    Args:
        checkpoint: a run directory of `awnet train` (its `<weights>.safetensors` is exported) or a weights file in one.
        out_dir: the folder to write (default `<releases_dir>/<architecture>.<tag>`).
        eval_record: an `awnet eval` JSON of the exported `model.safetensors`; its numbers go into the card. It must
            have been made on the file this export writes (same sha256), so for fp16 on the float16 file.
        dtype: 'fp32' or 'fp16' (halves the download; timm loads it into the float32 model).
        tag: the pretrained tag (default `<recipe>_<dataset>`, e.g. mtard_cifar10).
        repo_id: the Hub repo the card names (default `awnet-timm/<architecture>.<tag>`).
        weights: 'best' or 'last', the run's file to export when `checkpoint` is a directory.
        overwrite: replace an existing `out_dir`.
        compare: labels mapped to `awnet eval` records of other models (e.g. the static twin trained beside this one):
            the card shows them beside this export's record.
    """
    if dtype not in DTYPES:
        raise HubReleaseError(f"dtype must be one of {', '.join(DTYPES)}, got '{dtype}'")
    if weights not in ('best', 'last'):
        raise HubReleaseError(f"weights must be 'best' or 'last', got '{weights}'")
    run_dir, weights_path = _find_run(checkpoint, weights)
    record = load_eval_record(eval_record) if eval_record else None  # fail early on a malformed record
    others = {label: load_eval_record(path) for label, path in (compare or {}).items()}  # shown, not shipped
    cfg = load_run_config(run_dir)
    trained_as = architecture_of(cfg.model)  # a base model with a compact variant's widths exports as that variant
    architecture, model_args = registered_variant(trained_as, cfg.model_args())
    tag = tag or default_tag(cfg)
    if not tag.replace('_', '').replace('-', '').isalnum():
        raise HubReleaseError(f"tag '{tag}' must be letters, digits, '_' and '-' (it becomes part of the repo name)")
    repo_id = check_repo_id(repo_id or f'{HUB_ORG}/{architecture}.{tag}')
    out_dir = os.path.abspath(out_dir or os.path.join(releases_dir, f'{architecture}.{tag}'))
    _check_out_dir(out_dir, overwrite)

    try:
        model = create_model_with_weights(architecture, weights_path, **model_args).eval()
    except CheckpointError as e:
        raise HubReleaseError(f'cannot load the run weights {weights_path}: {e}') from None
    bad = nonfinite_tensors(model.state_dict())
    if bad:
        raise HubReleaseError(f"'{weights_path}' holds NaN or inf in {len(bad)} tensors ({', '.join(bad[:3])}"
                              f"{', ...' if len(bad) > 3 else ''}): the run diverged; export finite weights (--weights best)")
    if cfg.recipe == 'arat':  # ARAT deploys its Adv BN alone: export a static network, one BN per site
        model = deploy_adv_bn(model, architecture, **model_args).eval()
    params = sum(p.numel() for p in model.parameters())
    label_names = _label_names(cfg, model)
    # the config describes the export: its tag, its input size, no CIFAR-10 label names for another dataset
    updates = dict(tag=tag)
    if cfg.img_size:
        reduction = model.feature_info[-1]['reduction']
        updates.update(input_size=(model.pretrained_cfg['input_size'][0], cfg.img_size, cfg.img_size),
                       pool_size=(math.ceil(cfg.img_size / reduction),) * 2)
    model.pretrained_cfg = {**{k: v for k, v in model.pretrained_cfg.items() if k != 'label_names'}, **updates}
    if dtype == 'fp16':
        largest = max(t.abs().max().item() for t in model.state_dict().values() if t.is_floating_point() and t.numel())
        if not largest <= torch.finfo(torch.float16).max:
            raise HubReleaseError(f'the weights do not fit float16 (largest magnitude {largest}, float16 ends at '
                                  f'{torch.finfo(torch.float16).max:.0f}): export them as fp32')
        model = model.half()

    try:
        os.makedirs(os.path.dirname(out_dir), exist_ok=True)
        tmp = tempfile.mkdtemp(dir=os.path.dirname(out_dir), prefix=f'.{os.path.basename(out_dir)}.tmp.')
    except OSError as e:
        raise HubReleaseError(f"cannot write '{out_dir}': {e.strerror or e}") from None
    try:
        save_for_hf(model, tmp, model_config=dict(label_names=label_names) if label_names else None,
                    safe_serialization=True)
        sha = sha256_file(os.path.join(tmp, 'model.safetensors'))
        if record is not None:
            check_eval_record(record, architecture, sha, os.path.join(out_dir, 'model.safetensors'), trained_as,
                              model_args)
            record = _shipped_record(record, architecture)  # the card shows it too: no local path in either
            _write_json(os.path.join(tmp, 'awnet_eval.json'), record)
        with open(os.path.join(tmp, 'config.json')) as f:
            hf_config = json.load(f)
        registered = _registered_cfg(f'{architecture}.{tag}')
        log = read_log(run_dir)
        info = CardInfo(
            repo_id=repo_id, architecture=architecture, tag=tag,
            model_args={k: v for k, v in hf_config.get('model_args', {}).items() if k not in ('num_classes', 'in_chans', 'global_pool')},
            input_size=tuple(hf_config['pretrained_cfg']['input_size']),
            num_classes=hf_config['num_classes'], label_names=label_names, params=params, sha256=sha,
            dtype=str(DTYPES[dtype]).replace('torch.', ''), weights_file=os.path.basename(weights_path),
            epoch=_epoch(weights_path), val_images=_val_images(log, _epoch(weights_path)),
            epochs_trained=_epochs_trained(log), license=model.pretrained_cfg.get('license') or 'apache-2.0',
            registry_name=f'{architecture}.{tag}' if registered is not None and registered.hf_hub_id == repo_id else None)
        with open(os.path.join(tmp, 'README.md'), 'w') as f:
            f.write(model_card(cfg, info, record, others))
        for name in os.listdir(tmp):  # safetensors writes model.safetensors private; a release is ordinary files
            os.chmod(os.path.join(tmp, name), usual_mode())
        os.chmod(tmp, usual_mode(directory=True))  # mkdtemp makes it private too
        _install(tmp, out_dir, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ExportResult(folder=out_dir, repo_id=repo_id, architecture=architecture, tag=tag, sha256=sha,
                        dtype=info.dtype, params=params, evaluated=record is not None,
                        zoo_row=zoo_row(cfg, info, record))
