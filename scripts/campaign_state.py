""" Save a campaign folder through one commit, and bring it back on a fresh machine

A campaign (`awnet zoo run --plan cifar10-cpu --resume`, a slice per session) continues exactly while its
git-ignored folder is on the machine; a machine handed back fresh loses it, and with it every epoch since the last
release. `save` puts the folder's state (manifest, runs: configs, logs, last/best checkpoints and training states;
evaluation records and exports; not the decoded data, which the next slice decodes again) into one commit and
takes it out of the tree in the next, as `release_weights.py` does for released weights; `scripts/campaign_state.md`
lists each file with its size, sha256 and that commit. `restore` writes it back, sha256-checked, when the folder is
missing, and records the restore in the manifest (`restored`), so the next slice continues where the saved one
ended. A folder that is there and differs from the save (a machine handed back as it was, slices run since) is kept.

The repository's absolute path inside the saved files (run configs, manifest, safetensors metadata) is stored as
`<repo>` and written back as the restoring clone's path: no machine path in the history, and a clone elsewhere
resumes too.

    python3 scripts/campaign_state.py save [output/campaign/zoo]       (at the end of a session, after the slice)
    python3 scripts/campaign_state.py restore [output/campaign/zoo]    (at the start, before `awnet zoo run --resume`)

Standard library only: it runs without the package's environment. Run it from anywhere inside the repository.
"""
import argparse
import datetime
import hashlib
import json
import os
import re
import struct
import subprocess
import sys
from typing import Dict, List, Sequence, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from release_weights import ReleaseError, at_top_level, check_identity, git, reset_index  # noqa: E402

LIST = os.path.join('scripts', 'campaign_state.md')
DEFAULT = os.path.join('output', 'campaign', 'zoo')
SKIP = ('data',)  # decoded from --data-dir again by the next slice
TOKEN = '<repo>'
HEADER = """# The CPU campaign's saved state

`python3 scripts/campaign_state.py save` put the campaign folder below into the commit named here and took it out of
the tree in the next commit (no decoded data; the repository's path written as `<repo>`). On a fresh machine,
`python3 scripts/campaign_state.py restore` writes it back (sha256-checked) before `awnet zoo run --resume`.

"""
FIELD = re.compile(r'^- (?P<key>\w+): `(?P<value>[^`]*)`$')
ROW = re.compile(r'^\| `(?P<path>[^`]+)` \| (?P<size>[\d,]+) \| `(?P<sha>[0-9a-f]{64})` \|$')


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')


def _replace_in_safetensors(data: bytes, old: str, new: str) -> bytes:
    """The file with `old` replaced by `new` in its JSON header (metadata); the tensors' bytes are untouched."""
    n = struct.unpack('<Q', data[:8])[0]
    header = json.loads(data[8:8 + n])
    meta = header.get('__metadata__') or {}
    if not any(old in v for v in meta.values()):
        return data
    header['__metadata__'] = {k: v.replace(old, new) for k, v in meta.items()}
    text = json.dumps(header, separators=(',', ':')).encode()
    text += b' ' * (-len(text) % 8)  # the format pads its header to 8 bytes with spaces
    return struct.pack('<Q', len(text)) + text + data[8 + n:]


def _swap(path: str, data: bytes, old: str, new: str) -> bytes:
    """`data` (the bytes of `path`) with every `old` path replaced by `new`."""
    if old.encode() not in data:
        return data
    if path.endswith('.safetensors'):
        out = _replace_in_safetensors(data, old, new)
    else:
        out = data.replace(old.encode(), new.encode())
    if old.encode() in out:
        raise ReleaseError(f"{path} holds the path '{old}' outside what this script can rewrite")
    return out


def _fields(folder: str, held: str, manifest: Dict) -> Dict[str, str]:
    stages = manifest.get('stages') or {}
    epochs = ', '.join(f"{n} {s.get('epochs_done', 0)}/{s.get('epochs_planned', '?')}" for n, s in stages.items()
                       if isinstance(s, dict) and s.get('kind') == 'train')
    return {'folder': folder.replace(os.sep, '/'), 'commit': held, 'saved': _now(),
            'plan': str(manifest.get('plan_name')), 'slices': str(len(manifest.get('slices') or [])),
            'epochs': epochs}


def read_list() -> Tuple[Dict[str, str], Dict[str, Dict[str, str]]]:
    """({folder, commit, saved, ...}, {path: {size, sha}}) of scripts/campaign_state.md (empty when never saved)."""
    fields, rows = {}, {}
    if os.path.isfile(LIST):
        with open(LIST) as f:
            for line in f:
                m, r = FIELD.match(line.strip()), ROW.match(line.strip())
                if m:
                    fields[m['key']] = m['value']
                elif r:
                    rows[r['path']] = {'size': r['size'], 'sha': r['sha']}
    return fields, rows


def write_list(fields: Dict[str, str], rows: Dict[str, Dict[str, str]]) -> None:
    text = HEADER + ''.join(f'- {k}: `{v}`\n' for k, v in fields.items())
    text += '\n| file | bytes | sha256 |\n|---|---:|---|\n'
    text += ''.join(f"| `{p}` | {r['size']} | `{r['sha']}` |\n" for p, r in sorted(rows.items()))
    with open(LIST + '.tmp', 'w') as f:
        f.write(text)
    os.replace(LIST + '.tmp', LIST)


def _files(folder: str) -> List[str]:
    found = []
    for top, dirs, names in os.walk(folder):
        if top == folder:
            dirs[:] = [d for d in dirs if d not in SKIP]
        dirs.sort()
        found += [os.path.join(top, n) for n in sorted(names) if not n.endswith('.tmp')]
    return found


def save(folder: str, unfinished: bool = False) -> str:
    """The state commit, then the commit that takes it out and lists it; returns the state commit."""
    root = os.getcwd()
    path = os.path.join(folder, 'manifest.json')
    if not os.path.isfile(path):
        raise ReleaseError(f"'{folder}' holds no manifest.json: expected a campaign folder (`awnet zoo run --out`)")
    with open(path) as f:
        manifest = json.load(f)
    last = (manifest.get('slices') or [{}])[-1]
    if not (last.get('finished') or last.get('interrupted')) and not unfinished:  # Ctrl-C ends a slice at a checkpoint
        raise ReleaseError(f"the last slice of '{folder}' has not finished: save once `awnet zoo run` has ended (Ctrl-C "
                           f"ends it at a checkpoint), or pass --unfinished for a slice that was killed")
    check_identity()
    if git('diff', '--cached', '--name-only'):
        raise ReleaseError('the index already holds staged changes: commit or unstage them first, so that the state '
                           'commit holds the campaign folder only')
    rows = {}
    try:
        for name in _files(folder):
            with open(name, 'rb') as f:
                data = _swap(name, f.read(), root, TOKEN)
            blob = subprocess.run(['git', 'hash-object', '-w', '--stdin'], input=data, capture_output=True, check=True)
            key = name.replace(os.sep, '/')
            git('update-index', '--add', '--cacheinfo', f'100644,{blob.stdout.decode().strip()},{key}')
            rows[key] = {'size': f'{len(data):,}', 'sha': hashlib.sha256(data).hexdigest()}
        git('commit', '-q', '-m', f"Campaign state: {folder} after slice {len(manifest.get('slices') or [])} "
                                  f"(removed from the tree in the next commit)")
    except (ReleaseError, subprocess.CalledProcessError) as e:
        reset_index()
        raise ReleaseError(f'{e} (the index is as it was; fix that and run this again)') from None
    held = git('rev-parse', 'HEAD')
    git('rm', '-r', '-q', '--cached', '--', folder)
    write_list(_fields(folder, held, manifest), rows)
    git('add', '--', LIST)
    try:
        git('commit', '-q', '-m', f'Campaign state out of the tree: kept in {held[:12]}, listed in {LIST}')
    except ReleaseError as e:
        raise ReleaseError(f'{e}. The state is committed in {held}; the index holds its removal and {LIST}: '
                           f'finish with `git commit`') from None
    return held


def restore(folder: str) -> List[str]:
    """Write the saved state back into `folder` when its manifest is missing; returns the paths written."""
    fields, rows = read_list()
    if not rows:
        raise ReleaseError(f'{LIST} lists no saved campaign state: nothing to restore')
    saved = fields.get('folder', '')
    if os.path.normpath(saved) != os.path.normpath(folder):
        raise ReleaseError(f"{LIST} holds the state of '{saved}', not of '{folder}'")
    if os.path.isfile(os.path.join(folder, 'manifest.json')):
        return []  # the machine kept the folder: the campaign continues from it exactly
    root = os.getcwd()
    written = []
    for path, row in sorted(rows.items()):
        data = subprocess.run(['git', 'show', f"{fields['commit']}:{path}"], capture_output=True)
        if data.returncode != 0:
            raise ReleaseError(f"git show {fields['commit'][:12]}:{path} failed: {data.stderr.decode().strip()} "
                               f"(is that commit in this clone? `git fetch` it)")
        if hashlib.sha256(data.stdout).hexdigest() != row['sha']:
            raise ReleaseError(f"{path} at {fields['commit'][:12]} does not have the listed sha256 {row['sha']}")
        if path.endswith('manifest.json'):
            continue  # last: a folder with a manifest counts as restored
        _write(path, _swap(path, data.stdout, TOKEN, root))
        written.append(path)
    manifest_path = os.path.join(folder, 'manifest.json').replace(os.sep, '/')
    manifest = json.loads(_swap(manifest_path, subprocess.run(
        ['git', 'show', f"{fields['commit']}:{manifest_path}"], capture_output=True, check=True).stdout, TOKEN, root))
    manifest.setdefault('restored', []).append({'at': _now(), 'commit': fields['commit'], 'saved': fields.get('saved')})
    _write(manifest_path, json.dumps(manifest, indent=2).encode() + b'\n')
    return written + [manifest_path]


def _write(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    with open(path + '.tmp', 'wb') as f:
        f.write(data)
    os.replace(path + '.tmp', path)


def main(argv: Sequence[str] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    sub = p.add_subparsers(dest='command', required=True)
    s = sub.add_parser('save', help='commit the campaign folder, then take it out of the tree')
    s.add_argument('folder', nargs='?', default=DEFAULT, help=f'the campaign folder (default: {DEFAULT})')
    s.add_argument('--unfinished', action='store_true', help='save even though the last slice did not finish (killed)')
    r = sub.add_parser('restore', help='write the saved state back where the folder is missing')
    r.add_argument('folder', nargs='?', default=DEFAULT, help=f'the campaign folder (default: {DEFAULT})')
    args = p.parse_args(argv)
    folder = os.path.abspath(args.folder)  # as given from here; the work runs at the top level

    def work() -> None:
        relative = os.path.relpath(folder)
        if relative.startswith('..'):
            raise ReleaseError(f"'{args.folder}' is outside the repository: git can hold only what is inside it")
        if args.command == 'save':
            held = save(relative, args.unfinished)
            print(f'campaign_state: {relative} saved in {held}; taken out of the tree and listed in {LIST}')
        else:
            written = restore(relative)
            if written:
                print(f'campaign_state: {len(written)} files of {relative} restored (sha256 checked); '
                      f'the next `awnet zoo run --resume` continues the saved slices')
            else:
                print(f'campaign_state: {relative} is here already: kept, nothing restored '
                      '(the campaign continues from it)')
    return at_top_level('campaign_state', work)


if __name__ == '__main__':
    sys.exit(main())
