""" scripts/campaign_state.py: a campaign folder through one commit, back in a fresh clone at another path """
import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

SCRIPTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'scripts')
ENV = dict(os.environ, GIT_AUTHOR_NAME='t', GIT_AUTHOR_EMAIL='t@t.invalid', GIT_COMMITTER_NAME='t',
           GIT_COMMITTER_EMAIL='t@t.invalid')
ZOO = os.path.join('output', 'campaign', 'zoo')


def git(repo, *args):
    return subprocess.run(['git', '-c', 'commit.gpgsign=false', *args], cwd=repo, env=ENV, check=True,
                          capture_output=True, text=True).stdout.strip()


def state_script(repo, *args, cwd=None):
    return subprocess.run([sys.executable, str(repo / 'scripts' / 'campaign_state.py'), *args], cwd=cwd or repo,
                          env=ENV, capture_output=True, text=True)


def make_repo(root):
    """A git repository with the scripts and the project's ignore rules (the campaign lives under output/)."""
    (root / 'scripts').mkdir(parents=True)
    for name in ('campaign_state.py', 'release_weights.py'):
        shutil.copy(os.path.join(SCRIPTS, name), root / 'scripts')
    (root / '.gitignore').write_text('/output/\n*.safetensors\n')
    git(root, 'init', '-q', '-b', 'main')
    git(root, 'add', '.')
    git(root, 'commit', '-q', '-m', 'start')
    return root


@pytest.fixture
def campaign(tmp_path):
    """(repo, {path: bytes}): a finished slice's folder whose files name the repository's absolute path."""
    repo = make_repo(tmp_path / 'repo')
    zoo = repo / ZOO
    run = zoo / 'runs' / 'student'
    run.mkdir(parents=True)
    (zoo / 'data').mkdir()
    (zoo / 'data' / 'cifar10-train.npz').write_bytes(os.urandom(100))  # decoded data: not saved
    manifest = {'plan_name': 'cifar10-cpu', 'decoded_data_dir': str(zoo / 'data'),
                'slices': [{'started': '2026-12-05T22:27:00Z', 'finished': '2026-12-06T00:30:00Z'}],
                'stages': {'student': {'kind': 'train', 'epochs_done': 13, 'epochs_planned': 16, 'run_dir': 'runs/student'}}}
    (zoo / 'manifest.json').write_text(json.dumps(manifest, indent=2))
    (run / 'config.json').write_text(json.dumps({'teacher_nat': str(zoo / 'runs' / 'teacher' / 'w.safetensors'),
                                                 'data_dir': str(zoo / 'data'), 'epochs': 16}))
    (run / 'log.jsonl').write_text('{"epoch": 1}\n{"epoch": 2}\n')
    tensors = {'w': torch.randn(5, 3), 'step': torch.arange(4)}
    save_file(tensors, str(run / 'last.state.safetensors'),
              metadata={'awnet_train_state': json.dumps({'epoch': 2, 'out': str(run)})})
    save_file(tensors, str(run / 'best.safetensors'))
    files = {str(p.relative_to(repo)): p.read_bytes() for p in zoo.rglob('*') if p.is_file() and 'data' not in p.parts}
    return repo, files


def test_the_folder_passes_through_one_commit_and_comes_back_in_a_clone_elsewhere(campaign, tmp_path):
    repo, files = campaign
    done = state_script(repo, 'save', 'campaign/zoo', cwd=repo / 'output')  # a relative folder from anywhere in the repo
    assert done.returncode == 0, done.stderr
    held = git(repo, 'rev-parse', 'HEAD~1')
    saved = git(repo, 'ls-tree', '-r', '--name-only', held).split()
    assert sorted(f for f in saved if f.startswith('output/')) == sorted(files)  # everything but the decoded data
    assert not [f for f in git(repo, 'ls-tree', '-r', '--name-only', 'HEAD').split() if f.startswith('output/')]
    assert not git(repo, 'status', '--porcelain') and (repo / ZOO / 'manifest.json').exists()  # the folder stays here
    for path in files:  # no machine path in the history
        assert str(repo).encode() not in subprocess.run(['git', 'show', f'{held}:{path}'], cwd=repo,
                                                        capture_output=True, check=True).stdout, path
    listing = (repo / 'scripts' / 'campaign_state.md').read_text()
    assert f'- commit: `{held}`' in listing and '- epochs: `student 13/16`' in listing and '- slices: `1`' in listing

    clone = tmp_path / 'elsewhere' / 'clone'  # a fresh machine: a clone, at another path
    subprocess.run(['git', 'clone', '-q', str(repo), str(clone)], check=True, env=ENV)
    assert not (clone / 'output').exists()
    done = state_script(clone, 'restore')
    assert done.returncode == 0 and 'restored (sha256 checked)' in done.stdout, done.stderr
    for path, data in files.items():
        if path.endswith('.safetensors'):  # the same tensors; a header that named the path is written anew
            assert all(torch.equal(load_file(str(clone / path))[k], load_file(str(repo / path))[k]) for k in ('w', 'step'))
        if not path.endswith(('manifest.json', 'last.state.safetensors')):
            assert (clone / path).read_bytes() == data.replace(str(repo).encode(), str(clone).encode()), path
    state = clone / ZOO / 'runs' / 'student' / 'last.state.safetensors'
    from safetensors import safe_open
    with safe_open(str(state), 'pt') as f:
        assert json.loads(f.metadata()['awnet_train_state']) == {'epoch': 2, 'out': str(state.parent)}
    manifest = json.loads((clone / ZOO / 'manifest.json').read_text())
    assert manifest['decoded_data_dir'] == str(clone / ZOO / 'data') and manifest['restored'][0]['commit'] == held
    assert not (clone / ZOO / 'data').exists() and not git(clone, 'status', '--porcelain')

    done = state_script(clone, 'restore')  # the folder is there now: kept as it is
    assert done.returncode == 0 and 'kept, nothing restored' in done.stdout
    assert len(json.loads((clone / ZOO / 'manifest.json').read_text())['restored']) == 1


def test_a_second_save_replaces_the_listing(campaign):
    repo, _ = campaign
    assert state_script(repo, 'save').returncode == 0
    first = git(repo, 'rev-parse', 'HEAD~1')
    (repo / ZOO / 'runs' / 'student' / 'log.jsonl').write_text('{"epoch": 1}\n{"epoch": 2}\n{"epoch": 3}\n')
    assert state_script(repo, 'save').returncode == 0
    listing = (repo / 'scripts' / 'campaign_state.md').read_text()
    assert first not in listing and f"- commit: `{git(repo, 'rev-parse', 'HEAD~1')}`" in listing
    data = (repo / ZOO / 'runs' / 'student' / 'log.jsonl').read_bytes()
    assert f"| `{ZOO}/runs/student/log.jsonl` | {len(data):,} | `{hashlib.sha256(data).hexdigest()}` |" in listing


def test_a_slice_ended_by_ctrl_c_is_saved_as_its_message_offers(campaign):
    repo, _ = campaign
    manifest = json.loads((repo / ZOO / 'manifest.json').read_text())
    manifest['slices'].append({'started': '2026-12-06T01:00:00Z', 'interrupted': '2026-12-06T02:00:00Z',
                               'interrupted_stage': 'evaluate'})  # as `awnet zoo run` records a Ctrl-C
    (repo / ZOO / 'manifest.json').write_text(json.dumps(manifest))
    done = state_script(repo, 'save')
    assert done.returncode == 0, done.stderr


def test_refusals_say_what_was_expected(campaign, tmp_path):
    repo, _ = campaign
    done = state_script(repo, 'restore')
    assert done.returncode == 2 and 'lists no saved campaign state' in done.stderr
    done = state_script(repo, 'save', 'scripts')
    assert done.returncode == 2 and 'holds no manifest.json' in done.stderr
    done = state_script(repo, 'save', str(tmp_path))
    assert done.returncode == 2 and 'outside the repository' in done.stderr
    manifest = json.loads((repo / ZOO / 'manifest.json').read_text())
    manifest['slices'].append({'started': '2026-12-06T01:00:00Z'})  # a slice still running, or killed
    (repo / ZOO / 'manifest.json').write_text(json.dumps(manifest))
    done = state_script(repo, 'save')
    assert done.returncode == 2 and 'has not finished' in done.stderr and not git(repo, 'status', '--porcelain')
    (repo / 'notes.txt').write_text('x')
    git(repo, 'add', 'notes.txt')
    done = state_script(repo, 'save', '--unfinished')
    assert done.returncode == 2 and 'staged changes' in done.stderr
    git(repo, 'commit', '-q', '-m', 'notes')
    assert state_script(repo, 'save', '--unfinished').returncode == 0
    shutil.rmtree(repo / ZOO)
    listing = repo / 'scripts' / 'campaign_state.md'
    text = listing.read_text()
    sha = hashlib.sha256((repo / 'notes.txt').read_bytes()).hexdigest()  # not the saved log's
    log = next(line for line in text.splitlines() if 'log.jsonl' in line)
    listing.write_text(text.replace(log, log[:log.index('`', log.index('|', 3) + 4)] + f'`{sha}` |'))
    done = state_script(repo, 'restore')
    assert done.returncode == 2 and 'does not have the listed sha256' in done.stderr
    assert not (repo / ZOO / 'manifest.json').exists()  # written last: a half-restored folder is restored again
    listing.write_text(text.replace('- folder: `output/campaign/zoo`', '- folder: `x`'))
    done = state_script(repo, 'restore')
    assert done.returncode == 2 and "holds the state of 'x'" in done.stderr


def _refused(done, message):
    assert done.returncode == 2 and message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert 'Traceback' not in done.stderr


def test_saving_another_folder_keeps_the_campaigns_listing(campaign):
    repo, _ = campaign
    assert state_script(repo, 'save').returncode == 0
    held = git(repo, 'rev-parse', 'HEAD~1')
    other = repo / 'output' / 'other'
    other.mkdir()
    (other / 'manifest.json').write_text(json.dumps({'plan_name': 'x', 'slices': [{'started': 'now'}], 'stages': {}}))
    done = state_script(repo, 'save', 'output/other', '--unfinished')
    assert done.returncode == 0, done.stderr
    assert f'- commit: `{held}`' in (repo / 'scripts' / 'campaign_state.md').read_text()  # the campaign's, kept
    own = repo / 'scripts' / 'campaign_state-output+other.md'
    assert '- folder: `output/other`' in own.read_text() and own.name in done.stdout
    shutil.rmtree(repo / ZOO)
    done = state_script(repo, 'restore')
    assert done.returncode == 0 and 'restored (sha256 checked)' in done.stdout, done.stderr
    shutil.rmtree(other)
    assert state_script(repo, 'restore', 'output/other').returncode == 0 and (other / 'manifest.json').exists()


def test_restore_never_overwrites_newer_files_without_being_told(campaign):
    repo, files = campaign
    assert state_script(repo, 'save').returncode == 0
    (repo / ZOO / 'manifest.json').unlink()
    log = repo / ZOO / 'runs' / 'student' / 'log.jsonl'
    newer = '{"epoch": 1}\n{"epoch": 2}\n{"epoch": 3}\n'
    log.write_text(newer)
    _refused(state_script(repo, 'restore'), 'differ from the saved state (output/campaign/zoo/runs/student/log.jsonl)')
    assert log.read_text() == newer and not (repo / ZOO / 'manifest.json').exists()
    done = state_script(repo, 'restore', '--overwrite')
    assert done.returncode == 0 and log.read_bytes() == files[f'{ZOO}/runs/student/log.jsonl'], done.stderr


def test_the_default_folder_is_the_repositorys_wherever_it_runs(campaign):
    repo, _ = campaign
    done = state_script(repo, 'save', cwd=repo / 'scripts')
    assert done.returncode == 0 and 'output/campaign/zoo saved' in done.stdout, done.stderr
    shutil.rmtree(repo / ZOO)
    done = state_script(repo, 'restore', cwd=repo / 'scripts')
    assert done.returncode == 0 and (repo / ZOO / 'manifest.json').exists(), done.stderr


def test_manifests_and_listings_that_are_not_a_campaigns_are_one_line_refusals(campaign):
    repo, _ = campaign
    manifest = repo / ZOO / 'manifest.json'
    good = manifest.read_text()
    for text, message in ((good[:len(good) // 2], 'is not valid JSON'),
                          (json.dumps(dict(json.loads(good), slices='one')), "'slices' 'one'"),
                          ('[]', 'got a JSON list'), ('{}', 'is not a campaign manifest')):
        manifest.write_text(text)
        done = state_script(repo, 'save')
        _refused(done, message)
        assert 'has not finished' not in done.stderr and not git(repo, 'status', '--porcelain')
    manifest.write_text(good)
    assert state_script(repo, 'save').returncode == 0
    shutil.rmtree(repo / ZOO)
    listing = repo / 'scripts' / 'campaign_state.md'
    text = listing.read_text()
    commit_line = next(line for line in text.splitlines() if line.startswith('- commit:'))
    listing.write_text(text.replace(commit_line + '\n', ''))
    _refused(state_script(repo, 'restore'), "has no valid '- commit: `...`' line")
    listing.write_text(text.replace('- folder: `output/campaign/zoo`', '- folder: output/campaign/zoo'))
    _refused(state_script(repo, 'restore'), "has no valid '- folder: `...`' line")
    first = git(repo, 'rev-list', '--max-parents=0', 'HEAD')  # a commit of this clone, without the state
    listing.write_text(text.replace(commit_line, f'- commit: `{first}`'))
    done = state_script(repo, 'restore')
    _refused(done, f'commit {first[:12]} holds no output/campaign/zoo/')
    assert 'git fetch' not in done.stderr and not (repo / ZOO).exists()
