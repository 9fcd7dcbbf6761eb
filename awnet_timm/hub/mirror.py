""" A folder of release folders served as an offline Hugging Face Hub mirror, for `HF_ENDPOINT` (`awnet mirror`)

Machines without Hub access (clusters, this project's CI) still load weights the way users do, through
huggingface_hub: `HubMirror` runs olah (https://pypi.org/project/olah/, 0.5.4) in its offline mirror mode on
this machine, serving each release folder (what `awnet export` writes: model.safetensors, config.json,
README.md) as the Hub repo `<org>/<folder name>`. With `HF_ENDPOINT` pointing at it, `timm.create_model(
'hf-hub:awnet-timm/awnet_r18.mtard_cifar10', pretrained=True)` and the registry names download through it and
fill the normal cache, which then works with `HF_HUB_OFFLINE=1`.

olah is not a dependency of the package (its pins clash with ours): it lives in its own virtual environment,
found through `AWNET_OLAH_CLI`, `./.venv-olah/bin/olah-cli` (made by `bash tests/setup_tools.sh`) or `olah-cli`
on PATH. olah serves local repos only as git repositories, so each folder is copied into a scratch folder and
committed there (git must be installed); the release folders themselves are not touched.
"""
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from typing import Dict, Optional

from ..models.awnet import HUB_ORG
from .errors import HubReleaseError

__all__ = ['HubMirror', 'find_olah_cli', 'release_repos']

OLAH_VERSION = '0.5.4'


def find_olah_cli(explicit: Optional[str] = None) -> str:
    """The olah-cli to run: `explicit`, $AWNET_OLAH_CLI, ./.venv-olah/bin/olah-cli or olah-cli on PATH."""
    candidates = [explicit, os.environ.get('AWNET_OLAH_CLI'), os.path.join('.venv-olah', 'bin', 'olah-cli'),
                  shutil.which('olah-cli')]
    for path in candidates:
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            return os.path.abspath(path)
    raise HubReleaseError(
        f'no olah-cli found (tried --olah-cli, $AWNET_OLAH_CLI, .venv-olah/bin/olah-cli and PATH): install olah in its '
        f'own environment, `python3 -m venv .venv-olah && .venv-olah/bin/pip install olah=={OLAH_VERSION}` '
        f'(or `bash tests/setup_tools.sh`), then point AWNET_OLAH_CLI at .venv-olah/bin/olah-cli')


def release_repos(folder: str, org: str = HUB_ORG) -> Dict[str, str]:
    """{repo_id: release folder} of every subfolder of `folder` holding model.safetensors and config.json."""
    if not os.path.isdir(folder):
        raise HubReleaseError(f"'{folder}' is not a folder: give a folder of release folders (e.g. hub/releases)")
    repos = {f'{org}/{name}': os.path.join(folder, name) for name in sorted(os.listdir(folder))
             if all(os.path.isfile(os.path.join(folder, name, f)) for f in ('model.safetensors', 'config.json'))}
    if not repos:
        raise HubReleaseError(f"'{folder}' holds no release folder (a subfolder with model.safetensors and config.json, "
                              f"as `awnet export` writes)")
    return repos


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _git(cwd: str, *args: str) -> None:
    try:
        subprocess.run(['git', '-c', 'user.name=awnet-mirror', '-c', 'user.email=mirror@awnet.invalid',
                        '-c', 'commit.gpgsign=false', '-c', 'init.defaultBranch=main', *args],
                       cwd=cwd, check=True, capture_output=True, text=True)
    except FileNotFoundError:
        raise HubReleaseError('the mirror needs git (olah serves local repos as git repositories): install git') from None
    except subprocess.CalledProcessError as e:
        raise HubReleaseError(f"git {' '.join(args)} failed in {cwd}: {e.stderr.strip()}") from None


class HubMirror:
    """ olah serving `{repo_id: release folder}` on `host`:`port` in offline mirror mode; a context manager.

    Args:
        repos: Hub repo id -> release folder (see `release_repos`).
        workdir: Scratch folder for the git copies, olah's config and log (default: a new temporary folder,
            removed by `stop`).
        host, port: Where to listen (port 0: a free one).
        olah_cli: Path of olah-cli (default: `find_olah_cli()`).
    """

    def __init__(self, repos: Dict[str, str], workdir: Optional[str] = None, host: str = '127.0.0.1', port: int = 0,
                 olah_cli: Optional[str] = None):
        if not repos:
            raise HubReleaseError('nothing to serve: give at least one release folder')
        self.repos = dict(repos)
        self.cli = find_olah_cli(olah_cli)
        self.own_workdir = workdir is None
        self.workdir = workdir or tempfile.mkdtemp(prefix='awnet-mirror-')
        self.host = host
        self.port = port or _free_port(host)
        self.url = f'http://{host}:{self.port}'
        self.log = os.path.join(self.workdir, 'olah.log')
        self.proc: Optional[subprocess.Popen] = None

    def _write_repos(self) -> str:
        mirrors = os.path.join(self.workdir, 'mirrors')
        for repo_id, folder in self.repos.items():
            work = os.path.join(mirrors, 'models', repo_id)
            shutil.copytree(folder, work)
            _git(work, 'init', '-q')
            _git(work, 'add', '-A')
            _git(work, 'commit', '-q', '-m', f'{repo_id} from {os.path.abspath(folder)}')
        return mirrors

    def start(self, timeout: float = 60) -> 'HubMirror':
        """Copy the repos, start olah, and return once it serves the first repo's config.json."""
        os.makedirs(self.workdir, exist_ok=True)
        mirrors = self._write_repos()
        config = os.path.join(self.workdir, 'olah.toml')
        with open(config, 'w') as f:
            f.write(f'[basic]\nhost = "{self.host}"\nport = {self.port}\n'
                    f'repos-path = "{os.path.join(self.workdir, "olah-repos")}"\nmirrors-path = ["{mirrors}"]\n'
                    f'mirror-scheme = "http"\nmirror-netloc = "{self.host}:{self.port}"\n'
                    f'mirror-lfs-netloc = "{self.host}:{self.port}"\n\n[accessibility]\noffline = true\n')
        with open(self.log, 'w') as log:
            self.proc = subprocess.Popen([self.cli, '-c', config, '--log-path', os.path.join(self.workdir, 'olah-logs')],
                                         stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir)
        probe = f'{self.url}/{next(iter(self.repos))}/resolve/main/config.json'
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through a proxy: it is local
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                code, tail = self.proc.returncode, self._log_tail()
                self.stop()
                raise HubReleaseError(f'olah exited with {code}:\n{tail}')
            try:
                if opener.open(urllib.request.Request(probe, method='HEAD'), timeout=2).status == 200:
                    return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                tail = self._log_tail()
                self.stop()
                raise HubReleaseError(f'olah did not answer {probe} within {timeout:g} s:\n{tail}')
            time.sleep(0.2)

    def _log_tail(self) -> str:
        with open(self.log) as f:
            return f.read()[-3000:]

    def stop(self) -> None:
        """Stop olah (and remove the scratch folder if this object made it)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None
        if self.own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> 'HubMirror':
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
