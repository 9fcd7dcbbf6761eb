""" `awnet export`, `awnet publish` and `awnet mirror`: the subcommands of the Hub release tools

`awnet_timm.cli` adds them to its parser with `add_export_parser(sub)`, `add_publish_parser(sub)` and
`add_mirror_parser(sub)`; each
sets `func`, a callable taking the parsed arguments and returning the exit code. Errors (HubReleaseError is a
ValueError) are reported by `awnet_timm.cli.main`, as for every subcommand.
"""
import argparse
import signal
import sys
import time

__all__ = ['add_export_parser', 'add_publish_parser', 'add_mirror_parser', 'run_export', 'run_publish', 'run_mirror']

_EXPORT_HELP = 'Write a Hugging Face Hub repo folder (weights, timm config.json, model card) from a training run.'
_EXPORT_EPILOG = """\
The folder (default hub/releases/<architecture>.<tag>) holds model.safetensors, config.json (the form timm's
hf-hub: and local-dir: loaders read) and README.md (the model card with Hub YAML metadata); with --eval also
awnet_eval.json. The card's numbers must be measured on the exported file itself, so:
  awnet export output/RUN                        # writes hub/releases/awnet_r18.mtard_cifar10
  awnet eval --model awnet_r18 --data-dir ../shared/data/cifar10 --out eval.json \\
      --checkpoint hub/releases/awnet_r18.mtard_cifar10/model.safetensors   # evaluates that very file
  awnet export output/RUN --eval eval.json --overwrite
The export is deterministic, so the second export writes the same model.safetensors (same sha256) and the
card gets the record's numbers; a record of any other file (e.g. of the fp32 weights for a --dtype fp16
export) is refused.
"""

_PUBLISH_HELP = 'Upload an export folder to the Hugging Face Hub (create the repo, one commit) with huggingface_hub.'
_PUBLISH_EPILOG = """\
The token comes from the environment: HF_TOKEN (a token with write access), or the one `hf auth login`
stored. The endpoint is HF_ENDPOINT (default https://huggingface.co) unless --endpoint is given.
Before uploading, the folder is checked: it loads with timm (local-dir:), its card's YAML parses, and its
awnet_eval.json was made on its model.safetensors (same sha256), finished, and is a full evaluation (at least
1000 images, with AutoAttack; --allow-partial-eval publishes a smaller one, with a warning).
  awnet publish hub/releases/awnet_r18.mtard_cifar10 --dry-run     # checks, lists the files, no upload
  awnet publish hub/releases/awnet_r18.mtard_cifar10 --public
"""

_MIRROR_HELP = 'Serve a folder of release folders as an offline Hugging Face Hub mirror (olah) on this machine.'
_MIRROR_EPILOG = """\
Each subfolder holding model.safetensors and config.json (what `awnet export` writes) is served as the Hub repo
<org>/<subfolder>. Point huggingface_hub at it with HF_ENDPOINT (read at import: set it before Python starts), in
another shell, while this command runs (Ctrl-C stops it):
  awnet mirror hub/releases --port 8090
  HF_ENDPOINT=http://127.0.0.1:8090 python3 -c "import timm, awnet_timm; timm.create_model('awnet_r18.mtard_cifar10', pretrained=True)"
Downloads fill the normal Hugging Face cache, so later loads work with HF_HUB_OFFLINE=1 and no mirror.
olah (0.5.4) is not a dependency of the package: install it in its own environment and name it with --olah-cli or
AWNET_OLAH_CLI (`bash tests/setup_tools.sh` makes .venv-olah/bin/olah-cli). git must be installed.
"""


def run_export(args: argparse.Namespace) -> int:
    from .export import export_checkpoint
    result = export_checkpoint(
        args.checkpoint, args.out, eval_record=args.eval, dtype=args.dtype, tag=args.tag, repo_id=args.repo_id,
        weights=args.weights, releases_dir=args.releases_dir, overwrite=args.overwrite, compare=dict(args.compare))
    print(f'awnet export: wrote {result.folder}')
    print(f'  repo {result.repo_id}, {result.architecture}.{result.tag}, {result.params / 1e6:.2f}M parameters, '
          f'{result.dtype}, model.safetensors sha256 {result.sha256}')
    if result.evaluated:
        print('  model card with the evaluation record (same sha256)')
    else:
        print(f'  not evaluated: run `awnet eval` on {result.folder}/model.safetensors, then export again with --eval')
    print(f'  MODEL_CARD.md row:\n{result.zoo_row}')
    return 0


def run_publish(args: argparse.Namespace) -> int:
    from .publish import publish_folder
    result = publish_folder(
        args.folder, args.repo_id, private=args.private, revision=args.revision, commit_message=args.message,
        dry_run=args.dry_run, endpoint=args.endpoint, allow_unevaluated=args.allow_unevaluated,
        allow_partial_eval=args.allow_partial_eval)
    verb = 'would upload' if result.dry_run else 'uploaded'
    print(f'awnet publish: {verb} to {result.endpoint}/{result.repo_id} (revision {result.revision}):')
    for name, size, sha in result.files:
        print(f'  {name:18s} {size:>12,d} bytes  sha256 {sha}')
    for warning in result.warnings:
        print(f'  warning: {warning}')
    if result.commit_url:
        print(f'  commit {result.commit_oid}: {result.commit_url}')
    return 0


def run_mirror(args: argparse.Namespace) -> int:
    from .mirror import HubMirror, release_repos
    repos = release_repos(args.folder, args.org)
    mirror = HubMirror(repos, host=args.host, port=args.port, olah_cli=args.olah_cli)

    def terminate(signum, frame):  # `kill` stops olah too, as Ctrl-C does
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGINT, terminate)  # also when started as a background job, which inherits SIGINT ignored
    try:
        mirror.start()
        print(f'awnet mirror: serving {len(repos)} repo(s) from {args.folder} at {mirror.url} (Ctrl-C stops it):')
        for repo_id, folder in repos.items():
            print(f'  {repo_id:48s} <- {folder}')
        print(f'  in another shell: export HF_ENDPOINT={mirror.url}', flush=True)
        while mirror.proc.poll() is None:
            time.sleep(0.5)
        print(f'awnet mirror: {mirror.exit_message()}', file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print('awnet mirror: stopped', flush=True)
        return 0
    finally:
        mirror.stop()


def _label_and_path(text: str):
    label, sep, path = text.rpartition('=')
    if not sep or not label or not path:
        raise argparse.ArgumentTypeError(f"expected LABEL=EVAL_JSON, got '{text}'")
    return label, path


def add_export_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser('export', help=_EXPORT_HELP, description=_EXPORT_HELP, epilog=_EXPORT_EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('checkpoint', metavar='RUN',
                   help='a run directory of `awnet train` (holds config.json and best/last.safetensors), or a weights '
                        'file inside one')
    p.add_argument('--out', default=None, metavar='DIR',
                   help='folder to write (default: <releases-dir>/<architecture>.<tag>)')
    p.add_argument('--releases-dir', default='hub/releases', metavar='DIR',
                   help='parent of the default output folder (default: hub/releases)')
    p.add_argument('--eval', default=None, metavar='EVAL_JSON',
                   help='`awnet eval` record of the exported model.safetensors (its checkpoint_sha256 must be that '
                        "file's sha256); its numbers fill the card's robustness table and model-index")
    p.add_argument('--dtype', choices=('fp32', 'fp16'), default='fp32',
                   help='precision of model.safetensors (default: fp32); fp16 halves the download and timm loads it '
                        'into the float32 model; evaluate the fp16 file itself')
    p.add_argument('--weights', choices=('best', 'last'), default='best',
                   help="the run's weights to export when RUN is a directory (default: best, the best W-Robust epoch)")
    p.add_argument('--tag', default=None,
                   help='pretrained tag (default: <recipe>_<dataset>, e.g. mtard_cifar10)')
    p.add_argument('--repo-id', default=None, metavar='ORG/NAME',
                   help='Hub repo the card names (default: awnet-timm/<architecture>.<tag>)')
    p.add_argument('--overwrite', action='store_true', help='replace an existing output folder')
    p.add_argument('--compare', action='append', default=[], type=_label_and_path, metavar='LABEL=EVAL_JSON',
                   help="another model's `awnet eval` record to show beside this one in the card's side-by-side table "
                        "(repeatable), e.g. 'static twin (cifar_resnet18_025.mtard_cifar10)=twin.json'")
    p.set_defaults(func=run_export)
    return p


def add_publish_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser('publish', help=_PUBLISH_HELP, description=_PUBLISH_HELP, epilog=_PUBLISH_EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('folder', metavar='FOLDER', help='an export folder written by `awnet export`')
    p.add_argument('--repo-id', default=None, metavar='ORG/NAME',
                   help='target repo (default: awnet-timm/<folder name>)')
    visibility = p.add_mutually_exclusive_group()
    visibility.add_argument('--private', dest='private', action='store_true', default=None,
                            help='create the repo private (an existing repo keeps its visibility)')
    visibility.add_argument('--public', dest='private', action='store_false',
                            help='create the repo public (default: the Hub\'s default for the namespace)')
    p.add_argument('--revision', default='main', metavar='BRANCH',
                   help='branch to commit to, created from main when missing (default: main)')
    p.add_argument('--message', default=None, metavar='TEXT',
                   help="commit message (default: 'Upload <repo>: model.safetensors sha256 <prefix>')")
    p.add_argument('--endpoint', default=None, metavar='URL',
                   help='Hub endpoint (default: $HF_ENDPOINT, else https://huggingface.co)')
    p.add_argument('--dry-run', action='store_true', help='check the folder and list what would be uploaded; no HTTP')
    p.add_argument('--allow-unevaluated', action='store_true',
                   help='publish a folder without awnet_eval.json (its card then has no robustness numbers)')
    p.add_argument('--allow-partial-eval', action='store_true',
                   help='publish an evaluation on fewer than 1000 images or without AutoAttack (refused otherwise)')
    p.set_defaults(func=run_publish)
    return p


def add_mirror_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser('mirror', help=_MIRROR_HELP, description=_MIRROR_HELP, epilog=_MIRROR_EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('folder', metavar='FOLDER', help='a folder of release folders (e.g. hub/releases)')
    p.add_argument('--port', type=int, default=0,
                   help='port to listen on, 1-65535 and free (default: a free one, printed)')
    p.add_argument('--host', default='127.0.0.1', help='address to listen on (default: %(default)s)')
    p.add_argument('--org', default='awnet-timm', help='Hub organisation of the served repos (default: %(default)s)')
    p.add_argument('--olah-cli', default=None, metavar='PATH',
                   help='olah-cli to run; it must exist (default: $AWNET_OLAH_CLI, .venv-olah/bin/olah-cli, or olah-cli '
                        'on PATH)')
    p.set_defaults(func=run_mirror)
    return p
