""" scripts/release_weights.py: weights through one commit, out of the tree in the next, restored sha256-checked """
import hashlib
import os
import shutil
import subprocess
import sys

import pytest

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'scripts', 'release_weights.py')


def _git(repo, *args):
    return subprocess.run(['git', '-c', 'user.name=t', '-c', 'user.email=t@t.invalid', '-c', 'commit.gpgsign=false',
                           *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


def _script(repo, cwd, *args):
    env = dict(os.environ, GIT_AUTHOR_NAME='t', GIT_AUTHOR_EMAIL='t@t.invalid', GIT_COMMITTER_NAME='t',
               GIT_COMMITTER_EMAIL='t@t.invalid')
    return subprocess.run([sys.executable, str(repo / 'scripts' / 'release_weights.py'), *args], cwd=cwd,
                          env=env, capture_output=True, text=True)


@pytest.fixture
def repo(tmp_path):
    """A git repository with the script, the project's .gitignore rule for weights, and two export folders."""
    root = tmp_path / 'repo'
    (root / 'scripts').mkdir(parents=True)
    shutil.copy(SCRIPT, root / 'scripts')
    (root / '.gitignore').write_text('*.safetensors\n')  # the project's rule: no weights file is ever added by accident
    for name, size in (('awnet_r18.mtard_cifar10', 3000), ('cifar_resnet18.mtard_cifar10', 2000)):
        folder = root / 'hub' / 'releases' / name
        folder.mkdir(parents=True)
        (folder / 'model.safetensors').write_bytes(os.urandom(size))
        (folder / 'config.json').write_text('{"architecture": "%s"}\n' % name.split('.')[0])
        (folder / 'README.md').write_text(f'# {name}\n')
    (root / 'docs').mkdir()
    _git(root, 'init', '-q', '-b', 'main')
    _git(root, 'add', 'scripts', '.gitignore')
    _git(root, 'commit', '-q', '-m', 'start')
    return root


def test_weights_pass_through_one_commit_and_come_back(repo):
    releases = repo / 'hub' / 'releases'
    files = {n: (releases / n / 'model.safetensors').read_bytes() for n in os.listdir(releases)}
    done = _script(repo, repo / 'docs', 'commit', '../hub/releases/awnet_r18.mtard_cifar10', '../hub/releases/cifar_resnet18.mtard_cifar10')
    assert done.returncode == 0, done.stderr
    held = _git(repo, 'rev-parse', 'HEAD~1')
    assert _git(repo, 'ls-tree', '-r', '--name-only', 'HEAD~1', 'hub').count('model.safetensors') == 2
    head = _git(repo, 'ls-tree', '-r', '--name-only', 'HEAD').split()
    assert not [f for f in head if f.endswith('.safetensors')]  # nothing of the weights at HEAD
    assert 'hub/releases/awnet_r18.mtard_cifar10/config.json' in head and 'hub/releases/README.md' in head
    assert not (releases / 'awnet_r18.mtard_cifar10' / 'model.safetensors').exists() and not _git(repo, 'status', '--porcelain')
    listing = (releases / 'README.md').read_text()
    for name, data in files.items():
        assert f"| `hub/releases/{name}/model.safetensors` | {len(data):,} | `{hashlib.sha256(data).hexdigest()}` | `{held}` |" in listing

    done = _script(repo, repo / 'docs', 'restore', '../hub/releases/cifar_resnet18.mtard_cifar10')  # one folder
    assert done.returncode == 0 and done.stdout.count('restored') == 1, done.stderr
    assert not (releases / 'awnet_r18.mtard_cifar10' / 'model.safetensors').exists()
    assert _script(repo, repo, 'restore').returncode == 0  # then all
    assert {n: (releases / n / 'model.safetensors').read_bytes() for n in files} == files
    assert not _git(repo, 'status', '--porcelain')  # ignored again: a device call does not carry them


def test_refusals_say_what_was_expected(repo):
    (repo / 'notes.txt').write_text('x')
    _git(repo, 'add', 'notes.txt')
    done = _script(repo, repo, 'commit', 'hub/releases/awnet_r18.mtard_cifar10')
    assert done.returncode == 2 and 'staged changes' in done.stderr
    _git(repo, 'reset', '-q')
    done = _script(repo, repo, 'commit', 'docs')
    assert done.returncode == 2 and 'is not a release folder under hub/releases/' in done.stderr
    done = _script(repo, repo, 'restore')
    assert done.returncode == 2 and 'lists no weights' in done.stderr
    assert _script(repo, repo, 'commit', 'hub/releases/awnet_r18.mtard_cifar10').returncode == 0
    listing = repo / 'hub' / 'releases' / 'README.md'
    text = listing.read_text()
    sha = text.split('| `')[2].split('`')[0]
    listing.write_text(text.replace(sha, '0' * 64))
    done = _script(repo, repo, 'restore')
    assert done.returncode == 2 and 'does not have the listed sha256' in done.stderr


def _no_identity_env(home):
    """The environment of a user who never set a git identity (useConfigOnly: no guess from the host name either)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(('GIT_', 'EMAIL'))}
    return dict(env, HOME=str(home), XDG_CONFIG_HOME=str(home), GIT_CONFIG_NOSYSTEM='1', GIT_CONFIG_COUNT='1',
                GIT_CONFIG_KEY_0='user.useConfigOnly', GIT_CONFIG_VALUE_0='true')


def test_commit_without_a_git_identity_stages_nothing_and_says_how_to_set_it(repo, tmp_path):
    env = _no_identity_env(tmp_path / 'home')
    done = subprocess.run([sys.executable, 'scripts/release_weights.py', 'commit', 'hub/releases/awnet_r18.mtard_cifar10'],
                          cwd=repo, env=env, capture_output=True, text=True)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert 'git has no author identity' in done.stderr and 'git config user.email' in done.stderr
    assert not _git(repo, 'diff', '--cached', '--name-only')  # nothing staged: the retry is not refused
    assert (repo / 'hub' / 'releases' / 'awnet_r18.mtard_cifar10' / 'model.safetensors').exists()
    assert _script(repo, repo, 'commit', 'hub/releases/awnet_r18.mtard_cifar10').returncode == 0  # with an identity


def test_a_refused_weights_commit_leaves_the_index_as_it_was(repo):
    hook = repo / '.git' / 'hooks' / 'pre-commit'
    hook.write_text('#!/bin/sh\necho "pre-commit: refused" >&2\nexit 1\n')
    hook.chmod(0o755)
    done = _script(repo, repo, 'commit', 'hub/releases/awnet_r18.mtard_cifar10')
    assert done.returncode == 2 and 'pre-commit: refused' in done.stderr and 'the index is as it was' in done.stderr
    assert not _git(repo, 'diff', '--cached', '--name-only') and _git(repo, 'rev-list', '--count', 'HEAD') == '1'
    hook.unlink()
    assert _script(repo, repo, 'commit', 'hub/releases/awnet_r18.mtard_cifar10').returncode == 0


def _released(repo):
    """The repo after `commit` of both folders: (listing path, its text, {name: weights bytes})."""
    releases = repo / 'hub' / 'releases'
    files = {n: (releases / n / 'model.safetensors').read_bytes() for n in os.listdir(releases)}
    assert _script(repo, repo, 'commit', *[f'hub/releases/{n}' for n in files]).returncode == 0
    listing = releases / 'README.md'
    return listing, listing.read_text(), files


def _one_line_error(done, message):
    assert done.returncode == 2 and message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_restore_keeps_a_differing_local_file_unless_told_to_overwrite_it(repo):
    listing, text, files = _released(repo)
    weights = repo / 'hub' / 'releases' / 'awnet_r18.mtard_cifar10' / 'model.safetensors'
    weights.write_bytes(b'my newer weights')
    done = _script(repo, repo, 'restore')
    _one_line_error(done, 'differs from the listed sha256')
    assert '--overwrite' in done.stderr and weights.read_bytes() == b'my newer weights'
    assert not (repo / 'hub' / 'releases' / 'cifar_resnet18.mtard_cifar10' / 'model.safetensors').exists()  # nothing
    done = _script(repo, repo, 'restore', '--overwrite')
    assert done.returncode == 0 and done.stdout.count('restored') == 2, done.stderr
    assert weights.read_bytes() == files['awnet_r18.mtard_cifar10']
    weights.unlink()
    weights.mkdir()  # a folder where the weights file goes
    _one_line_error(_script(repo, repo, 'restore', '--overwrite'), "is a folder, where the weights file goes")


def test_restore_names_the_rows_it_cannot_read_and_reads_reformatted_tables(repo):
    listing, text, files = _released(repo)
    rows = [line for line in text.splitlines() if line.startswith('| `hub/')]
    sha = rows[0].split('`')[3]
    listing.write_text(text.replace(sha, sha.upper()))
    done = _script(repo, repo, 'restore', 'hub/releases/cifar_resnet18.mtard_cifar10')
    _one_line_error(done, 'has table rows that are not')
    assert 'awnet_r18.mtard_cifar10/model.safetensors' in done.stderr
    assert not (repo / 'hub' / 'releases' / 'cifar_resnet18.mtard_cifar10' / 'model.safetensors').exists()
    # a formatter's table: re-padded cells, no trailing pipe
    padded = text.replace('|---|---:|---|---|', '| --- | ---: | --- | --- |')
    padded = '\n'.join('|  ' + line.strip('|').replace(' | ', '  |  ').rstrip() if line.startswith('| `') else line
                       for line in padded.splitlines()) + '\n'
    listing.write_text(padded)
    done = _script(repo, repo, 'restore')
    assert done.returncode == 0 and done.stdout.count('restored') == 2, done.stderr
    releases = repo / 'hub' / 'releases'
    assert {n: (releases / n / 'model.safetensors').read_bytes() for n in files} == files


def test_restore_from_a_commit_without_the_file_says_so_not_to_fetch_it(repo):
    listing, text, _ = _released(repo)
    first = _git(repo, 'rev-list', '--max-parents=0', 'HEAD')  # in this clone, without the weights
    held = text.split('`')[-2]
    listing.write_text(text.replace(held, first))
    done = _script(repo, repo, 'restore')
    _one_line_error(done, f'commit {first[:12]} holds no hub/releases/')
    assert 'git fetch' not in done.stderr
    listing.write_text(text.replace(held, 'f' * 40))
    _one_line_error(_script(repo, repo, 'restore'), 'that commit is not in this clone')
