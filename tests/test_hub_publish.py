""" `awnet publish`: create the repo and commit through huggingface_hub, against an endpoint speaking the Hub's API """
import json
import os
import shutil

import pytest
import timm
import torch
from huggingface_hub import HfApi, constants as hf_constants, hf_hub_download
from safetensors.torch import load_file

from awnet_timm.cli import main as awnet
from awnet_timm.hub import export_checkpoint
from hub_fixtures import TINY_AWNET, HubUploadServer, eval_record, free_port, make_run, point_hub_at, sha256

TOKEN = 'hf_awnet_test_token'
REPO = 'awnet-test/awnet_r18.mtard_cifar10'


@pytest.fixture(scope='module')
def release(tmp_path_factory):
    """An evaluated export folder, as `hub/releases/<repo>` holds it before publishing."""
    root = tmp_path_factory.mktemp('release')
    run = make_run(str(root / 'run'), model_kwargs=TINY_AWNET)
    out = str(root / 'releases' / 'awnet_r18.mtard_cifar10')
    export_checkpoint(run, out)
    record, _ = eval_record(os.path.join(out, 'model.safetensors'), str(root / 'eval.json'))
    export_checkpoint(run, out, eval_record=record, overwrite=True)
    return out


@pytest.fixture
def no_stored_token(monkeypatch, tmp_path):
    monkeypatch.setattr(hf_constants, 'HF_TOKEN_PATH', str(tmp_path / 'no-token'))
    monkeypatch.delenv('HF_TOKEN', raising=False)
    monkeypatch.delenv('HUGGING_FACE_HUB_TOKEN', raising=False)


def test_publish_uploads_and_the_repo_downloads_back_identical(release, tmp_path, monkeypatch, capsys, no_stored_token):
    monkeypatch.setenv('HF_TOKEN', TOKEN)  # the token comes from the environment
    with HubUploadServer(token=TOKEN) as hub:
        point_hub_at(monkeypatch, None, str(tmp_path / 'cache'), offline=False)  # the test session runs offline
        assert awnet(['publish', release, '--repo-id', REPO, '--endpoint', hub.url, '--private']) == 0
        printed = capsys.readouterr().out
        assert f'uploaded to {hub.url}/{REPO} (revision main)' in printed and 'commit ' in printed
        writes = [r for r in hub.requests if r[0] == 'POST' and r[1] != '/api/validate-yaml']
        assert writes == [('POST', '/api/repos/create'), ('POST', f'/api/models/{REPO}/preupload/main'),
                          ('POST', f'/api/models/{REPO}/commit/main')] and hub.authorized_writes == 3
        assert ('POST', '/api/validate-yaml') in hub.requests  # huggingface_hub checked the card's YAML first

        # everything below goes through huggingface_hub's download path and cache, as a user's download would
        point_hub_at(monkeypatch, hub.url, str(tmp_path / 'cache'), offline=False)
        monkeypatch.delenv('HF_TOKEN')  # a private repo: reading it needs the token too
        with pytest.raises(Exception, match='Repository Not Found'):
            hf_hub_download(REPO, 'config.json')
        monkeypatch.setenv('HF_TOKEN', TOKEN)
        api = HfApi(endpoint=hub.url)
        info = api.model_info(REPO, revision='main')
        assert info.private and sorted(s.rfilename for s in info.siblings) == \
            ['README.md', 'awnet_eval.json', 'config.json', 'model.safetensors']
        for name in ('model.safetensors', 'config.json', 'README.md', 'awnet_eval.json'):
            assert sha256(hf_hub_download(REPO, name)) == sha256(os.path.join(release, name)), name
        model = timm.create_model(f'hf-hub:{REPO}', pretrained=True)
        expected = load_file(os.path.join(release, 'model.safetensors'))
        assert all(torch.equal(v, expected[k]) for k, v in model.state_dict().items())

        # again, to a new branch with a message: the existing repo is reused (409 from create), main is untouched
        with open(os.path.join(release, 'README.md')) as f:
            assert 'awnet_timm' in f.read()
        assert awnet(['publish', release, '--repo-id', REPO, '--endpoint', hub.url, '--revision', 'v1',
                      '--message', 'Release v1']) == 0
        assert ('POST', f'/api/models/{REPO}/branch/v1') in hub.requests
        assert ('POST', f'/api/models/{REPO}/commit/v1') in hub.requests
        branch = api.model_info(REPO, revision='v1').sha
        assert branch != info.sha and api.model_info(REPO, revision='main').sha == info.sha
        path = hf_hub_download(REPO, 'model.safetensors', revision='v1')
        assert sha256(path) == sha256(os.path.join(release, 'model.safetensors'))


def test_dry_run_checks_and_lists_without_any_request(release, capsys, no_stored_token):
    with HubUploadServer(token=TOKEN) as hub:
        assert awnet(['publish', release, '--endpoint', hub.url, '--dry-run']) == 0
        assert hub.requests == []
    out = capsys.readouterr().out
    assert f'would upload to {hub.url}/awnet-timm/awnet_r18.mtard_cifar10 (revision main)' in out  # org from the folder
    assert sha256(os.path.join(release, 'model.safetensors')) in out and 'awnet_eval.json' in out


def test_publish_refusals_say_why(release, tmp_path, capsys, monkeypatch, no_stored_token):
    with HubUploadServer(token=TOKEN) as hub:
        assert awnet(['publish', release, '--endpoint', hub.url]) == 2
        assert 'HF_HUB_OFFLINE=1 is set: publishing needs the Hub' in capsys.readouterr().err
        point_hub_at(monkeypatch, None, str(tmp_path / 'cache'), offline=False)
        assert awnet(['publish', release, '--endpoint', hub.url]) == 2
        assert 'no Hugging Face token: set HF_TOKEN' in capsys.readouterr().err
        monkeypatch.setenv('HF_TOKEN', 'hf_wrong_token')
        assert awnet(['publish', release, '--repo-id', REPO, '--endpoint', hub.url]) == 2
        assert f"error: {hub.url} refused creating the repo '{REPO}' (HTTP 401). Check that the token (HF_TOKEN) is " \
               f"valid and may write to 'awnet-test'" in capsys.readouterr().err
        assert hub.repos == {}

        folder = tmp_path / 'copy'
        folder.mkdir()
        for name in os.listdir(release):
            (folder / name).write_bytes(open(os.path.join(release, name), 'rb').read())
        record = json.load(open(folder / 'awnet_eval.json'))
        (folder / 'awnet_eval.json').write_text(json.dumps(dict(record, checkpoint_sha256='cd' * 32)))
        assert awnet(['publish', str(folder), '--dry-run']) == 2
        assert "was made on a file with sha256 cdcd" in capsys.readouterr().err
        (folder / 'awnet_eval.json').write_text(json.dumps(dict(record, clean_acc=90.3)))  # checked as export checks it
        assert awnet(['publish', str(folder), '--dry-run']) == 2
        assert "'clean_acc' = 90.3 is not a fraction" in capsys.readouterr().err
        (folder / 'awnet_eval.json').unlink()
        assert awnet(['publish', str(folder), '--dry-run']) == 2
        assert 'has no awnet_eval.json' in capsys.readouterr().err
        assert awnet(['publish', str(folder), '--dry-run', '--allow-unevaluated']) == 0
        assert 'warning: no evaluation record' in capsys.readouterr().out
        (folder / 'model.safetensors').write_bytes(b'\x00' * 100)
        assert awnet(['publish', str(folder), '--dry-run', '--allow-unevaluated']) == 2
        assert "does not load with timm.create_model('local-dir:...'" in capsys.readouterr().err
        (folder / 'config.json').unlink()
        assert awnet(['publish', str(folder), '--dry-run']) == 2
        assert 'lacks config.json' in capsys.readouterr().err
        assert awnet(['publish', release, '--repo-id', 'not a repo id', '--dry-run']) == 2
        assert "invalid repo id 'not a repo id'" in capsys.readouterr().err
        assert hub.repos == {}


def test_publish_help_names_the_options(capsys):
    with pytest.raises(SystemExit):
        awnet(['publish', '--help'])
    text = capsys.readouterr().out
    for option in ('--repo-id', '--private', '--public', '--revision', '--message', '--endpoint', '--dry-run',
                   'HF_TOKEN', 'HF_ENDPOINT'):
        assert option in text


def test_partial_or_unfinished_evaluations_need_a_flag(release, tmp_path, capsys):
    folder = tmp_path / 'copy'
    folder.mkdir()
    for name in os.listdir(release):
        (folder / name).write_bytes(open(os.path.join(release, name), 'rb').read())
    record = json.load(open(folder / 'awnet_eval.json'))
    assert awnet(['publish', str(folder), '--dry-run']) == 0  # 1000 images with AutoAttack: a full evaluation
    assert 'warning' not in capsys.readouterr().out
    small = dict(record, data=dict(record['data'], n=8), attacks=[a for a in record['attacks'] if a['name'] != 'autoattack'])
    (folder / 'awnet_eval.json').write_text(json.dumps(small))
    assert awnet(['publish', str(folder), '--dry-run']) == 2
    err = capsys.readouterr().err
    assert 'is partial: it is on 8 images (a full evaluation uses at least 1000) and it has no AutoAttack' in err
    assert '--allow-partial-eval' in err
    assert awnet(['publish', str(folder), '--dry-run', '--allow-partial-eval']) == 0
    out = capsys.readouterr().out
    assert 'warning: partial evaluation: it is on 8 images' in out and 'warning: partial evaluation: it has no AutoAttack' in out
    (folder / 'awnet_eval.json').write_text(json.dumps(dict(record, complete=False)))
    assert awnet(['publish', str(folder), '--dry-run', '--allow-partial-eval']) == 2
    assert 'was saved while `awnet eval` was still running' in capsys.readouterr().err


def test_publish_bad_endpoints_and_configs_are_one_line_errors(release, tmp_path, capsys, monkeypatch, no_stored_token):
    point_hub_at(monkeypatch, None, str(tmp_path / 'cache'), offline=False)
    monkeypatch.setenv('HF_TOKEN', TOKEN)
    assert awnet(['publish', release, '--endpoint', 'huggingface.co', '--dry-run']) == 2
    assert "endpoint 'huggingface.co' is not an http:// or https:// URL" in capsys.readouterr().err
    closed = f'http://127.0.0.1:{free_port()}'  # nothing listens there
    assert awnet(['publish', release, '--endpoint', closed]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"awnet publish: error: {closed} did not answer while creating the repo") and \
        len(err.strip().splitlines()) == 1, err
    folder = tmp_path / 'copy'
    shutil.copytree(release, folder)
    config = json.load(open(folder / 'config.json'))
    config['model_args']['no_such_argument'] = 1  # a hand-edited config.json
    json.dump(config, open(folder / 'config.json', 'w'))
    assert awnet(['publish', str(folder), '--dry-run']) == 2
    err = capsys.readouterr().err
    assert "does not load with timm.create_model('local-dir:...'" in err and 'no_such_argument' in err
