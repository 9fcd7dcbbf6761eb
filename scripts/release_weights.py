""" Release weights through one commit, out of the working tree after it, and back on demand

Every device call carries the whole working tree, so released weights must not stay in it (the GPU issue's
rule): `commit` puts each release folder under hub/releases/ (model.safetensors, config.json, card, evaluation
record) into one commit, then removes the .safetensors files in a second commit and lists each one, with its
size, sha256 and the commit that holds it, in hub/releases/README.md. `restore` brings them back from those
commits (sha256-checked), e.g. before `awnet publish` or `awnet mirror hub/releases`.

    python3 scripts/release_weights.py commit hub/releases/awnet_r18.mtard_cifar10 hub/releases/cifar_resnet18.mtard_cifar10
    python3 scripts/release_weights.py restore [FOLDER ...]      (default: every file the list names)

Standard library only: it runs without the package's environment. Run it from anywhere inside the repository.
"""
import argparse
import hashlib
import os
import re
import subprocess
import sys
from typing import Callable, Dict, List, Sequence

LIST = os.path.join('hub', 'releases', 'README.md')
HEADER = """# Released weights

Each weights file below passed through one commit and was removed from the tree in the next (every device call
carries the working tree). `python3 scripts/release_weights.py restore` brings them back, sha256-checked (or by
hand: `git show COMMIT:PATH > PATH`); the cards, `config.json` and evaluation records stay in the tree.

| file | bytes | sha256 | commit |
|---|---:|---|---|
"""
ROW = re.compile(r'^\| `(?P<path>[^`]+)` \| (?P<size>[\d,]+) \| `(?P<sha>[0-9a-f]{64})` \| `(?P<commit>[0-9a-f]{40})` \|$')


class ReleaseError(RuntimeError):
    """A request this script cannot carry out, with what was expected."""


def git(*args: str, capture: bool = True) -> str:
    done = subprocess.run(['git', *args], capture_output=capture, text=True)
    if done.returncode != 0:
        raise ReleaseError(f"git {' '.join(args)} failed: {(done.stderr or '').strip()}")
    return (done.stdout or '').strip()


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            h.update(block)
    return h.hexdigest()


def read_list() -> Dict[str, Dict[str, str]]:
    """{path: {size, sha, commit}} of hub/releases/README.md (empty when it does not exist yet)."""
    if not os.path.isfile(LIST):
        return {}
    rows = {}
    with open(LIST) as f:
        for line in f:
            m = ROW.match(line.strip())
            if m:
                rows[m['path']] = m.groupdict()
    return rows


def write_list(rows: Dict[str, Dict[str, str]]) -> None:
    lines = [f"| `{p}` | {r['size']} | `{r['sha']}` | `{r['commit']}` |" for p, r in sorted(rows.items())]
    tmp = LIST + '.tmp'
    with open(tmp, 'w') as f:
        f.write(HEADER + '\n'.join(lines) + '\n')
    os.replace(tmp, LIST)


def check_identity() -> None:
    """Refuse before staging anything when git has no author or committer identity (`git commit` would fail)."""
    for who in ('AUTHOR', 'COMMITTER'):
        if subprocess.run(['git', 'var', f'GIT_{who}_IDENT'], capture_output=True).returncode != 0:
            raise ReleaseError(f'git has no {who.lower()} identity, so it cannot commit: set one with '
                               f'`git config user.name "Your Name"` and `git config user.email you@example.com` '
                               f'(add --global for every repository), then run this again; nothing was staged')


def reset_index() -> None:
    """The index back to HEAD: what it was, since commit() starts only from an index without staged changes."""
    if subprocess.run(['git', 'rev-parse', '-q', '--verify', 'HEAD'], capture_output=True).returncode == 0:
        git('reset', '-q')
    else:
        git('read-tree', '--empty')  # no commit yet: an empty index


def commit(folders: Sequence[str]) -> str:
    """The weights commit, then the commit that takes them out and lists them; returns the weights commit."""
    check_identity()
    if git('diff', '--cached', '--name-only'):
        raise ReleaseError('the index already holds staged changes: commit or unstage them first, so that the weights '
                           'commit holds the release folders only')
    releases = os.path.join('hub', 'releases') + os.sep
    weights: List[str] = []
    for folder in folders:
        folder = os.path.relpath(folder)
        if not (folder + os.sep).startswith(releases) or not os.path.isdir(folder):
            raise ReleaseError(f"'{folder}' is not a release folder under hub/releases/ (what `awnet export` writes)")
        files = sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.endswith('.safetensors'))
        if not files or not os.path.isfile(os.path.join(folder, 'config.json')):
            raise ReleaseError(f"'{folder}' holds no model.safetensors and config.json: export it first")
        weights += files
    names = ', '.join(os.path.basename(os.path.normpath(f)) for f in folders)
    try:
        git('add', '--', *[os.path.relpath(f) for f in folders])
        git('add', '-f', '--', *weights)  # whatever .gitignore says of weights elsewhere
        git('commit', '-q', '-m', f'Release weights: {names} (removed from the tree in the next commit)')
    except ReleaseError as e:  # e.g. a pre-commit hook: nothing is left staged, so running this again works
        reset_index()
        raise ReleaseError(f'{e} (the index is as it was; fix that and run this again)') from None
    held = git('rev-parse', 'HEAD')
    rows = read_list()
    for path in weights:
        rows[path.replace(os.sep, '/')] = {'size': f'{os.path.getsize(path):,}', 'sha': sha256(path), 'commit': held}
    git('rm', '-q', '--cached', '--', *weights)
    write_list(rows)
    git('add', '--', LIST)
    try:
        git('commit', '-q', '-m', f'Weights of {names} out of the tree: kept in {held[:12]}, listed in {LIST}')
    except ReleaseError as e:
        raise ReleaseError(f'{e}. The weights are committed in {held}; the index holds their removal and {LIST}: '
                           f'finish with `git commit`, then delete the weights files') from None
    for path in weights:  # only now: a failed second commit leaves them on disk
        os.remove(path)
    return held


def restore(folders: Sequence[str]) -> List[str]:
    """Write back the listed weights files (those under `folders`, or all), each sha256-checked; returns their paths."""
    rows = read_list()
    if not rows:
        raise ReleaseError(f'{LIST} lists no weights: nothing to restore')
    wanted = [os.path.relpath(f).replace(os.sep, '/') + '/' for f in folders]
    chosen = {p: r for p, r in rows.items() if not wanted or any(p.startswith(w) for w in wanted)}
    if not chosen:
        raise ReleaseError(f"{LIST} lists no weights under {', '.join(folders)}")
    for path, row in sorted(chosen.items()):
        if os.path.isfile(path) and sha256(path) == row['sha']:
            continue
        data = subprocess.run(['git', 'show', f"{row['commit']}:{path}"], capture_output=True)
        if data.returncode != 0:
            raise ReleaseError(f"git show {row['commit'][:12]}:{path} failed: {data.stderr.decode().strip()} "
                               f"(is that commit in this clone? `git fetch` it)")
        if hashlib.sha256(data.stdout).hexdigest() != row['sha']:
            raise ReleaseError(f"{path} at {row['commit'][:12]} does not have the listed sha256 {row['sha']}")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path + '.tmp', 'wb') as f:
            f.write(data.stdout)
        os.replace(path + '.tmp', path)
    return sorted(chosen)


def at_top_level(prog: str, work: Callable[[], None]) -> int:
    """Run WORK from the repository's top level: exit status 0, or 2 with `PROG: error: ...` on a ReleaseError."""
    try:
        os.chdir(git('rev-parse', '--show-toplevel'))
        work()
    except ReleaseError as e:
        print(f'{prog}: error: {e}', file=sys.stderr)
        return 2
    return 0


def main(argv: Sequence[str] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    sub = p.add_subparsers(dest='command', required=True)
    c = sub.add_parser('commit', help='commit release folders with their weights, then take the weights out')
    c.add_argument('folders', nargs='+', metavar='FOLDER', help='release folders under hub/releases/')
    r = sub.add_parser('restore', help='write back the listed weights files from their commits')
    r.add_argument('folders', nargs='*', metavar='FOLDER', help='only the files under these folders (default: all)')
    args = p.parse_args(argv)
    args.folders = [os.path.abspath(f) for f in args.folders]  # as given from here; the work runs at the top level

    def work() -> None:
        if args.command == 'commit':
            held = commit(args.folders)
            print(f'release_weights: weights in {held}; taken out of the tree and listed in {LIST}')
        else:
            for path in restore(args.folders):
                print(f'release_weights: {path} restored (sha256 checked)')
    return at_top_level('release_weights', work)


if __name__ == '__main__':
    sys.exit(main())
