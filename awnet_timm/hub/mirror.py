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
import errno
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
from .errors import HubReleaseError, check_repo_id

__all__ = ['HubMirror', 'find_olah_cli', 'release_repos']

OLAH_VERSION = '0.5.4'


def _runnable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def find_olah_cli(explicit: Optional[str] = None) -> str:
    """ The olah-cli to run: `explicit` (which must then exist: no fallback), else $AWNET_OLAH_CLI,
    ./.venv-olah/bin/olah-cli or olah-cli on PATH. """
    if explicit:
        if not _runnable(explicit):
            raise HubReleaseError(f"--olah-cli '{explicit}' is not an executable file: give the path of olah-cli "
                                  f"(e.g. .venv-olah/bin/olah-cli), or leave --olah-cli out to use $AWNET_OLAH_CLI, "
                                  f".venv-olah/bin/olah-cli or PATH")
        return os.path.abspath(explicit)
    candidates = [os.environ.get('AWNET_OLAH_CLI'), os.path.join('.venv-olah', 'bin', 'olah-cli'), shutil.which('olah-cli')]
    for path in candidates:
        if path and _runnable(path):
            return os.path.abspath(path)
    raise HubReleaseError(
        f'no olah-cli found (tried --olah-cli, $AWNET_OLAH_CLI, .venv-olah/bin/olah-cli and PATH): install olah in its '
        f'own environment, `python3 -m venv .venv-olah && .venv-olah/bin/pip install olah=={OLAH_VERSION}` '
        f'(or `bash tests/setup_tools.sh`), then point AWNET_OLAH_CLI at .venv-olah/bin/olah-cli')


def release_repos(folder: str, org: str = HUB_ORG) -> Dict[str, str]:
    """{repo_id: release folder} of every subfolder of `folder` holding model.safetensors and config.json."""
    def is_release(path: str) -> bool:
        return all(os.path.isfile(os.path.join(path, f)) for f in ('model.safetensors', 'config.json'))
    if not os.path.isdir(folder):
        raise HubReleaseError(f"'{folder}' is not a folder: give a folder of release folders (e.g. hub/releases)")
    repos = {f'{org}/{name}': os.path.join(folder, name) for name in sorted(os.listdir(folder))
             if is_release(os.path.join(folder, name))}
    if not repos:
        hint = (f"; it is itself a release folder: give its parent, '{os.path.dirname(os.path.abspath(folder))}'"
                if is_release(folder) else '')
        raise HubReleaseError(f"'{folder}' holds no release folder (a subfolder with model.safetensors and config.json, "
                              f"as `awnet export` writes){hint}")
    for repo_id, path in repos.items():  # the repo ids olah serves, and the URLs clients ask for, must be valid
        check_repo_id(repo_id, f'repo id (--org and the name of {path})')
    return repos


def _bind(host: str, port: int) -> int:
    """Bind `host`:`port` (0: any free port) as olah's server will (SO_REUSEADDR), release it, return the port."""
    try:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
            return s.getsockname()[1]
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise HubReleaseError(_port_taken(host, port)) from None
        raise HubReleaseError(f'cannot listen on {host}:{port} ({e.strerror or e}): give --host an address of this '
                              f'machine (default 127.0.0.1)') from None


def _port_taken(host: str, port: int) -> str:
    return (f'port {port} on {host} is taken (by another `awnet mirror`, or another server): stop that one, give '
            f'another --port, or leave --port out for a free one')


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
        if not 0 <= port <= 65535:
            raise HubReleaseError(f'port {port} is not a TCP port (0-65535; 0 or no --port: a free one)')
        self.repos = dict(repos)
        self.cli = find_olah_cli(olah_cli)
        self.host = host
        self.port = _bind(host, port)  # a taken port or a bad host fail here, before olah starts
        self.own_workdir = workdir is None
        self.workdir = workdir or tempfile.mkdtemp(prefix='awnet-mirror-')
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
        _bind(self.host, self.port)  # still free (the check in __init__ may be long ago)
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
                message = self.exit_message()
                self.stop()
                raise HubReleaseError(message)
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

    def exit_message(self) -> str:
        """Why olah exited: a taken port in one line (another server took it after the check), else its log."""
        tail = self._log_tail()
        if 'address already in use' in tail:
            return _port_taken(self.host, self.port)
        return f'olah exited with {self.proc.returncode}:\n{tail}'

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
