""" Publish an export folder to the Hugging Face Hub (or any endpoint speaking its API) with huggingface_hub

`publish_folder` checks the folder first: the files timm reads are there, it loads with timm
(`local-dir:`, so the architecture, model arguments and weights agree), the card's YAML parses, and the
evaluation record in it was made on this `model.safetensors` (same sha256). Then one call to
`HfApi.create_repo` and one commit (`HfApi.create_commit`) with exactly the release files. The token comes
from the environment (`HF_TOKEN`, or the one `hf auth login` stored); the endpoint from `HF_ENDPOINT`
unless given. A dry run does every check and no HTTP.
"""
import os
from dataclasses import dataclass, field
from typing import List, Optional, Tuple
from urllib.parse import urlsplit

import timm
from huggingface_hub import CommitOperationAdd, HfApi, ModelCard, constants as hf_constants, get_token
from huggingface_hub.errors import HfHubHTTPError

from ..models.awnet import HUB_ORG
from ..utils import read_json, sha256_file
from .card import check_eval_record, load_eval_record
from .errors import HubReleaseError, check_repo_id
from .export import RELEASE_FILES

__all__ = ['PublishResult', 'FULL_EVAL_N', 'check_release_folder', 'partial_eval_reasons', 'publish_folder']

_REQUIRED = ('model.safetensors', 'config.json', 'README.md')
FULL_EVAL_N = 1000  # RobustBench's and the paper's evaluation size
try:  # huggingface_hub >= 1.0 speaks httpx, whose connection errors are not OSErrors
    from huggingface_hub.utils import httpx as _httpx
    _CONNECTION_ERRORS: Tuple[type, ...] = (OSError, _httpx.HTTPError)
except ImportError:  # older ones speak requests, whose errors are OSErrors
    _CONNECTION_ERRORS = (OSError,)


def partial_eval_reasons(record: dict) -> List[str]:
    """Why an evaluation record falls short of a full evaluation (>= 1000 images with AutoAttack); empty when it does not."""
    reasons = []
    if record['data']['n'] < FULL_EVAL_N:
        reasons.append(f"it is on {record['data']['n']} images (a full evaluation uses at least {FULL_EVAL_N})")
    if not any(a['name'] == 'autoattack' for a in record['attacks']):
        reasons.append('it has no AutoAttack')
    return reasons


@dataclass
class PublishResult:
    repo_id: str
    endpoint: str
    revision: str
    files: List[Tuple[str, int, str]]  # (name, bytes, sha256)
    dry_run: bool
    commit_url: Optional[str] = None
    commit_oid: Optional[str] = None
    warnings: List[str] = field(default_factory=list)


def check_release_folder(folder: str, allow_unevaluated: bool = False, allow_partial_eval: bool = False
                         ) -> Tuple[List[Tuple[str, int, str]], List[str]]:
    """ The release files of an export folder as (name, bytes, sha256) and warnings, after checking it is publishable.

    Raises HubReleaseError when a file is missing, the folder does not load with timm, the card's YAML does
    not parse, or the evaluation record is malformed, of another architecture or of another file (or absent,
    unless `allow_unevaluated`), was saved before its attacks finished, or is partial (under 1000 images or
    without AutoAttack, unless `allow_partial_eval`: then it is a warning).
    """
    if not os.path.isdir(folder):
        raise HubReleaseError(f"'{folder}' is not a folder: give an export folder written by `awnet export`")
    missing = [f for f in _REQUIRED if not os.path.isfile(os.path.join(folder, f))]
    if missing:
        raise HubReleaseError(f"'{folder}' lacks {', '.join(missing)}: it is not an export of `awnet export`")
    config = read_json(os.path.join(folder, 'config.json'), HubReleaseError)
    arch = config.get('architecture') if isinstance(config, dict) else None
    if not arch or not timm.is_model(arch):
        raise HubReleaseError(f"'{folder}/config.json' names architecture {arch!r}, which is not a registered timm model")
    try:
        timm.create_model(f'local-dir:{os.path.abspath(folder)}', pretrained=True)
    except (RuntimeError, ValueError, TypeError, OSError) as e:  # TypeError: model_args the architecture does not take
        raise HubReleaseError(f"'{folder}' does not load with timm.create_model('local-dir:...', pretrained=True): {e}") from None
    try:
        card = ModelCard.load(os.path.join(folder, 'README.md'))
    except ValueError as e:
        raise HubReleaseError(f"the model card '{folder}/README.md' has invalid YAML metadata: {e}") from None
    if card.data.to_dict().get('library_name') != 'timm':
        raise HubReleaseError(f"the model card '{folder}/README.md' does not say library_name: timm")
    files = [(name, os.path.getsize(os.path.join(folder, name)), sha256_file(os.path.join(folder, name)))
             for name in RELEASE_FILES if os.path.isfile(os.path.join(folder, name))]
    record_path = os.path.join(folder, 'awnet_eval.json')
    warnings = []
    if os.path.isfile(record_path):  # the same checks as `awnet export --eval`: the card's numbers are of these weights
        weights_sha = files[0][2]  # RELEASE_FILES[0], model.safetensors
        record = load_eval_record(record_path)
        check_eval_record(record, arch, weights_sha, os.path.join(folder, 'model.safetensors'))
        if not record.get('complete', True):
            raise HubReleaseError(f"'{record_path}' was saved while `awnet eval` was still running (complete: false): "
                                  f"let the evaluation finish, then export again with --eval")
        reasons = partial_eval_reasons(record)
        if reasons and not allow_partial_eval:
            raise HubReleaseError(f"the evaluation in '{folder}' is partial: {' and '.join(reasons)}; its numbers are not "
                                  f"comparable with published ones. Evaluate with `awnet eval --n 1000` (AutoAttack is in the "
                                  f"default attacks) and export again, or pass --allow-partial-eval to publish it as it is")
        warnings += [f'partial evaluation: {r}' for r in reasons]
    elif not allow_unevaluated:
        raise HubReleaseError(f"'{folder}' has no awnet_eval.json, so its card has no robustness numbers: run `awnet eval` "
                              f"on its model.safetensors and export again with --eval (or pass --allow-unevaluated)")
    else:
        warnings.append('no evaluation record: the card has no robustness numbers')
    return files, warnings


def publish_folder(
        folder: str,
        repo_id: Optional[str] = None,
        *,
        private: Optional[bool] = None,
        revision: str = 'main',
        commit_message: Optional[str] = None,
        dry_run: bool = False,
        endpoint: Optional[str] = None,
        allow_unevaluated: bool = False,
        allow_partial_eval: bool = False,
) -> PublishResult:
    """ Create the Hub repo (if needed) and commit the export folder's release files to `revision`.

    Args:
        folder: an export folder (`hub/releases/<architecture>.<tag>`).
        repo_id: 'organization/name' (default `awnet-timm/<folder name>`).
        private: visibility of a new repo (None: the Hub's default); an existing repo keeps its visibility.
        revision: the branch to commit to; created from main when missing.
        commit_message: default names the weights' sha256.
        dry_run: check everything and report what would be uploaded, without any HTTP request.
        endpoint: the Hub's URL (default HF_ENDPOINT, else https://huggingface.co).
        allow_unevaluated: publish a folder without evaluation record (its card then has no numbers).
        allow_partial_eval: publish an evaluation under 1000 images or without AutoAttack (with a warning).
    """
    folder = os.path.abspath(folder)
    repo_id = check_repo_id(repo_id or f'{HUB_ORG}/{os.path.basename(folder)}')
    endpoint = (endpoint or hf_constants.ENDPOINT).rstrip('/')
    url = urlsplit(endpoint)
    if url.scheme not in ('http', 'https') or not url.netloc:
        raise HubReleaseError(f"endpoint '{endpoint}' is not an http:// or https:// URL (e.g. https://huggingface.co)")
    files, warnings = check_release_folder(folder, allow_unevaluated=allow_unevaluated, allow_partial_eval=allow_partial_eval)
    result = PublishResult(repo_id=repo_id, endpoint=endpoint, revision=revision, files=files, dry_run=dry_run,
                           warnings=warnings)
    if dry_run:
        return result
    if hf_constants.HF_HUB_OFFLINE:
        raise HubReleaseError('HF_HUB_OFFLINE=1 is set: publishing needs the Hub; unset HF_HUB_OFFLINE (or use --dry-run)')
    token = get_token()
    if not token:
        raise HubReleaseError('no Hugging Face token: set HF_TOKEN to a token with write access to '
                              f"'{repo_id.split('/')[0]}' (or run `hf auth login`)")
    api = HfApi(endpoint=endpoint, token=token)
    message = commit_message or f'Upload {repo_id}: model.safetensors sha256 {files[0][2][:12]}'
    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=os.path.join(folder, name)) for name, _, _ in files]
    step = f"creating the repo '{repo_id}'"
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type='model')
        if revision != 'main':
            step = f"creating the branch '{revision}'"
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        step = f"committing {len(files)} files to '{revision}'"
        info = api.create_commit(repo_id, operations=operations, commit_message=message, revision=revision)
    except HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else None
        hint = (f" Check that the token (HF_TOKEN) is valid and may write to '{repo_id.split('/')[0]}'."
                if status in (401, 403) else '')
        raise HubReleaseError(f'{endpoint} refused {step} (HTTP {status}).{hint}\n{e}') from None
    except _CONNECTION_ERRORS as e:  # no answer at all: a wrong --endpoint / HF_ENDPOINT, or no network
        raise HubReleaseError(f'{endpoint} did not answer while {step} ({type(e).__name__}: {e}): check --endpoint or '
                              f'HF_ENDPOINT and the network') from None
    result.commit_url, result.commit_oid = info.commit_url, info.oid
    return result
