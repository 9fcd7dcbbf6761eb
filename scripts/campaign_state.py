""" Save a campaign folder through one commit, and bring it back on a fresh machine

A campaign (`awnet zoo run --plan cifar10-cpu --resume`, a slice per session) continues exactly while its
git-ignored folder is on the machine; a machine handed back fresh loses it, and with it every epoch since the last
release. `save` puts the folder's state (manifest, runs: configs, logs, last/best checkpoints and training states;
evaluation records and exports; not the decoded data, which the next slice decodes again) into one commit and
takes it out of the tree in the next, as `release_weights.py` does for released weights; `scripts/campaign_state.md`
lists each file with its size, sha256 and that commit (another folder gets a listing of its own,
`scripts/campaign_state-<folder>.md`, so saving it never loses the campaign's). `restore` writes it back,
sha256-checked, when the folder's manifest is missing, and records the restore in the manifest (`restored`), so the
next slice continues where the saved one ended. A folder that is there with its manifest (a machine handed back as
it was, slices run since) is kept; a file there that differs from the save is replaced only with --overwrite.

The repository's absolute path inside the saved files (run configs, manifest, safetensors metadata) is stored as
`<repo>` and written back as the restoring clone's path: no machine path in the history, and a clone elsewhere
resumes too.

    python3 scripts/campaign_state.py save [output/campaign/zoo]       (at the end of a session, after the slice)
    python3 scripts/campaign_state.py restore [output/campaign/zoo]    (at the start, before `awnet zoo run --resume`)

The default folder is output/campaign/zoo of the repository, wherever the script is run from.

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
from release_weights import ReleaseError, at_top_level, check_identity, git, reset_index, show  # noqa: E402

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


def read_list(listing: str = LIST) -> Tuple[Dict[str, str], Dict[str, Dict[str, str]]]:
    """({folder, commit, saved, ...}, {path: {size, sha}}) of a listing (empty when never saved)."""
    fields, rows = {}, {}
    if os.path.isfile(listing):
        with open(listing) as f:
            for line in f:
                m, r = FIELD.match(line.strip()), ROW.match(line.strip())
                if m:
                    fields[m['key']] = m['value']
                elif r:
                    rows[r['path']] = {'size': r['size'], 'sha': r['sha']}
    return fields, rows


def listing_of(folder: str) -> str:
    """ The listing that holds `folder`'s saved state: scripts/campaign_state.md, or scripts/campaign_state-*.md
    whose `folder:` line names it; for a folder never saved, the first when it lists no other folder, else its own
    (one listing per folder: saving another folder never replaces the only listing of the campaign's state). """
    for listing in _listings():
        if os.path.normpath(read_list(listing)[0].get('folder', '\0')) == os.path.normpath(folder):
            return listing
    if not os.path.exists(LIST):
        return LIST
    slug = re.sub(r'[^A-Za-z0-9._-]+', '+', os.path.normpath(folder).replace(os.sep, '/'))
    return os.path.join(os.path.dirname(LIST), f'campaign_state-{slug}.md')


def _listings() -> List[str]:
    """The listings there are: scripts/campaign_state.md first, then the other folders' ones."""
    scripts = os.path.dirname(LIST)
    others = sorted(os.path.join(scripts, n) for n in os.listdir(scripts)
                    if n.startswith('campaign_state-') and n.endswith('.md')) if os.path.isdir(scripts) else []
    return [p for p in [LIST] + others if os.path.isfile(p)]


def _no_listing(folder: str) -> ReleaseError:
    """What to say when no listing holds `folder`: none was saved, one lacks its folder line, or they hold others."""
    held = {listing: read_list(listing)[0].get('folder') for listing in _listings()}
    if not held:
        return ReleaseError(f'{LIST} lists no saved campaign state: nothing to restore')
    broken = [listing for listing, saved in held.items() if not saved]
    if broken:
        return ReleaseError(f"{broken[0]} has no valid '- folder: `...`' line (expected the saved folder there): "
                            f"restore it from git (`git checkout -- {broken[0]}`) and run this again")
    return ReleaseError(f"no listing holds the state of '{folder}': " + '; '.join(
        f"{listing} holds the state of '{saved}'" for listing, saved in held.items()))


def write_list(fields: Dict[str, str], rows: Dict[str, Dict[str, str]], listing: str = LIST) -> None:
    text = HEADER + ''.join(f'- {k}: `{v}`\n' for k, v in fields.items())
    text += '\n| file | bytes | sha256 |\n|---|---:|---|\n'
    text += ''.join(f"| `{p}` | {r['size']} | `{r['sha']}` |\n" for p, r in sorted(rows.items()))
    with open(listing + '.tmp', 'w') as f:
        f.write(text)
    os.replace(listing + '.tmp', listing)


def _files(folder: str) -> List[str]:
    found = []
    for top, dirs, names in os.walk(folder):
        if top == folder:
            dirs[:] = [d for d in dirs if d not in SKIP]
        dirs.sort()
        found += [os.path.join(top, n) for n in sorted(names) if not n.endswith('.tmp')]
    return found


def read_manifest(folder: str) -> Dict:
    """`folder`'s manifest.json, checked to be a campaign's (`awnet zoo run` writes it): an object whose `slices` is a
    list of slice objects (ReleaseError says what is wrong)."""
    path = os.path.join(folder, 'manifest.json')
    if not os.path.isfile(path):
        raise ReleaseError(f"'{folder}' holds no manifest.json: expected a campaign folder (`awnet zoo run --out`)")
    try:
        with open(path, encoding='utf-8') as f:
            manifest = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise ReleaseError(f"'{path}' is not valid JSON ({e}): a truncated or damaged manifest; nothing was saved")
    slices = manifest.get('slices') if isinstance(manifest, dict) else None
    if not isinstance(slices, list) or not slices or not all(isinstance(s, dict) for s in slices):
        got = f"'slices' {slices!r}"[:60] if isinstance(manifest, dict) else f'a JSON {type(manifest).__name__}'
        raise ReleaseError(f"'{path}' is not a campaign manifest of `awnet zoo run` (expected an object whose 'slices' "
                           f"is a non-empty list of slice objects, got {got}); nothing was saved")
    if not isinstance(manifest.get('stages', {}), dict):
        raise ReleaseError(f"'{path}' is not a campaign manifest of `awnet zoo run` ('stages' must be an object); "
                           f"nothing was saved")
    return manifest


def save(folder: str, unfinished: bool = False) -> str:
    """The state commit, then the commit that takes it out and lists it; returns the state commit."""
    root = os.getcwd()
    manifest = read_manifest(folder)
    listing = listing_of(folder)
    last = manifest['slices'][-1]
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
    write_list(_fields(folder, held, manifest), rows, listing)
    git('add', '--', listing)
    try:
        git('commit', '-q', '-m', f'Campaign state out of the tree: kept in {held[:12]}, listed in {listing}')
    except ReleaseError as e:
        raise ReleaseError(f'{e}. The state is committed in {held}; the index holds its removal and {listing}: '
                           f'finish with `git commit`') from None
    return held


def check_listing(listing: str, fields: Dict[str, str], rows: Dict[str, Dict[str, str]], folder: str) -> None:
    """A listing to restore `folder` from: its `folder:` and `commit:` lines and rows (ReleaseError says which lacks)."""
    if not rows:
        raise ReleaseError(f'{listing} lists no saved campaign state of {folder}: nothing to restore')
    for key, pattern, expected in (('folder', r'[^`]+', 'the saved folder'), ('commit', r'[0-9a-f]{40}', 'a 40-hex commit')):
        if not re.fullmatch(pattern, fields.get(key, '')):
            raise ReleaseError(f"{listing} has no valid '- {key}: `...`' line (expected {expected} there); restore "
                               f"it from git (`git checkout -- {listing}`) and run this again")
    if os.path.normpath(fields['folder']) != os.path.normpath(folder):
        raise ReleaseError(f"{listing} holds the state of '{fields['folder']}', not of '{folder}'")


def restore(folder: str, overwrite: bool = False) -> List[str]:
    """ Write the saved state back into `folder` when its manifest is missing; returns the paths written. A file
    there already that differs from the saved one (newer work) is a ReleaseError unless `overwrite`; nothing is
    written before every file has been checked. """
    listing = listing_of(folder)
    if not os.path.isfile(listing):
        raise _no_listing(folder)
    fields, rows = read_list(listing)
    check_listing(listing, fields, rows, folder)
    if os.path.isfile(os.path.join(folder, 'manifest.json')):
        return []  # the machine kept the folder: the campaign continues from it exactly
    root, commit = os.getcwd(), fields['commit']
    todo, differ = [], []
    for path, row in sorted(rows.items()):
        if os.path.isdir(path):
            raise ReleaseError(f"'{path}' is a folder, where a saved file goes: move it away; nothing was restored")
        if not os.path.lexists(path) or path.endswith('manifest.json'):
            todo.append(path)
            continue
        with open(path, 'rb') as f:
            if f.read() != _swap(path, _checked(commit, path, row['sha']), TOKEN, root):
                differ.append(path)
                todo.append(path)
    if differ and not overwrite:
        raise ReleaseError(f"{len(differ)} file(s) of {folder} differ from the saved state ({', '.join(differ[:3])}"
                           f"{', ...' if len(differ) > 3 else ''}): newer work? kept; pass --overwrite to replace "
                           f"them with the saved ones; nothing was restored")
    written = []
    for path in todo:
        if path.endswith('manifest.json'):
            continue  # last: a folder with a manifest counts as restored
        _write(path, _swap(path, _checked(commit, path, rows[path]['sha']), TOKEN, root))
        written.append(path)
    manifest_path = os.path.join(folder, 'manifest.json').replace(os.sep, '/')
    manifest = json.loads(_swap(manifest_path, show(commit, manifest_path, listing), TOKEN, root))
    manifest.setdefault('restored', []).append({'at': _now(), 'commit': fields['commit'], 'saved': fields.get('saved')})
    _write(manifest_path, json.dumps(manifest, indent=2).encode() + b'\n')
    return written + [manifest_path]


def _checked(commit: str, path: str, sha: str) -> bytes:
    """The saved bytes of `path` at `commit`, with the listed sha256."""
    data = show(commit, path, 'the listing')
    if hashlib.sha256(data).hexdigest() != sha:
        raise ReleaseError(f"{path} at {commit[:12]} does not have the listed sha256 {sha}")
    return data


def _write(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    with open(path + '.tmp', 'wb') as f:
        f.write(data)
    os.replace(path + '.tmp', path)


def main(argv: Sequence[str] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    sub = p.add_subparsers(dest='command', required=True)
    s = sub.add_parser('save', help='commit the campaign folder, then take it out of the tree')
    s.add_argument('folder', nargs='?', default=None, help=f"the campaign folder (default: the repository's {DEFAULT})")
    s.add_argument('--unfinished', action='store_true', help='save even though the last slice did not finish (killed)')
    r = sub.add_parser('restore', help='write the saved state back where the folder is missing')
    r.add_argument('folder', nargs='?', default=None, help=f"the campaign folder (default: the repository's {DEFAULT})")
    r.add_argument('--overwrite', action='store_true',
                   help='replace files in the folder that differ from the saved state (default: refuse, keep them)')
    args = p.parse_args(argv)
    folder = os.path.abspath(args.folder) if args.folder else None  # as given from here; the work runs at the top

    def work() -> None:
        relative = os.path.relpath(folder) if folder else DEFAULT  # the default is the repository's, not the cwd's
        if relative.startswith('..'):
            raise ReleaseError(f"'{args.folder}' is outside the repository: git can hold only what is inside it")
        if args.command == 'save':
            held = save(relative, args.unfinished)
            print(f'campaign_state: {relative} saved in {held}; taken out of the tree and listed in '
                  f'{listing_of(relative)}')
        else:
            written = restore(relative, args.overwrite)
            if written:
                print(f'campaign_state: {len(written)} files of {relative} restored (sha256 checked); '
                      f'the next `awnet zoo run --resume` continues the saved slices')
            else:
                print(f'campaign_state: {relative} is here already: kept, nothing restored '
                      '(the campaign continues from it)')
    return at_top_level('campaign_state', work)


if __name__ == '__main__':
    sys.exit(main())
