"""A released model at work, loaded the way a user loads it: through the Hub (here an offline mirror of the releases).

    python examples/pretrained_demo.py                                   # the best released model, 500 test images
    python examples/pretrained_demo.py --model cifar_resnet18_025.pgd_at_cifar10 --n 200
    python examples/pretrained_demo.py --releases ../shared/hub --data-dir ../shared/data/cifar10

Before importing huggingface_hub it points HF_ENDPOINT at a local `awnet mirror` of the release folders (olah:
`bash tests/setup_tools.sh`, or `python3 -m venv .venv-olah && .venv-olah/bin/pip install olah==0.5.4`) and
HF_HUB_CACHE at an empty folder, so `timm.create_model(name, pretrained=True)` downloads through
huggingface_hub as it would from huggingface.co. It then classifies the first N exact CIFAR-10 test images,
attacks them with PGD-20 (eps 8/255, step 2/255, CE, uniform start, best iterate) and prints clean and robust
accuracy, and for AW-Net the router's mean P(clean) on the clean and on the adversarial images.
Weights files leave the tree after their release commit: `python3 scripts/release_weights.py restore` first.
"""
import argparse
import atexit
import os
import shutil
import socket
import sys
import tempfile
import time

PREFERRED = ('awnet_r18_025.mtard_cifar10', 'cifar_resnet18_025.mtard_cifar10', 'cifar_resnet18_025.pgd_at_cifar10',
             'cifar_resnet18_025.standard_cifar10')


def default_releases() -> str:
    """../shared/hub when it holds release folders, else this repository's hub/releases."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    shared = os.path.join(os.path.dirname(here), 'shared', 'hub')
    has_weights = os.path.isdir(shared) and any(
        os.path.isfile(os.path.join(shared, d, 'model.safetensors')) for d in os.listdir(shared))
    return shared if has_weights else os.path.join(here, 'hub', 'releases')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--model', default='', help=f'registry name.tag to load (default: the first released of '
                                                    f'{", ".join(PREFERRED)})')
    parser.add_argument('--releases', default=default_releases(), help='folder of release folders to serve (default: '
                        '../shared/hub when it holds weights, else hub/releases)')
    parser.add_argument('--data-dir', default='../shared/data/cifar10', help='offline CIFAR-10 folder (default: %(default)s)')
    parser.add_argument('--n', type=int, default=500, help='first N exact test images (at most 1017; default: %(default)s)')
    parser.add_argument('--batch-size', type=int, default=250)
    parser.add_argument('--olah-cli', default=None, help='olah-cli to run (default: $AWNET_OLAH_CLI, .venv-olah, PATH)')
    args = parser.parse_args()
    if not 1 <= args.n <= 1017:
        parser.error(f'--n must be in [1, 1017] (the exact test images), got {args.n}')

    port = free_port()
    os.environ['HF_ENDPOINT'] = f'http://127.0.0.1:{port}'  # read when huggingface_hub is imported, so set first
    os.environ['HF_HUB_CACHE'] = cache = tempfile.mkdtemp(prefix='awnet-demo-cache-')  # cold, as on a new machine
    atexit.register(shutil.rmtree, cache, True)
    os.environ.pop('HF_HUB_OFFLINE', None)
    import timm
    import torch

    import awnet_timm  # noqa: F401  registers the models with timm
    from awnet_timm.attacks import LinfPGD
    from awnet_timm.data import load_offline_cifar10, to_pixels
    from awnet_timm.hub.errors import HubReleaseError
    from awnet_timm.hub.mirror import HubMirror, release_repos

    try:
        repos = release_repos(args.releases)
    except HubReleaseError as e:
        sys.exit(f'pretrained_demo: {e}; restore released weights with `python3 scripts/release_weights.py restore`')
    served = [r.split('/', 1)[1] for r in repos]
    name = args.model or next((m for m in PREFERRED if m in served), '')
    if not name:
        sys.exit(f'pretrained_demo: none of {", ".join(PREFERRED)} is in {args.releases} (it serves {", ".join(served)})')
    torch.manual_seed(0)
    with HubMirror(repos, port=port, olah_cli=args.olah_cli) as mirror:
        t = time.time()
        model = timm.create_model(name, pretrained=True).eval()
        print(f'{name}: downloaded through the mirror {mirror.url} (serving {args.releases}) into a fresh '
              f'huggingface_hub cache in {time.time() - t:.1f} s; {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M '
              f'parameters')
    images, labels = load_offline_cifar10(args.data_dir, 'test-exact', limit=args.n)
    x, y = to_pixels(images), torch.from_numpy(labels)
    pgd = LinfPGD(model, eps=8 / 255, step_size=2 / 255, steps=20, loss='ce', random_start='uniform', keep='best')
    dynamic = hasattr(model, 'forward_with_router') and getattr(model, 'router', None) is not None

    @torch.no_grad()
    def predict(inputs):
        if not dynamic:
            return model(inputs).argmax(1), None
        logits, router = model.forward_with_router(inputs)
        return logits.argmax(1), router.p_clean

    correct_clean = correct_adv = 0
    p_clean, p_adv = [], []
    t = time.time()
    for i in range(0, len(y), args.batch_size):
        xb, yb = x[i:i + args.batch_size], y[i:i + args.batch_size]
        (pred, pc), (pred_adv, pa) = predict(xb), predict(pgd.perturb(xb, yb))
        correct_clean += int((pred == yb).sum())
        correct_adv += int((pred_adv == yb).sum())
        if dynamic and pc is not None:
            p_clean.append(pc)
            p_adv.append(pa)
        done = i + len(yb)
        print(f'  images {done}/{len(y)}: clean {100 * correct_clean / done:.1f}%, PGD-20 {100 * correct_adv / done:.1f}% '
              f'({time.time() - t:.0f} s)', flush=True)
    n = len(y)
    print(f'\n{name} on the first {n} exact CIFAR-10 test images (eps 8/255):')
    print(f'  clean accuracy   {100 * correct_clean / n:.1f}%')
    print(f'  PGD-20 accuracy  {100 * correct_adv / n:.1f}%')
    if p_clean:
        print(f"  router P(clean)  {torch.cat(p_clean).mean():.3f} on clean images, {torch.cat(p_adv).mean():.3f} on "
              f"their PGD-20 versions")
    else:
        print('  (a static network: no router)')


if __name__ == '__main__':
    main()
