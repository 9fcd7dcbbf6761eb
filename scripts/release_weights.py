""" Release weights through one commit, out of the working tree after it, and back on demand

Every device call carries the whole working tree, so released weights must not stay in it (the GPU issue's
rule): `commit` puts each release folder under hub/releases/ (model.safetensors, config.json, card, evaluation
record) into one commit, then removes the .safetensors files in a second commit and lists each one, with its
size, sha256 and the commit that holds it, in hub/releases/README.md. `restore` brings them back from those
commits (sha256-checked), e.g. before `awnet publish` or `awnet mirror hub/releases`.

    python3 scripts/release_weights.py commit hub/releases/awnet_r18.mtard_cifar10 hub/releases/cifar_resnet18.mtard_cifar10
    python3 scripts/release_weights.py restore [FOLDER ...]      (default: every file the list names)
    python3 scripts/release_weights.py restore --overwrite FOLDER  (replace local weights that differ from the list)

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
CELLS = {'path': re.compile(r'`(?P<v>[^`]+)`'), 'size': re.compile(r'(?P<v>[\d,]+)'),
         'sha': re.compile(r'`(?P<v>[0-9a-f]{64})`'), 'commit': re.compile(r'`(?P<v>[0-9a-f]{40})`')}


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


def table_cells(line: str) -> List[str]:
    """The cells of a Markdown table row: outer pipes optional, cells padded any way (as formatters re-pad them)."""
    inner = line.strip()
    inner = inner[1:] if inner.startswith('|') else inner
    inner = inner[:-1] if inner.endswith('|') and not inner.endswith('\\|') else inner
    return [cell.strip() for cell in inner.split('|')]


def parse_table(lines: Sequence[str], columns: Sequence[str], where: str) -> Dict[str, Dict[str, str]]:
    """ {first column: {column: value}} of the Markdown table rows among `lines` whose cells match CELLS[column];
    a header or separator row is skipped, and any other row that does not match is a ReleaseError naming it (a row
    skipped silently would drop its file from a restore, or from the list when it is written again). """
    rows, bad = {}, []
    for number, line in enumerate(lines, 1):
        if not line.lstrip().startswith('|'):
            continue
        cells = table_cells(line)
        if cells[0] == 'file' or all(re.fullmatch(r':?-+:?', c) for c in cells):
            continue  # the header and its separator
        found = [CELLS[c].fullmatch(v) for c, v in zip(columns, cells)] if len(cells) == len(columns) else [None]
        if not all(found):
            bad.append(f'line {number}: {line.strip()}')
            continue
        row = {c: m['v'] for c, m in zip(columns, found)}
        rows[row[columns[0]]] = row
    if bad:
        expected = ' | '.join(f'`{c.upper()}`' if CELLS[c].pattern.startswith('`') else c.upper() for c in columns)
        raise ReleaseError(f"{where} has table rows that are not | {expected} | (sha256 64 lowercase hex digits, a "
                           f"commit 40): {'; '.join(bad)}; fix them, nothing was done")
    return rows


def read_list() -> Dict[str, Dict[str, str]]:
    """{path: {path, size, sha, commit}} of hub/releases/README.md (empty when it does not exist yet)."""
    if not os.path.isfile(LIST):
        return {}
    with open(LIST) as f:
        return parse_table(f.readlines(), ('path', 'size', 'sha', 'commit'), LIST)


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


def show(commit: str, path: str, where: str) -> bytes:
    """The bytes of `path` at `commit`; a ReleaseError says whether the commit is missing or does not hold the path."""
    data = subprocess.run(['git', 'show', f'{commit}:{path}'], capture_output=True)
    if data.returncode == 0:
        return data.stdout
    if subprocess.run(['git', 'cat-file', '-e', f'{commit}^{{commit}}'], capture_output=True).returncode == 0:
        raise ReleaseError(f"commit {commit[:12]} holds no {path}: the row of {path} in {where} names the wrong commit "
                           f"(`git log --all -- {path}` finds the one that holds it)")
    raise ReleaseError(f"git show {commit[:12]}:{path} failed: {data.stderr.decode().strip()} (that commit is not "
                       f"in this clone: `git fetch` it)")


def check_targets(paths: Dict[str, str], overwrite: bool) -> List[str]:
    """ The paths of {path: listed sha256} to write, checked before any is: a folder in the way, or (without
    `overwrite`) a local file that differs from the listed one, is a ReleaseError; a file already as listed is kept. """
    todo, differ = [], []
    for path, sha in sorted(paths.items()):
        if os.path.isdir(path):
            raise ReleaseError(f"'{path}' is a folder, where the weights file goes: move it away; nothing was restored")
        if os.path.isfile(path) and sha256(path) == sha:
            continue
        if os.path.lexists(path):
            differ.append(path)
        todo.append(path)
    if differ and not overwrite:
        raise ReleaseError(f"{', '.join(differ)} differ{'s' if len(differ) == 1 else ''} from the listed sha256 "
                           f"(local work?): kept; pass --overwrite to replace with the listed weights; nothing was "
                           f"restored")
    return todo


def restore(folders: Sequence[str], overwrite: bool = False) -> List[str]:
    """Write back the listed weights files (those under `folders`, or all), each sha256-checked; returns the paths
    written (a file already as listed is kept; one that differs is replaced only with `overwrite`)."""
    rows = read_list()
    if not rows:
        raise ReleaseError(f'{LIST} lists no weights: nothing to restore')
    wanted = [os.path.relpath(f).replace(os.sep, '/') + '/' for f in folders]
    chosen = {p: r for p, r in rows.items() if not wanted or any(p.startswith(w) for w in wanted)}
    if not chosen:
        raise ReleaseError(f"{LIST} lists no weights under {', '.join(folders)}")
    todo = check_targets({p: r['sha'] for p, r in chosen.items()}, overwrite)
    for path in todo:
        row = chosen[path]
        data = show(row['commit'], path, LIST)
        if hashlib.sha256(data).hexdigest() != row['sha']:
            raise ReleaseError(f"{path} at {row['commit'][:12]} does not have the listed sha256 {row['sha']}")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path + '.tmp', 'wb') as f:
            f.write(data)
        os.replace(path + '.tmp', path)
    return todo


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
    r.add_argument('--overwrite', action='store_true',
                   help='replace a local weights file that differs from the listed one (default: refuse, keep it)')
    args = p.parse_args(argv)
    args.folders = [os.path.abspath(f) for f in args.folders]  # as given from here; the work runs at the top level

    def work() -> None:
        if args.command == 'commit':
            held = commit(args.folders)
            print(f'release_weights: weights in {held}; taken out of the tree and listed in {LIST}')
        else:
            written = restore(args.folders, args.overwrite)
            for path in written:
                print(f'release_weights: {path} restored (sha256 checked)')
            if not written:
                print('release_weights: every listed file is here already, as listed (sha256 checked)')
    return at_top_level('release_weights', work)


if __name__ == '__main__':
    sys.exit(main())
