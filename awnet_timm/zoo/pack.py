""" `awnet zoo pack` / `awnet zoo unpack`: a zoo folder's results, split into parts that fit a trip back

The files that matter are concatenated in priority order (the AW-Net release first, then records and
logs, the MTARD baseline's release, the other releases (ARAT's), the teachers' weights) and cut into parts
of at most `max_file_mb`. Parts are grouped into trips of at most `max_total_mb` and `max_files` files, the part manifest
`zoo-pack.json` (each file's offset, size and sha256; each part's size and sha256) counted in every trip.
Trip 1 goes to OUT; later trips to `REST/trip-K`. Unpacking checks every part's sha256 before writing
anything, then writes (atomically) each file whose bytes all arrived, checks its sha256, and names the rest.
"""
import fnmatch
import hashlib
import json
import os
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from ..utils import atomic_write, atomic_write_text, read_json, sha256_file

__all__ = ['PackError', 'PackResult', 'UnpackResult', 'pack_run', 'unpack_parts', 'pack_order', 'PACK_MANIFEST']

PACK_MANIFEST = 'zoo-pack.json'
PACK_VERSION = 1
MB = 1 << 20

# (priority, pattern) over paths relative to the zoo folder; the first match wins, unmatched files stay behind
_PRIORITIES = (
    (0, 'releases/awnet_*/*'),
    (1, 'manifest.json'), (1, 'eval/*'), (1, 'runs/*/config.json'), (1, 'runs/*/log.jsonl'),
    (2, 'releases/*.mtard_*/*'), (3, 'releases/*/*'),
)
# a student whose export did not run: its run's weights take the place of its release
_PRIORITY_NAMES = ('AW-Net release', 'records and logs', 'baseline release', 'other releases', 'teachers')


class PackError(ValueError):
    """A pack request or a set of parts that cannot be packed or rejoined, with what was expected."""


@dataclass
class PackResult:
    manifest: Dict
    trips: List[str]  # folder of each trip, trip 1 first
    left_behind: List[str]  # files of the later trips


@dataclass
class UnpackResult:
    written: List[str]
    missing: List[str]  # files whose parts did not all arrive


def _run_weights(run_dir: str) -> List[Tuple[str, int]]:
    """(weights file, priority) of trained stages: the teachers', and a student's when it has no release (export did not run)."""
    path = os.path.join(run_dir, 'manifest.json')
    if not os.path.isfile(path):
        return []
    manifest = read_json(path, PackError, 'zoo manifest')
    stages = manifest.get('stages') if isinstance(manifest, dict) else None
    if not isinstance(stages, dict):
        raise PackError(f"zoo manifest '{path}' is not one written by `awnet zoo run` (expected an object with stages)")
    teachers = {name for s in stages.values() for name in (s.get('teachers') or {}).values()}
    released = {name for s in stages.values() for name in (s.get('folders') or {})}
    found = []
    for name, s in stages.items():
        if not s.get('weights') or name in released:
            continue
        prio = (4 if name in teachers else 0 if s.get('model', '').startswith('awnet') else
                2 if s.get('recipe') == 'mtard' else 3)
        found.append((s['weights'].replace(os.sep, '/'), prio))
    return found


def pack_order(run_dir: str) -> List[Tuple[str, int]]:
    """(relative path, priority) of the files worth bringing back, most important first."""
    found = []
    for root, dirs, files in os.walk(run_dir):
        dirs[:] = sorted(d for d in dirs if not d.startswith('.') and '.interrupted-' not in d and '.replaced-' not in d)
        for name in sorted(files):
            rel = os.path.relpath(os.path.join(root, name), run_dir).replace(os.sep, '/')
            if name.startswith('.'):
                continue
            prio = next((p for p, pattern in _PRIORITIES if fnmatch.fnmatchcase(rel, pattern)), None)
            if prio is not None:
                found.append((rel, prio))
    found += [(rel, prio) for rel, prio in _run_weights(run_dir) if os.path.isfile(os.path.join(run_dir, rel))]
    return sorted(found, key=lambda item: item[1])  # stable: alphabetical within a priority


def _trips(part_sizes: Sequence[int], manifest_bytes: int, max_total: int, max_files: int) -> List[int]:
    """The trip (1-based) of each part: consecutive parts while the trip stays within its limits."""
    trips, trip, total, count = [], 1, manifest_bytes, 1
    for size in part_sizes:
        if count + 1 > max_files or total + size > max_total:
            trip, total, count = trip + 1, manifest_bytes, 1
        trips.append(trip)
        total, count = total + size, count + 1
    return trips


def pack_run(run_dir: str, out: str, max_file_mb: float = 15, max_total_mb: float = 60, max_files: int = 8,
             rest: Optional[str] = None) -> PackResult:
    """Write trip 1 of `run_dir`'s results to `out` and the later trips to `rest/trip-K` (default `run_dir/pack-rest`)."""
    if not os.path.isdir(run_dir):
        raise PackError(f"'{run_dir}' is not a folder: expected the --out folder of `awnet zoo run`")
    rest = rest or os.path.join(run_dir, 'pack-rest')
    _check_folder(out, 'the parts')
    _check_folder(rest, 'the later trips')
    max_file, max_total = int(max_file_mb * MB), int(max_total_mb * MB)
    if max_file < 1 or max_files < 2 or max_total < max_file + 64 * 1024:
        raise PackError(f'need max_file_mb > 0, max_files >= 2 and max_total_mb above max_file_mb plus the part manifest; '
                        f'got {max_file_mb}, {max_files}, {max_total_mb}')
    items = pack_order(run_dir)
    if not items:
        raise PackError(f"'{run_dir}' holds nothing to pack (no manifest.json, eval records, runs or releases)")
    files, offset = [], 0
    for rel, prio in items:
        path = os.path.join(run_dir, rel)
        size = os.path.getsize(path)
        files.append({'path': rel, 'size': size, 'sha256': sha256_file(path), 'offset': offset,
                      'priority': _PRIORITY_NAMES[prio]})
        offset += size
    total = offset
    part_sizes = [min(max_file, total - start) for start in range(0, total, max_file)]
    manifest_bytes = 64 * 1024  # room for the part manifest in every trip (checked below)
    trips = _trips(part_sizes, manifest_bytes, max_total, max_files)
    folders = {t: out if t == 1 else os.path.join(rest, f'trip-{t}') for t in sorted(set(trips))}
    # one pack's parts never pass for another's: the id covers the files and how they were cut
    layout = {'files': files, 'part_sizes': part_sizes, 'trips': trips}
    pack_id = hashlib.sha256(json.dumps(layout, sort_keys=True).encode()).hexdigest()[:16]
    parts = [{'name': f'zoo-part-{k:03d}.bin', 'offset': k * max_file, 'size': size, 'sha256': '0' * 64, 'trip': trip}
             for k, (size, trip) in enumerate(zip(part_sizes, trips))]
    manifest = {'pack_version': PACK_VERSION, 'pack_id': pack_id, 'source': os.path.basename(os.path.abspath(run_dir)),
                'created': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()), 'max_file_bytes': max_file,
                'max_total_bytes': max_total, 'total_bytes': total, 'files': files, 'parts': parts,
                'trips': len(folders)}
    size = len((json.dumps(manifest, indent=1) + '\n').encode())  # its size is known before any part is written
    if size > manifest_bytes:
        raise PackError(f'the part manifest would be {size} bytes ({len(parts)} parts of {len(files)} files), more than '
                        f'the {manifest_bytes} reserved for it: raise max_file_mb (fewer, larger parts)')
    with _Stream(run_dir, files) as stream:
        for part in parts:
            data = stream.read(part['offset'], part['size'])
            atomic_write(os.path.join(folders[part['trip']], part['name']), _writer(data))
            part['sha256'] = hashlib.sha256(data).hexdigest()
    text = json.dumps(manifest, indent=1) + '\n'
    for folder in folders.values():
        atomic_write_text(os.path.join(folder, PACK_MANIFEST), text)
    trip_of = {p['name']: p['trip'] for p in parts}
    left = [f['path'] for f in files if any(trip_of[p['name']] > 1 for p in parts
                                             if p['offset'] < f['offset'] + f['size'] and f['offset'] < p['offset'] + p['size'])]
    return PackResult(manifest, [folders[t] for t in sorted(folders)], left)


def _check_folder(path: str, what: str):
    """Refuse, before anything is written, a destination folder that is a file (or lies under one)."""
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise PackError(f"cannot write {what} to '{path}': '{existing}' is a file, not a folder")


def _writer(data: bytes):
    def write(tmp: str):
        with open(tmp, 'wb') as f:
            f.write(data)
    return write


class _Stream:
    """Reads byte ranges of the concatenation of `files` (in order) under `root`."""

    def __init__(self, root: str, files: List[Dict]):
        self.root, self.files = root, files

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def read(self, start: int, size: int) -> bytes:
        chunks, end = [], start + size
        for f in self.files:
            lo, hi = max(start, f['offset']), min(end, f['offset'] + f['size'])
            if lo < hi:
                with open(os.path.join(self.root, f['path']), 'rb') as fh:
                    fh.seek(lo - f['offset'])
                    chunks.append(fh.read(hi - lo))
        data = b''.join(chunks)
        if len(data) != size:
            raise PackError(f'files under {self.root} changed while being packed')
        return data


def _load_manifest(folder: str) -> Dict:
    path = os.path.join(folder, PACK_MANIFEST)
    if not os.path.isfile(path):
        raise PackError(f"'{folder}' has no {PACK_MANIFEST}: expected a folder written by `awnet zoo pack`")
    manifest = read_json(path, PackError)
    if not isinstance(manifest, dict):
        raise PackError(f"'{path}' is not a part manifest of `awnet zoo pack` (expected a JSON object)")
    if manifest.get('pack_version') != PACK_VERSION:
        raise PackError(f"'{path}' is pack version {manifest.get('pack_version')}, this awnet_timm reads {PACK_VERSION}")
    fields = {'files': ('path', 'size', 'sha256', 'offset'), 'parts': ('name', 'size', 'sha256', 'offset')}
    for key, keys in fields.items():
        entries = manifest.get(key)
        if not isinstance(entries, list) or not all(isinstance(e, dict) and set(keys) <= set(e) for e in entries):
            raise PackError(f"'{path}' is not a complete part manifest: '{key}' must list objects with "
                            f"{', '.join(keys)}")
    if not isinstance(manifest.get('pack_id'), str):
        raise PackError(f"'{path}' is not a complete part manifest: it has no pack_id")
    bad = [p['name'] for p in manifest['parts'] if not isinstance(p['name'], str) or os.path.basename(p['name']) != p['name']
           or p['name'].startswith('.')]
    if bad:
        raise PackError(f"'{path}' names parts outside its folder: {bad}")
    return manifest


def unpack_parts(sources: Sequence[str], dest: str) -> UnpackResult:
    """Rejoin the parts found in `sources` (folders of one pack) into `dest`; refuses corrupted or foreign parts."""
    if not sources or isinstance(sources, str):
        raise PackError(f'give a list of folders of parts, got {sources!r}')
    _check_folder(dest, 'the files')
    manifests = [_load_manifest(s) for s in sources]
    manifest = manifests[0]
    if any(m['pack_id'] != manifest['pack_id'] for m in manifests):
        raise PackError('the folders hold parts of different packs (their zoo-pack.json differ): unpack each pack on its own')
    unsafe = [f['path'] for f in manifest['files']
              if not isinstance(f['path'], str) or f['path'].startswith('/') or '..' in f['path'].split('/')]
    if unsafe:
        raise PackError(f'{PACK_MANIFEST} names paths outside the destination: {unsafe}')
    present = {}
    for folder in sources:
        for p in manifest['parts']:
            path = os.path.join(folder, p['name'])
            if os.path.isfile(path) and p['name'] not in present:
                with open(path, 'rb') as f:
                    data = f.read()
                if len(data) != p['size'] or hashlib.sha256(data).hexdigest() != p['sha256']:
                    raise PackError(f"part '{path}' is corrupted: its size or sha256 differs from {PACK_MANIFEST}; "
                                    f"nothing was written")
                present[p['name']] = data
    written, missing = [], []
    for f in manifest['files']:
        lo, hi = f['offset'], f['offset'] + f['size']
        pieces, covered = [], True
        for p in manifest['parts']:
            a, b = max(lo, p['offset']), min(hi, p['offset'] + p['size'])
            if a < b:
                if p['name'] not in present:
                    covered = False
                    break
                pieces.append(present[p['name']][a - p['offset']:b - p['offset']])
        if not covered:
            missing.append(f['path'])
            continue
        data = b''.join(pieces)
        if hashlib.sha256(data).hexdigest() != f['sha256']:
            raise PackError(f"'{f['path']}' rejoined does not match its sha256 in {PACK_MANIFEST}")
        atomic_write(os.path.join(dest, *f['path'].split('/')), _writer(data))
        written.append(f['path'])
    return UnpackResult(written, missing)
