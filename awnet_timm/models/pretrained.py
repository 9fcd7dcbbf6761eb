""" Pretrained weights of the awnet_timm models: a fit check and errors that say what to do

timm does the loading (registry `name.tag` and `hf-hub:` downloads through huggingface_hub,
`local-dir:`, `pretrained_cfg_overlay=dict(file=...)`). This module adds two things around it:
`check_weights_fit`, a `pretrained_filter_fn` that compares the checkpoint with the model before timm's
strict load, and `explain_load_errors`, which turns download and file errors into messages naming the
fix (HF_HUB_OFFLINE=1 with a warm cache, HF_ENDPOINT for a mirror, a fresh download of a corrupt file,
num_classes or model arguments for a checkpoint of another head or architecture).
"""
import os
from contextlib import contextmanager
from typing import Dict, Iterator, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from huggingface_hub import constants as hf_constants, try_to_load_from_cache
from huggingface_hub.errors import (
    HfHubHTTPError, LocalEntryNotFoundError, RemoteEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError)
from safetensors import SafetensorError
from timm.models import PretrainedCfg

__all__ = ['PretrainedWeightsError', 'check_weights_fit', 'explain_load_errors', 'may_be_served']

HUB_ENDPOINT = 'https://huggingface.co'

_LOCAL_FILE_HINT = "or load a local file with pretrained=True, pretrained_cfg_overlay=dict(file='path/to/model.safetensors')"


class PretrainedWeightsError(RuntimeError):
    """Pretrained weights that cannot be had, cannot be read, or do not fit the model."""


def _names(value: Union[None, str, Sequence[str]]) -> Tuple[str, ...]:
    if not value:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


def _examples(keys: Sequence[str], n: int = 3) -> str:
    return ', '.join(keys[:n]) + (', ...' if len(keys) > n else '')


def check_weights_fit(
        state_dict: Dict[str, torch.Tensor],
        model: nn.Module,
        features_only: bool = False,
) -> Dict[str, torch.Tensor]:
    """ Raise PretrainedWeightsError unless `state_dict` fits `model` as timm is about to load it.

    Used as `pretrained_filter_fn`, so it sees the model before timm adapts the checkpoint: the first
    convs may differ in input channels (timm adapts them to `in_chans`) and the classifier is dropped when
    the model was asked for another class count than its pretrained cfg (or for features only).
    """
    cfg = model.pretrained_cfg
    variant = cfg.get('architecture') or type(model).__name__
    classifier = {f'{c}.{p}' for c in _names(cfg.get('classifier')) for p in ('weight', 'bias')}
    first_convs = {f'{c}.weight' for c in _names(cfg.get('first_conv'))}
    model_state = model.state_dict()
    expected = {k: tuple(v.shape) for k, v in model_state.items() if k not in classifier}
    given = {k: tuple(v.shape) for k, v in state_dict.items() if k not in classifier}
    missing = [k for k in expected if k not in given]  # in the model's order: the first differences first
    unexpected = [k for k in given if k not in expected]

    def other_shape(k):
        a, b = expected[k], given[k]
        if k in first_convs and len(a) == len(b) == 4:
            return a[:1] + a[2:] != b[:1] + b[2:]  # input channels are adapted by timm
        return a != b
    mismatched = [k for k in expected if k in given and other_shape(k)]
    if missing or unexpected or mismatched:
        lines = [f"the checkpoint's state_dict does not fit {variant} as built here:"]
        if missing:
            lines.append(f'  {len(missing)} keys of the model are not in the checkpoint: {_examples(missing)}')
        if unexpected:
            lines.append(f'  {len(unexpected)} keys of the checkpoint are not in the model: {_examples(unexpected)}')
        if mismatched:
            lines.append('  other shapes: ' + _examples([f'{k} checkpoint {given[k]} model {expected[k]}' for k in mismatched]))
        has_router = any(k.startswith('router.') for k in given)
        wants_router = any(k.startswith('router.') for k in expected)
        if wants_router and not has_router:
            lines.append('  The checkpoint has no router: it looks like a static model (cifar_resnet18 / cifar_resnet34).')
        elif has_router and not wants_router:
            lines.append('  The checkpoint has a router: it looks like AW-Net (awnet_r18 / awnet_r34).')
        lines.append('It was saved from another architecture, or from this one with other model arguments '
                     '(layers, channels, ...). Create the model it was saved from: `hf-hub:org/repo` and '
                     "`local-dir:folder` read the architecture and its arguments from config.json; otherwise pass "
                     'the same name and model arguments to timm.create_model.')
        raise PretrainedWeightsError('\n'.join(lines))

    num_classes = getattr(model, 'num_classes', None)
    if features_only or num_classes != cfg.get('num_classes'):
        return state_dict  # timm drops the checkpoint's classifier and keeps the new one
    for key in sorted(k for k in classifier if k in model_state):
        shape = tuple(model_state[key].shape)
        if key not in state_dict:
            raise PretrainedWeightsError(
                f"the checkpoint's state_dict has no {key}: pass num_classes=0 for a model without classifier, or "
                f'another num_classes (not {num_classes}) to get a new, randomly initialised one')
        if tuple(state_dict[key].shape) != shape:
            n = state_dict[key].shape[0]
            raise PretrainedWeightsError(
                f"the checkpoint's classifier has {n} classes, the model {num_classes} ({key}: checkpoint "
                f'{tuple(state_dict[key].shape)}, model {shape}). To use it as it is, pass num_classes={n} together '
                f'with pretrained_cfg_overlay=dict(..., num_classes={n}) (the class count of the weights); to train a '
                f'new head, pass the num_classes you want (not {cfg.get("num_classes")}, the cfg value) and the '
                f'checkpoint head is dropped.')
    return state_dict


def _hub_location(cfg: PretrainedCfg) -> Tuple[str, Optional[str]]:
    repo, _, revision = (cfg.hf_hub_id or '').partition('@')
    return repo, revision or None


def may_be_served(cfg: PretrainedCfg, cache_dir: Optional[str] = None) -> bool:
    """ Whether a tag not published on the Hub may still load: HF_ENDPOINT names a mirror (which may serve
    releases the Hub does not have, e.g. `awnet mirror`), or the Hugging Face cache already holds its weights. """
    if hf_constants.ENDPOINT.rstrip('/') != HUB_ENDPOINT:
        return True
    repo, revision = _hub_location(cfg)
    cached = try_to_load_from_cache(repo, cfg.hf_hub_filename or 'model.safetensors', cache_dir=cache_dir, revision=revision)
    return isinstance(cached, str)


def _weights_path(cfg: PretrainedCfg, cache_dir: Optional[str]) -> Tuple[str, bool]:
    """The file timm read (for a corrupt-file message), and whether it is the Hugging Face cache's copy."""
    if cfg.source == 'local-dir' and cfg.file:
        return os.path.join(cfg.file, 'model.safetensors'), False
    if cfg.state_dict is None and cfg.file and cfg.source != 'hf-hub':
        return cfg.file, False
    if cfg.hf_hub_id:
        repo, revision = _hub_location(cfg)
        cached = try_to_load_from_cache(repo, cfg.hf_hub_filename or 'model.safetensors', cache_dir=cache_dir, revision=revision)
        return (cached if isinstance(cached, str) else f'the Hugging Face cache copy of {repo}/model.safetensors'), True
    return 'the weights file', False


def _cache_dir(cache_dir: Optional[str]) -> str:
    return str(cache_dir or hf_constants.HF_HUB_CACHE)


@contextmanager
def explain_load_errors(name: str, cfg: PretrainedCfg, cache_dir: Optional[str] = None) -> Iterator[None]:
    """ Re-raise the errors of timm's pretrained loading of `name` as PretrainedWeightsError saying what to do.

    `cfg` is the resolved pretrained cfg (it names the Hub repo or the file that was being read).
    """
    repo, revision = _hub_location(cfg)
    where = f"Hub repo '{repo}'" + (f' at revision {revision}' if revision else '')
    try:
        yield
    except PretrainedWeightsError:
        raise
    except LocalEntryNotFoundError as e:
        cache = _cache_dir(cache_dir)
        if hf_constants.HF_HUB_OFFLINE:
            reason = (f"are not in the Hugging Face cache ({cache}) and HF_HUB_OFFLINE=1 forbids downloading them. "
                      f"Download them once with network access (HF_HUB_OFFLINE unset; without internet, set HF_ENDPOINT "
                      f"to a Hub mirror that serves the repo): later runs then work offline with HF_HUB_OFFLINE=1 and "
                      f"that warm cache (HF_HOME / HF_HUB_CACHE, which can be copied between machines)")
        else:
            reason = (f"could not be downloaded from {hf_constants.ENDPOINT} and are not in the Hugging Face cache "
                      f"({cache}). Without internet, set HF_ENDPOINT to a Hub mirror that serves the repo, or set "
                      f"HF_HUB_OFFLINE=1 with a cache warmed by an earlier download (HF_HOME / HF_HUB_CACHE, which can "
                      f"be copied between machines)")
        raise PretrainedWeightsError(f"The pretrained weights of '{name}' ({where}) {reason}; {_LOCAL_FILE_HINT}.") from e
    except (RepositoryNotFoundError, RevisionNotFoundError, RemoteEntryNotFoundError) as e:
        raise PretrainedWeightsError(
            f"The Hub endpoint {hf_constants.ENDPOINT} has no {where} with model.safetensors "
            f"({type(e).__name__}). Check the name and revision; if HF_ENDPOINT points at a mirror, make the mirror "
            f"serve this repo; for an export on disk use timm.create_model('local-dir:<folder>', pretrained=True); "
            f"{_LOCAL_FILE_HINT}.") from e
    except HfHubHTTPError as e:
        raise PretrainedWeightsError(
            f"Downloading the pretrained weights of '{name}' ({where}) from {hf_constants.ENDPOINT} failed: {e}. "
            f"Retry, set HF_ENDPOINT to a working mirror, or use HF_HUB_OFFLINE=1 with a warm cache; "
            f"{_LOCAL_FILE_HINT}.") from e
    except SafetensorError as e:
        path, from_cache = _weights_path(cfg, cache_dir)
        fix = (f'It came from the Hugging Face cache: delete it (`hf cache rm {repo}` or remove '
               f'{os.path.join(_cache_dir(cache_dir), "models--" + repo.replace("/", "--"))}) and download it again.'
               if from_cache else 'Export or download it again.')
        raise PretrainedWeightsError(
            f'The pretrained weights of {name!r}, {path}, are not a readable safetensors file ({e}): the file is '
            f'truncated or corrupt. {fix}') from e
    except FileNotFoundError as e:
        if cfg.file and not os.path.exists(cfg.file):
            raise PretrainedWeightsError(
                f"The pretrained weights file '{cfg.file}' of '{name}' does not exist: give the path of a "
                f".safetensors file (or, for an export folder, use timm.create_model('local-dir:<folder>')).") from e
        raise
