""" Test helpers for the Hub tools: run directories, evaluation records, a local olah mirror, a Hub upload endpoint

- `make_run`: a run directory in the format `awnet train` writes (config.json = TrainConfig, best/last.safetensors),
  made directly so a full-size model needs no training;
- `eval_record`: the realistic `awnet eval` record of tests/data/awnet_eval_example.json, made on a given file;
- `olah_mirror`: `awnet_timm.hub.mirror.HubMirror` (olah 0.5.4, its own virtualenv) serving export folders;
- `HubUploadServer`: a small in-process server speaking the part of the Hub's API that `HfApi.create_repo`,
  `create_branch`, `create_commit` (regular uploads) and `hf_hub_download` use (docs/offline_hub.md section 7);
- `point_hub_at`: redirect the already imported huggingface_hub (its constants are read at import).
"""
import base64
import hashlib
import json
import os
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, List, Optional, Tuple
from urllib.parse import unquote, urlsplit

import pytest
import timm
import torch
import yaml
from huggingface_hub import constants as hf_constants

from awnet_timm.hub.mirror import HubMirror
from awnet_timm.training import TrainConfig
from awnet_timm.training.checkpoint import save_weights

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EVAL_EXAMPLE = os.path.join(REPO_ROOT, 'tests', 'data', 'awnet_eval_example.json')
TINY_AWNET = dict(layers=[1, 1, 1, 1], channels=[8, 16, 32, 64], router_layers=[1, 1, 1, 1], router_channels=[8, 8, 16, 16])
TINY_STATIC = dict(layers=[1, 1, 1, 1], channels=[8, 16, 32, 64])


def make_run(root: str, model: str = 'awnet_r18', model_kwargs: Optional[dict] = None, seed: int = 0,
             epoch: int = 87, **overrides) -> str:
    """A run directory of `awnet train` (MTARD on the JPEG copy of CIFAR-10 unless overridden), random weights."""
    cfg = TrainConfig(**dict(dict(
        model=model, model_kwargs=model_kwargs or {}, recipe='mtard', dataset='cifar10-offline',
        data_dir='/data/shared/cifar10', teacher_nat='cifar_resnet56',
        teacher_nat_checkpoint='/runs/resnet56-standard/best.safetensors', teacher_adv='cifar_wrn34_10',
        teacher_adv_checkpoint='/runs/wrn34_10-pgd_at/best.safetensors', output=os.path.dirname(root),
        run_name=os.path.basename(root)), **overrides)).validate()
    torch.manual_seed(seed)
    net = timm.create_model(model, **cfg.model_args())
    with torch.no_grad():  # BN statistics that are not the init values, so a lost buffer shows
        for name, buf in net.named_buffers():
            if buf.is_floating_point():
                buf.add_(torch.rand_like(buf))
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, 'config.json'), 'w') as f:
        f.write(cfg.to_json())
    save_weights(os.path.join(root, 'best.safetensors'), net, {'epoch': str(epoch), 'model': model})
    save_weights(os.path.join(root, 'last.safetensors'), net, {'epoch': str(cfg.epochs), 'model': model})
    return root


def sha256(path: str) -> str:
    with open(path, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest()


def eval_record(weights: str, out: str, **changes) -> Tuple[str, dict]:
    """The example `awnet eval` record, made on `weights` (its sha256), written to `out`."""
    with open(EVAL_EXAMPLE) as f:
        record = json.load(f)
    record.update({'checkpoint': weights, 'checkpoint_sha256': sha256(weights), **changes})
    with open(out, 'w') as f:
        json.dump(record, f, indent=2)
    return out, record


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def point_hub_at(monkeypatch, endpoint: Optional[str], cache: str, offline: bool) -> None:
    """Redirect the imported huggingface_hub: endpoint (both the API base and the resolve-URL template), cache, offline."""
    if endpoint is not None:
        monkeypatch.setattr(hf_constants, 'ENDPOINT', endpoint)
        monkeypatch.setattr(hf_constants, 'HUGGINGFACE_CO_URL_TEMPLATE', endpoint + '/{repo_id}/resolve/{revision}/{filename}')
    monkeypatch.setattr(hf_constants, 'HF_HUB_CACHE', cache)
    monkeypatch.setattr(hf_constants, 'HF_HUB_OFFLINE', offline)
    monkeypatch.setattr(hf_constants, 'AGENT_HARNESSES_PATH', os.path.join(cache, '.agent_harnesses.json'))


def find_olah_cli() -> str:
    """olah-cli of $AWNET_OLAH_CLI or <repo>/.venv-olah; missing, the test fails (skips only with AWNET_SKIP_MIRROR_TESTS=1)."""
    path = os.environ.get('AWNET_OLAH_CLI') or os.path.join(REPO_ROOT, '.venv-olah', 'bin', 'olah-cli')
    if os.access(path, os.X_OK):
        return path
    message = (f'olah-cli not found at {path}: create its own environment with `python3 -m venv .venv-olah && '
               f'.venv-olah/bin/pip install olah==0.5.4` (what .ci/run does) or set AWNET_OLAH_CLI')
    if os.environ.get('AWNET_SKIP_MIRROR_TESTS') == '1':
        pytest.skip(message)
    pytest.fail(message)


def olah_mirror(root: str, repos: Dict[str, str]) -> HubMirror:
    """The package's `HubMirror` (olah, offline mirror mode, 127.0.0.1) serving `{repo_id: folder}`, started."""
    return HubMirror(repos, workdir=root, olah_cli=find_olah_cli()).start()


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b'blob %d\0' % len(data) + data).hexdigest()


class _Repo:
    def __init__(self, private: bool):
        self.private = private
        self.commits: Dict[str, Dict[str, bytes]] = {}
        self.branches: Dict[str, str] = {}
        self.commit({}, None, 'initial commit', 'main')

    def commit(self, files: Dict[str, bytes], parent: Optional[str], message: str, branch: str) -> str:
        h = hashlib.sha1(f'{parent}\n{message}\n'.encode())
        for path in sorted(files):
            h.update(f'{path}\0{git_blob_sha1(files[path])}\n'.encode())
        oid = h.hexdigest()
        self.commits[oid] = files
        self.branches[branch] = oid
        return oid

    def resolve(self, revision: str) -> Optional[str]:
        return self.branches.get(revision) or (revision if revision in self.commits else None)


class HubUploadServer:
    """Repos in memory; regular (base64-inline) uploads only; a write needs `Authorization: Bearer <token>`."""

    def __init__(self, token: str):
        self.token = token
        self.repos: Dict[str, _Repo] = {}
        self.requests: List[Tuple[str, str]] = []
        self.authorized_writes = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = 'HTTP/1.1'

            def log_message(self, *args):
                pass

            def do_GET(self):
                server._handle(self, 'GET')

            def do_HEAD(self):
                server._handle(self, 'HEAD')

            def do_POST(self):
                server._handle(self, 'POST')

        self.httpd = ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f'http://127.0.0.1:{self.httpd.server_address[1]}'
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> 'HubUploadServer':
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    # responses
    @staticmethod
    def _send(h, status: int, body: bytes = b'', headers: Optional[dict] = None, head: bool = False) -> None:
        h.send_response(status)
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.send_header('Content-Length', str(len(body)))
        h.end_headers()
        if not head:
            h.wfile.write(body)

    def _json(self, h, status: int, value, headers: Optional[dict] = None) -> None:
        self._send(h, status, json.dumps(value).encode(), dict({'Content-Type': 'application/json'}, **(headers or {})))

    def _error(self, h, status: int, code: str, message: str, head: bool = False) -> None:
        self._send(h, status, json.dumps({'error': message}).encode(),
                   {'Content-Type': 'application/json', 'X-Error-Code': code, 'X-Error-Message': message}, head)

    def _authorized(self, h) -> bool:
        return h.headers.get('Authorization') == f'Bearer {self.token}'

    def _handle(self, h, method: str) -> None:
        path = urlsplit(h.path).path
        self.requests.append((method, path))
        body = h.rfile.read(int(h.headers.get('Content-Length') or 0)) if method == 'POST' else b''
        parts = [unquote(p) for p in path.strip('/').split('/')]
        if path == '/api/agent-harnesses':
            return self._json(h, 200, {'standardEnvVars': [], 'harnesses': {}})
        if path == '/api/validate-yaml':
            return self._validate_yaml(h, json.loads(body))
        if parts[:1] == ['api'] and method == 'POST':
            if not self._authorized(h):
                return self._error(h, 401, 'Unauthorized', 'Invalid credentials in Authorization header')
            self.authorized_writes += 1
            if parts[1:] == ['repos', 'create']:
                return self._create(h, json.loads(body))
            if len(parts) == 6 and parts[1] == 'models':
                repo_id, action, rev = f'{parts[2]}/{parts[3]}', parts[4], parts[5]
                repo = self.repos.get(repo_id)
                if repo is None:
                    return self._error(h, 404, 'RepoNotFound', f'Repository {repo_id} not found')
                if action == 'preupload':
                    files = json.loads(body)['files']
                    return self._json(h, 200, {'files': [{'path': f['path'], 'uploadMode': 'regular', 'shouldIgnore': False}
                                                         for f in files]})
                if action == 'commit':
                    return self._commit(h, repo_id, repo, rev, body)
                if action == 'branch':
                    if rev in repo.branches:
                        return self._error(h, 409, 'BranchExists', f'Branch {rev} already exists')
                    start = (json.loads(body or b'{}') or {}).get('startingPoint') or 'main'
                    repo.branches[rev] = repo.resolve(start)
                    return self._json(h, 200, {})
            return self._error(h, 404, 'NotFound', f'no route {method} {path}')
        if parts[:2] == ['api', 'models'] and method == 'GET' and len(parts) in (4, 6):
            return self._model_info(h, f'{parts[2]}/{parts[3]}', parts[5] if len(parts) == 6 else 'main')
        if len(parts) >= 5 and parts[2] == 'resolve' and method in ('GET', 'HEAD'):
            return self._resolve(h, f'{parts[0]}/{parts[1]}', parts[3], '/'.join(parts[4:]), head=method == 'HEAD')
        return self._error(h, 404, 'NotFound', f'no route {method} {path}')

    def _validate_yaml(self, h, payload) -> None:
        content = payload['content']
        errors = []
        if content.startswith('---\n'):
            try:
                meta = yaml.safe_load(content[4:content.index('\n---', 4)])
                if not isinstance(meta, dict):
                    errors.append({'message': 'metadata must be a YAML mapping'})
            except (yaml.YAMLError, ValueError) as e:
                errors.append({'message': f'invalid YAML: {e}'})
        return self._json(h, 400 if errors else 200, {'errors': errors, 'warnings': []})

    def _create(self, h, payload) -> None:
        repo_id = f"{payload['organization']}/{payload['name']}" if payload.get('organization') else payload['name']
        url = f'{self.url}/{repo_id}'
        if repo_id in self.repos:
            return self._json(h, 409, {'error': 'You already created this model repo', 'url': url})
        self.repos[repo_id] = _Repo(private=payload.get('visibility') == 'private' or bool(payload.get('private')))
        return self._json(h, 200, {'url': url, 'name': repo_id})

    def _commit(self, h, repo_id: str, repo: _Repo, rev: str, body: bytes) -> None:
        if rev not in repo.branches:
            return self._error(h, 404, 'RevisionNotFound', f'Branch {rev} not found')
        files = dict(repo.commits[repo.branches[rev]])
        message = ''
        for line in body.splitlines():
            item = json.loads(line)
            if item['key'] == 'header':
                message = item['value']['summary']
            elif item['key'] == 'file':
                files[item['value']['path']] = base64.b64decode(item['value']['content'])
            elif item['key'] == 'deletedFile':
                files.pop(item['value']['path'], None)
            else:
                return self._error(h, 400, 'BadRequest', f"unsupported commit operation {item['key']}")
        oid = repo.commit(files, repo.branches[rev], message, rev)
        return self._json(h, 200, {'commitUrl': f'{self.url}/{repo_id}/commit/{oid}', 'commitOid': oid,
                                   'pullRequestUrl': None})

    def _readable(self, h, repo_id: str) -> Optional[_Repo]:
        repo = self.repos.get(repo_id)
        return repo if repo is not None and (not repo.private or self._authorized(h)) else None

    def _model_info(self, h, repo_id: str, rev: str) -> None:
        repo = self._readable(h, repo_id)
        if repo is None:
            return self._error(h, 404, 'RepoNotFound', f'Repository {repo_id} not found')
        oid = repo.resolve(rev)
        if oid is None:
            return self._error(h, 404, 'RevisionNotFound', f'Revision {rev} not found')
        return self._json(h, 200, {'id': repo_id, 'modelId': repo_id, 'sha': oid, 'private': repo.private,
                                   'siblings': [{'rfilename': p} for p in sorted(repo.commits[oid])]})

    def _resolve(self, h, repo_id: str, rev: str, filename: str, head: bool) -> None:
        repo = self._readable(h, repo_id)
        if repo is None:
            return self._error(h, 404, 'RepoNotFound', f'Repository {repo_id} not found', head)
        oid = repo.resolve(rev)
        if oid is None:
            return self._error(h, 404, 'RevisionNotFound', f'Revision {rev} not found', head)
        data = repo.commits[oid].get(filename)
        if data is None:
            return self._error(h, 404, 'EntryNotFound', f'{filename} not found', head)
        self._send(h, 200, data, {'X-Repo-Commit': oid, 'ETag': f'"{git_blob_sha1(data)}"',
                                  'Content-Type': 'application/octet-stream'}, head)
