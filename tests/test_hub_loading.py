""" Pretrained loading for real: download through a Hub mirror (olah), offline from the warm cache, and errors """
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

import awnet_timm.models.awnet as awnet_module
from awnet_timm.hub import HubMirror, HubReleaseError, export_checkpoint, release_repos
from awnet_timm.models.pretrained import PretrainedWeightsError
from hub_fixtures import REPO_ROOT, TINY_AWNET, TINY_STATIC, find_olah_cli, free_port, make_run, olah_mirror, point_hub_at, sha256

REPO = 'awnet-timm/awnet_r18.mtard_cifar10'


def assert_weights(model, expected):
    state = model.state_dict()
    assert state.keys() == expected.keys()
    for k, v in state.items():
        assert v.dtype in (torch.float32, torch.int64) and torch.equal(v, expected[k].to(v.dtype)), k


@pytest.fixture
def release(tmp_path):
    """`awnet export` of a full-size awnet_r18 run (fp16: half the bytes to serve), what `pretrained=True` builds."""
    run = make_run(str(tmp_path / 'run'))
    return export_checkpoint(run, str(tmp_path / 'releases' / 'awnet_r18.mtard_cifar10'), dtype='fp16')


@pytest.fixture
def mirror(release, tmp_path):
    """olah, offline mirror mode, on 127.0.0.1, serving the export as the Hub repo awnet-timm/awnet_r18.mtard_cifar10."""
    server = olah_mirror(str(tmp_path / 'olah'), {REPO: release.folder})
    yield server
    server.stop()


def test_pretrained_downloads_through_a_hub_mirror_then_loads_offline(release, mirror, tmp_path, monkeypatch):
    expected = load_file(os.path.join(release.folder, 'model.safetensors'))
    cache = str(tmp_path / 'hf-cache')
    # the state once the repo is published; nothing else differs from what a user runs
    monkeypatch.setattr(awnet_module, 'PUBLISHED_WEIGHTS', {'awnet_r18.mtard_cifar10'})
    point_hub_at(monkeypatch, mirror.url, cache, offline=False)
    assert_weights(timm.create_model('awnet_r18', pretrained=True), expected)
    snapshot = os.path.join(cache, 'models--awnet-timm--awnet_r18.mtard_cifar10', 'snapshots')
    (commit,) = os.listdir(snapshot)
    assert sha256(os.path.join(snapshot, commit, 'model.safetensors')) == release.sha256  # byte-identical download
    model = timm.create_model(f'hf-hub:{REPO}', pretrained=True)  # reads config.json, then the weights
    assert_weights(model, expected)
    assert model.pretrained_cfg['hf_hub_id'] == REPO and tuple(model.pretrained_cfg['mean']) == (0, 0, 0)
    assert sorted(os.listdir(os.path.join(snapshot, commit))) == ['config.json', 'model.safetensors']

    monkeypatch.setattr(awnet_module, 'PUBLISHED_WEIGHTS', {'awnet_r18.mtard_cifar10', 'cifar_resnet18.mtard_cifar10'})
    with pytest.raises(PretrainedWeightsError, match=r"has no Hub repo 'awnet-timm/cifar_resnet18.mtard_cifar10' "
                                                     r"with model.safetensors \(RepositoryNotFoundError\).*HF_ENDPOINT"):
        timm.create_model('cifar_resnet18', pretrained=True)
    mirror.stop()

    point_hub_at(monkeypatch, mirror.url, cache, offline=True)  # server gone, HF_HUB_OFFLINE=1: the warm cache only
    for name in ('awnet_r18', 'awnet_r18.mtard_cifar10', f'hf-hub:{REPO}'):
        assert_weights(timm.create_model(name, pretrained=True), expected)
    file = os.path.join(release.folder, 'model.safetensors')
    assert_weights(timm.create_model('awnet_r18', pretrained=True, pretrained_cfg_overlay=dict(file=file)), expected)

    # the variables themselves, read at import by a fresh process, as a user sets them
    script = (f'import timm, awnet_timm; m = timm.create_model("hf-hub:{REPO}", pretrained=True); '
              f'from safetensors.torch import load_file; e = load_file("{file}"); '
              f'assert all((v == e[k].to(v.dtype)).all() for k, v in m.state_dict().items()); print("loaded offline")')
    env = dict(os.environ, HF_HUB_OFFLINE='1', HF_HUB_CACHE=cache, HF_HOME=str(tmp_path / 'hf-home'),
               HF_ENDPOINT=mirror.url, PYTHONPATH=os.pathsep.join(filter(None, [REPO_ROOT, os.environ.get('PYTHONPATH')])))
    done = subprocess.run([sys.executable, '-c', script], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and 'loaded offline' in done.stdout, done.stderr[-3000:]

    # a damaged cached file says where it is and how to get a good one
    blob = os.path.realpath(os.path.join(snapshot, commit, 'model.safetensors'))
    with open(blob, 'r+b') as f:
        f.truncate(os.path.getsize(blob) // 2)
    with pytest.raises(PretrainedWeightsError, match=r'not a readable safetensors file .* truncated or corrupt\. '
                                                     r'It came from the Hugging Face cache: delete it'):
        timm.create_model('awnet_r18', pretrained=True)


MIRROR_CLIENT = textwrap.dedent('''
    import os, sys, timm, awnet_timm
    from safetensors.torch import load_file
    folder = sys.argv[1]
    for name in sorted(os.listdir(folder)):
        weights = os.path.join(folder, name, 'model.safetensors')
        if not os.path.isfile(weights):
            continue
        names = ([name] if name in timm.list_pretrained() else []) + [f'hf-hub:awnet-timm/{name}']  # tag first: cache cold
        expected = load_file(weights)
        for n in names:
            state = timm.create_model(n, pretrained=True).state_dict()
            assert state.keys() == expected.keys(), n
            assert all((v == expected[k].to(v.dtype)).all() for k, v in state.items()), n
            print('loaded', n, flush=True)
''')


@pytest.fixture
def releases_dir(release):
    """$AWNET_RELEASES_DIR when set (real release folders, e.g. ../shared/hub), else the folder of a fresh export."""
    return os.environ.get('AWNET_RELEASES_DIR') or os.path.dirname(release.folder)


def test_awnet_mirror_serves_release_folders_to_pretrained_true_before_they_are_published(releases_dir, tmp_path):
    """`awnet mirror FOLDER` + HF_ENDPOINT: each release loads by its hf-hub: name and by its tag (none is published)."""
    assert not awnet_module.PUBLISHED_WEIGHTS  # the registry tags below load only because a mirror is named
    env = dict(os.environ, AWNET_OLAH_CLI=find_olah_cli(), PYTHONPATH=os.pathsep.join(filter(None, [REPO_ROOT, os.environ.get('PYTHONPATH')])))
    server = subprocess.Popen([sys.executable, '-m', 'awnet_timm.cli', 'mirror', releases_dir], env=env, cwd=str(tmp_path),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = []
    try:
        for line in server.stdout:  # the mirror prints where it serves once it answers
            output.append(line)
            if 'export HF_ENDPOINT=' in line:
                break
        url = output[-1].split('export HF_ENDPOINT=')[-1].strip()
        assert url.startswith('http://127.0.0.1:'), ''.join(output)
        client = dict(env, HF_ENDPOINT=url, HF_HUB_CACHE=str(tmp_path / 'cache'), HF_HOME=str(tmp_path / 'hf-home'))
        client.pop('HF_HUB_OFFLINE', None)
        done = subprocess.run([sys.executable, '-c', MIRROR_CLIENT, releases_dir], env=client, cwd=str(tmp_path),
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        releases = [n for n in os.listdir(releases_dir) if os.path.isfile(os.path.join(releases_dir, n, 'model.safetensors'))]
        expected = {f'hf-hub:awnet-timm/{n}' for n in releases} | {n for n in releases if n in timm.list_pretrained()}
        assert set(done.stdout.split()[1::2]) == expected, done.stdout
        if not os.environ.get('AWNET_RELEASES_DIR'):  # the fresh export: an unpublished registry tag, through the mirror
            assert 'awnet_r18.mtard_cifar10' in expected
    finally:
        server.send_signal(signal.SIGINT)
        rest, _ = server.communicate(timeout=90)  # its stop waits up to 20 s for olah by design; CI may be loaded
    assert server.returncode == 0 and 'awnet mirror: stopped' in rest, ''.join(output) + rest
    # the mirror gone and no HF_ENDPOINT: the same names load from the cache it filled, with HF_HUB_OFFLINE=1
    offline = dict(client, HF_HUB_OFFLINE='1')
    offline.pop('HF_ENDPOINT')
    again = subprocess.run([sys.executable, '-c', MIRROR_CLIENT, releases_dir], env=offline, cwd=str(tmp_path),
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and set(again.stdout.split()[1::2]) == expected, again.stderr[-3000:]


def test_missing_download_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setattr(awnet_module, 'PUBLISHED_WEIGHTS', {'awnet_r18.mtard_cifar10'})
    point_hub_at(monkeypatch, f'http://127.0.0.1:{free_port()}', str(tmp_path / 'empty-cache'), offline=True)
    with pytest.raises(PretrainedWeightsError) as e:
        timm.create_model('awnet_r18.mtard_cifar10', pretrained=True)
    message = str(e.value)
    assert "Hub repo 'awnet-timm/awnet_r18.mtard_cifar10'" in message and str(tmp_path / 'empty-cache') in message
    assert 'HF_HUB_OFFLINE=1 forbids downloading them' in message and 'HF_ENDPOINT to a Hub mirror' in message
    assert "pretrained_cfg_overlay=dict(file='path/to/model.safetensors')" in message


def read_releases_list():
    """The weights files hub/releases/README.md lists (scripts/release_weights.py keeps it)."""
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'hub', 'releases', 'README.md')
    return re.findall(r'^\| `([^`]+)` \|', open(path).read(), flags=re.M) if os.path.isfile(path) else []


def test_unknown_tag_and_unpublished_weights_say_what_to_do():
    with pytest.raises(RuntimeError, match=r'Invalid pretrained tag \(nope\) for awnet_r18\. Its tags: '
                                           r'awnet_r18\.mtard_cifar10 \(with published weights: none yet\)'):
        timm.create_model('awnet_r18.nope', pretrained=True)
    with pytest.raises(RuntimeError, match=r"No weights for 'awnet_r34.mtard_cifar10' have been published yet "
                                           r".*local-dir:path/to/folder.*pretrained_cfg_overlay"):
        timm.create_model('awnet_r34', pretrained=True)
    with pytest.raises(RuntimeError, match=r"No weights for 'awnet_r18.mtard_cifar10' have been published yet .*"
                                           r"Trained weights exist for: .*cifar_resnet18_025\.pgd_at_cifar10.*"
                                           r"served by `awnet mirror hub/releases`"):
        timm.create_model('awnet_r18', pretrained=True)  # the full-size model names the released compact weights
    released = read_releases_list()
    assert {f'hub/releases/{n}/model.safetensors' for n in awnet_module.RELEASED_WEIGHTS} <= set(released), \
        'every name in RELEASED_WEIGHTS is listed in hub/releases/README.md'


def test_corrupt_or_missing_weights_file_says_what_to_do(tmp_path):
    source = timm.create_model('awnet_r18', **TINY_AWNET)
    good = str(tmp_path / 'model.safetensors')
    save_file(source.state_dict(), good)
    truncated = tmp_path / 'truncated.safetensors'
    truncated.write_bytes(open(good, 'rb').read()[:-100])
    with pytest.raises(PretrainedWeightsError, match=rf"{truncated}, are not a readable safetensors file .* "
                                                     r"truncated or corrupt\. Export or download it again"):
        timm.create_model('awnet_r18', pretrained=True, pretrained_cfg_overlay=dict(file=str(truncated)), **TINY_AWNET)
    garbage = tmp_path / 'garbage.safetensors'
    garbage.write_bytes(b'\xff' * 64)
    with pytest.raises(PretrainedWeightsError, match='not a readable safetensors file'):
        timm.create_model('awnet_r18', pretrained=True, pretrained_cfg_overlay=dict(file=str(garbage)), **TINY_AWNET)
    with pytest.raises(PretrainedWeightsError, match=r"weights file '.*missing.safetensors' of 'awnet_r18.mtard_cifar10' "
                                                     r"does not exist"):
        timm.create_model('awnet_r18', pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / 'missing.safetensors')))


def test_weights_of_another_architecture_say_what_to_do(tmp_path):
    static = str(tmp_path / 'static.safetensors')
    save_file(timm.create_model('cifar_resnet18', **TINY_STATIC).state_dict(), static)
    with pytest.raises(PretrainedWeightsError, match=r"(?s)state_dict does not fit awnet_r18.* keys of the model are "
                                                     r"not in the checkpoint: stem\.bn\.clean\.weight.*no router: it looks like a static"):
        timm.create_model('awnet_r18', pretrained=True, pretrained_cfg_overlay=dict(file=static), **TINY_AWNET)
    tiny = str(tmp_path / 'tiny.safetensors')
    save_file(timm.create_model('awnet_r18', **TINY_AWNET).state_dict(), tiny)
    with pytest.raises(PretrainedWeightsError, match=r"(?s)other shapes: stem\.conv\.weight checkpoint \(8, 3, 3, 3\) "
                                                     r"model \(64, 3, 3, 3\).*other model arguments"):
        timm.create_model('awnet_r18', pretrained=True, pretrained_cfg_overlay=dict(file=tiny))
    # a local-dir whose config.json names another architecture than its weights
    run = make_run(str(tmp_path / 'run'), model_kwargs=TINY_AWNET)
    folder = export_checkpoint(run, str(tmp_path / 'export')).folder
    config = os.path.join(folder, 'config.json')
    text = open(config).read().replace('"architecture": "awnet_r18"', '"architecture": "cifar_resnet18"')
    open(config, 'w').write(text.replace('"beta": 3.0,', ''))
    with pytest.raises(PretrainedWeightsError, match='has a router: it looks like AW-Net'):
        timm.create_model(f'local-dir:{folder}', pretrained=True)


def test_weights_of_another_class_count_say_what_to_do(tmp_path):
    source = timm.create_model('awnet_r18', num_classes=100, **TINY_AWNET).eval()
    path = str(tmp_path / 'cifar100.safetensors')
    save_file(source.state_dict(), path)
    with pytest.raises(PretrainedWeightsError, match=r"classifier has 100 classes, the model 10 .* pass num_classes=100 "
                                                     r"together with pretrained_cfg_overlay=dict\(\.\.\., num_classes=100\)"):
        timm.create_model('awnet_r18', pretrained=True, pretrained_cfg_overlay=dict(file=path), **TINY_AWNET)
    same = timm.create_model('awnet_r18', pretrained=True, num_classes=100,
                             pretrained_cfg_overlay=dict(file=path, num_classes=100), **TINY_AWNET).eval()
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(same(x), source(x), rtol=0, atol=0)
    new_head = timm.create_model('awnet_r18', pretrained=True, num_classes=5, pretrained_cfg_overlay=dict(file=path),
                                 **TINY_AWNET)
    assert new_head.head.out_features == 5
    assert torch.equal(new_head.stem.conv.weight, source.stem.conv.weight)


@pytest.fixture
def fake_olah(tmp_path):
    """An olah-cli stand-in that records being run and fails as olah does when another server holds its port."""
    marker = tmp_path / 'olah-was-run'
    cli = tmp_path / 'fake-olah-cli'
    cli.write_text(f'#!/bin/sh\ntouch {marker}\necho "ERROR:    [Errno 98] error while attempting to bind on address: '
                   f'address already in use"\nexit 3\n')
    cli.chmod(0o755)
    return str(cli), marker


@pytest.fixture
def tiny_releases(tmp_path):
    run = make_run(str(tmp_path / 'run'), model_kwargs=TINY_AWNET)
    return os.path.dirname(export_checkpoint(run, str(tmp_path / 'releases' / 'awnet_r18.mtard_cifar10')).folder)


def _mirror_error(capsys, args) -> str:
    from awnet_timm.cli import main as awnet
    assert awnet(['mirror', *args]) == 2, args
    err = capsys.readouterr().err
    assert err.startswith('awnet mirror: error: ') and len(err.strip().splitlines()) == 1, err
    return err


def test_mirror_with_a_missing_olah_cli_does_not_fall_back(tiny_releases, fake_olah, capsys, monkeypatch):
    cli, marker = fake_olah
    monkeypatch.setenv('AWNET_OLAH_CLI', cli)  # a working olah-cli elsewhere must not stand in for the one named
    assert "--olah-cli '/nope/olah' is not an executable file" in \
        _mirror_error(capsys, [tiny_releases, '--olah-cli', '/nope/olah'])
    assert not marker.exists()


def test_mirror_refuses_bad_and_taken_ports_before_starting_olah(tiny_releases, fake_olah, capsys, tmp_path):
    cli, marker = fake_olah
    for port in ('70000', '-1'):
        assert f'port {port} is not a TCP port (0-65535' in _mirror_error(capsys, [tiny_releases, '--port', port, '--olah-cli', cli])
    with socket.socket() as taken:  # what a running `awnet mirror` holds
        taken.bind(('127.0.0.1', 0))
        taken.listen()
        port = taken.getsockname()[1]
        err = _mirror_error(capsys, [tiny_releases, '--port', str(port), '--olah-cli', cli])
    assert f'port {port} on 127.0.0.1 is taken (by another `awnet mirror`' in err and '--port' in err
    assert "cannot listen on nope.invalid:0" in _mirror_error(capsys, [tiny_releases, '--host', 'nope.invalid', '--olah-cli', cli])
    assert not marker.exists()
    # taken between the check and olah's start: olah's own failure is told the same way
    mirror = HubMirror(release_repos(tiny_releases), workdir=str(tmp_path / 'work'), olah_cli=cli)
    with pytest.raises(HubReleaseError, match=f'^port {mirror.port} on 127.0.0.1 is taken'):
        mirror.start()
    assert marker.exists()


def test_mirror_refuses_bad_folders_and_repo_ids(tiny_releases, fake_olah, capsys, tmp_path):
    cli, marker = fake_olah
    release = os.path.join(tiny_releases, 'awnet_r18.mtard_cifar10')
    err = _mirror_error(capsys, [release, '--olah-cli', cli])
    assert 'holds no release folder' in err and f"it is itself a release folder: give its parent, '{tiny_releases}'" in err
    assert 'is not a folder' in _mirror_error(capsys, [str(tmp_path / 'nowhere'), '--olah-cli', cli])
    assert "invalid repo id (--org and the name of" in _mirror_error(capsys, [tiny_releases, '--org', 'my org', '--olah-cli', cli])
    shutil.copytree(release, os.path.join(tiny_releases, 'a release'))  # a folder name no Hub repo can have
    assert "'awnet-timm/a release'" in _mirror_error(capsys, [tiny_releases, '--olah-cli', cli])
    assert not marker.exists()
