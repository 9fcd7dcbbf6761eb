""" Run checkpoints and weights: safetensors only, written atomically

A run directory holds:
- `config.json`: the run's `TrainConfig`;
- `last.safetensors`, `best.safetensors`: model weights only (a plain state dict, loadable by timm with
  `pretrained_cfg_overlay=dict(file=...)`); `best` is the epoch with the highest W-Robust accuracy;
- `last.state.safetensors`: everything `resume` needs in one file (model, optimizer and recipe tensors;
  epoch, scheduler, optimizer hyperparameters and metrics as JSON metadata);
- `log.jsonl`: one JSON record per epoch.
Every file is written to a temporary name in the same directory and renamed over the old one, so an
interrupted write never leaves a half-written file. Nothing here unpickles.
"""
import json
import os
from typing import Any, Dict, List, Optional, Tuple

import timm
import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from ..models.pretrained import PretrainedWeightsError
from ..utils import atomic_write

__all__ = [
    'CheckpointError', 'save_weights', 'load_weights_file', 'resolve_weights_path', 'nonfinite_tensors',
    'save_train_state', 'load_train_state', 'read_train_state_meta', 'create_model_with_weights', 'run_model_kwargs',
    'read_log',
]


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt, or does not fit the model it is loaded into."""


def _contiguous(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    # safetensors refuses shared or strided storage
    return {k: v.detach().to('cpu').contiguous().clone() for k, v in state.items()}


def nonfinite_tensors(state: Dict[str, torch.Tensor]) -> List[str]:
    """Names of the floating-point tensors holding NaN or inf (one host sync for the whole state)."""
    names = [k for k, v in state.items() if v.is_floating_point() and v.numel()]
    if not names:
        return []
    finite = torch.stack([torch.isfinite(state[k]).all().to('cpu', non_blocking=True) for k in names]).tolist()
    return [k for k, ok in zip(names, finite) if not ok]


def _refuse_nonfinite(state: Dict[str, torch.Tensor], path: str):
    bad = nonfinite_tensors(state)
    if bad:
        raise CheckpointError(f"refusing to write '{path}': {len(bad)} tensors hold NaN or inf ({', '.join(bad[:3])}"
                              f"{', ...' if len(bad) > 3 else ''}); the run diverged")


def save_weights(path: str, model: nn.Module, metadata: Optional[Dict[str, str]] = None) -> None:
    """The model's state dict as a plain safetensors file (what timm and the Hub load); non-finite weights are refused."""
    state = _contiguous(model.state_dict())
    _refuse_nonfinite(state, path)
    atomic_write(path, lambda tmp: save_file(state, tmp, metadata=metadata))


def resolve_weights_path(path: str) -> str:
    """A weights file from a .safetensors path or a run directory (its best, else last, weights)."""
    if os.path.isdir(path):
        for name in ('best.safetensors', 'last.safetensors', 'model.safetensors'):
            if os.path.isfile(os.path.join(path, name)):
                return os.path.join(path, name)
        raise CheckpointError(f"'{path}' holds no best.safetensors, last.safetensors or model.safetensors")
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint '{path}' does not exist: expected a .safetensors file or a run directory")
    return path


def load_weights_file(path: str) -> Dict[str, torch.Tensor]:
    """Tensors of a safetensors file, with a clear error for anything else (pickles are refused)."""
    path = resolve_weights_path(path)
    try:
        return load_file(path)
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"'{path}' is not a readable safetensors file ({e}): it may be truncated or "
                              f"corrupt, or a pickle checkpoint (only safetensors are loaded)") from None


def _run_config_beside(path: str) -> Optional[Dict[str, Any]]:
    config = os.path.join(os.path.dirname(os.path.abspath(path)), 'config.json')
    if not os.path.isfile(config):
        return None
    with open(config) as f:
        cfg = json.load(f)
    return cfg if isinstance(cfg, dict) and 'model' in cfg and 'recipe' in cfg else None


def _is_model_name(weights: str) -> bool:
    """`hf-hub:org/repo`, `local-dir:folder` or `name.tag` rather than a path on disk."""
    if weights.startswith(('hf-hub:', 'local-dir:')):
        return True
    return not os.path.exists(weights) and '.' in weights and not weights.endswith('.safetensors') and '/' not in weights


def run_model_kwargs(weights: str) -> Dict[str, Any]:
    """The `model_kwargs` of the run of `awnet train` that `weights` (a run directory or a file in one) comes from; {} otherwise."""
    if not weights or _is_model_name(weights):
        return {}
    run_cfg = _run_config_beside(resolve_weights_path(weights))
    if run_cfg is None:
        return {}
    kwargs = dict(run_cfg.get('model_kwargs') or {})
    if run_cfg.get('head'):  # the run's --head builds its classifier (an HPM head has prototype buffers)
        kwargs.setdefault('head', run_cfg['head'])
    return kwargs


def _check_local_dir(name: str):
    folder = name[len('local-dir:'):]
    if _run_config_beside(os.path.join(folder, 'config.json')) is not None:
        raise CheckpointError(f"'{folder}' is a run directory of `awnet train`, not a Hub export folder: give the run "
                              f"directory itself as the checkpoint / --pretrained (with the run's model name), or write "
                              f"an export with `awnet export {folder}` and use local-dir: on that folder")


def create_model_with_weights(
        name: str,
        weights: str = '',
        num_classes: Optional[int] = None,
        **kwargs: Any,
) -> nn.Module:
    """ A timm model with weights from a file, a run directory, or the model's own pretrained source.

    `name` is a timm name, `name.tag`, `hf-hub:org/repo` or `local-dir:folder`. With `weights` the file is read here (safetensors
    only) and handed to timm's loader, which swaps the classifier when `num_classes` differs from the
    checkpoint's and adapts the stem to `in_chans`; weights from a run directory of `awnet train` build the
    model with that run's `model_kwargs`. Without `weights`, a tagged or Hub name loads timm's
    pretrained weights and a bare name gives a randomly initialised model; `weights` given as such a name
    (`name.tag`, `hf-hub:`, `local-dir:`) loads that model's own weights.
    """
    if weights and _is_model_name(weights):  # weights named like a model: that model's own pretrained weights
        if ':' not in weights and weights.split('.')[0] != name.split('.')[0]:
            raise CheckpointError(f"weights '{weights}' are of architecture '{weights.split('.')[0]}', not '{name}'")
        name, weights = weights, ''
    if name.startswith('local-dir:'):
        _check_local_dir(name)
    if not weights:
        pretrained = name.startswith(('hf-hub:', 'local-dir:')) or '.' in name
        if num_classes is not None:
            kwargs['num_classes'] = num_classes
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    path = resolve_weights_path(weights)
    run_cfg = _run_config_beside(path)
    if run_cfg is not None:
        # weights from a run of awnet train: build the model that run trained
        from .config import TrainConfig
        from ..models.awnet import registered_variant
        trained = TrainConfig.from_dict(run_cfg)
        base = trained.model.split(':')[-1].split('.')[0]
        variant, variant_args = registered_variant(base, trained.model_args())  # cifar_resnet18 at 16..128: _025
        if name.split('.')[0] not in (base, variant):
            raise CheckpointError(f"'{path}' was trained as '{run_cfg['model']}', not '{name}'")
        kwargs = dict(variant_args if name.split('.')[0] == variant != base else trained.model_args(), **kwargs)
    state = load_weights_file(path)
    cfg = timm.models.get_pretrained_cfg(name.split(':')[-1]) if not name.startswith('hf-hub:') else None
    classifier = (cfg.classifier if cfg is not None else None) or 'head'
    classifier = classifier[0] if isinstance(classifier, (tuple, list)) else classifier
    if kwargs.get('head') == 'fc':  # an HPM head asked to be a plain FC keeps its FC weights, not its prototypes
        state = {k: v for k, v in state.items() if k not in (f'{classifier}.prototypes', f'{classifier}.initialized')}
    head = state.get(f'{classifier}.weight')
    overlay = dict(state_dict=state)
    if head is not None:
        overlay['num_classes'] = head.shape[0]
        num_classes = head.shape[0] if num_classes is None else num_classes
    if num_classes is not None:
        kwargs['num_classes'] = num_classes
    try:
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
    except PretrainedWeightsError as e:  # awnet_timm's models check the fit before loading
        raise CheckpointError(f"'{path}' does not fit model '{name}' {kwargs or ''}: {e}") from None
    except RuntimeError as e:  # any other timm model: torch's strict load_state_dict
        if 'Error(s) in loading state_dict' not in str(e):
            raise
        raise CheckpointError(f"'{path}' does not fit model '{name}' {kwargs or ''}: {e}") from None


def save_train_state(
        path: str,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        extra_tensors: Dict[str, torch.Tensor],
        meta: Dict[str, Any],
) -> None:
    """Model, optimizer and recipe state in one safetensors file; `meta` (JSON-able) goes in its metadata."""
    tensors = {f'model.{k}': v for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    opt_values = {}
    for idx, state in opt['state'].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f'optim.{idx}.{key}'] = value
            else:
                opt_values[f'{idx}.{key}'] = value
    tensors.update({f'extra.{k}': v for k, v in extra_tensors.items()})
    meta = dict(meta, optimizer_param_groups=opt['param_groups'], optimizer_values=opt_values)
    tensors = _contiguous(tensors)
    _refuse_nonfinite({k: v for k, v in tensors.items() if k.startswith('model.')}, path)
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={'awnet_train_state': json.dumps(meta)}))


def read_train_state_meta(path: str) -> Dict[str, Any]:
    """The JSON metadata of a file written by `save_train_state` (epoch, scheduler, ...), without reading its tensors."""
    if not os.path.isfile(path):
        raise CheckpointError(f"no training state at '{path}': expected a run directory holding last.state.safetensors")
    try:
        with safe_open(path, 'pt') as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"'{path}' is not a readable safetensors file ({e}): truncated or corrupt?") from None
    if 'awnet_train_state' not in metadata:
        raise CheckpointError(f"'{path}' is a safetensors file but not a training state of awnet train")
    return json.loads(metadata['awnet_train_state'])


def load_train_state(path: str) -> Tuple[Dict[str, torch.Tensor], Dict[str, Dict[str, Any]], Dict[str, torch.Tensor], Dict[str, Any]]:
    """(model state, optimizer state dict, extra tensors, meta) of a file written by `save_train_state`."""
    meta = read_train_state_meta(path)
    try:
        tensors = load_file(path)
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"'{path}' is not a readable safetensors file ({e}): truncated or corrupt?") from None
    model_state, extra, opt_state = {}, {}, {}
    for key, value in tensors.items():
        group, rest = key.split('.', 1)
        if group == 'model':
            model_state[rest] = value
        elif group == 'extra':
            extra[rest] = value
        else:
            idx, name = rest.split('.', 1)
            opt_state.setdefault(int(idx), {})[name] = value
    for key, value in meta.pop('optimizer_values').items():
        idx, name = key.split('.', 1)
        opt_state.setdefault(int(idx), {})[name] = value
    optimizer = dict(state=opt_state, param_groups=meta.pop('optimizer_param_groups'))
    return model_state, optimizer, extra, meta


def read_log(run_dir: str) -> List[Dict[str, Any]]:
    """The run's log.jsonl records, oldest first (a line cut short by a kill is skipped); none without a log."""
    path = os.path.join(run_dir, 'log.jsonl')
    if not os.path.isfile(path):
        return []
    records = []
    with open(path) as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict):
                records.append(record)
    return records
