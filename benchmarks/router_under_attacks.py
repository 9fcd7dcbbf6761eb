"""What an AW-Net's router and branches make of clean, PGD and N-FGSM inputs: accuracy and mean P(clean) on each.

A check of the training attack for AW-Net: the router (and the Adv BN statistics) learn the inputs the training
attack makes. N-FGSM's examples are not projected back onto the eps-ball (up to 3 eps away), so a router trained on
them can tell them from clean inputs by their size alone and miss eps-bounded attacks; this prints whether it does.

    python benchmarks/router_under_attacks.py output/campaign/zoo/runs/student_awnet_r18_025/best.safetensors \
        --model awnet_r18 --n 200 --data-dir ../shared/data/cifar10
"""
import argparse

import torch

import awnet_timm
from awnet_timm.attacks import LinfPGD
from awnet_timm.attacks.nfgsm import NFGSM
from awnet_timm.data.offline_cifar10 import load_offline_cifar10
from awnet_timm.training import create_model_with_weights


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('weights', help='an AW-Net run directory or weights file of one')
    parser.add_argument('--model', default='awnet_r18', help='the model the run trained (default: %(default)s)')
    parser.add_argument('--data-dir', default='../shared/data/cifar10')
    parser.add_argument('--n', type=int, default=200, help='first N exact test images (default: %(default)s)')
    parser.add_argument('--threads', type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = create_model_with_weights(args.model, args.weights).eval()
    if getattr(model, 'router', None) is None:
        raise SystemExit(f'{args.model} has no router: this check is for AW-Net models')
    images, labels = load_offline_cifar10(args.data_dir, 'test-exact', limit=args.n)
    x, y = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255, torch.from_numpy(labels).long()
    eps = 8 / 255

    def show(name, inputs, route='auto'):
        with torch.no_grad(), awnet_timm.use_route(model, route):
            logits, router = model.forward_with_router(inputs)
        print(f'| {name} | {route} | {100 * (logits.argmax(1) == y).float().mean():.1f} | {router.p_clean.mean():.3f} | '
              f'{(inputs - x).abs().max() * 255:.1f}/255 |')

    print(f'{args.model} from {args.weights}, first {len(y)} exact CIFAR-10 test images, eps 8/255\n')
    print('| inputs | route scored | accuracy (%) | mean P(clean) | max perturbation |\n|---|---|---:|---:|---:|')
    torch.manual_seed(0)
    show('clean', x)
    show('clean', x, 'adv')
    pgd = dict(eps=eps, step_size=2 / 255, steps=10, loss='ce', random_start='uniform')
    show('PGD-10 through the router (auto)', LinfPGD(model, **pgd).perturb(x, y))
    adv_route = LinfPGD(model, route='adv', **pgd).perturb(x, y)
    show('PGD-10 on the Adv BN route', adv_route, 'adv')
    show('N-FGSM (k=2, step eps), as in training', NFGSM(model, eps=eps, step_size=eps, noise=2, route='adv').perturb(x, y))


if __name__ == '__main__':
    main()
