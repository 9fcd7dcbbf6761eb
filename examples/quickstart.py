"""Build AW-Net, classify a batch, show the router's P(clean), and time it against a static ResNet-18.

    python examples/quickstart.py                                # built-in synthetic batch
    python examples/quickstart.py --data ../shared/data/cifar10  # first CIFAR-10 test images (exact pixels)
    python examples/quickstart.py --checkpoint model.safetensors # your own weights

Without weights the model is randomly initialised, so its predictions are chance-level: the point
is the API. Inputs are pixels in [0, 1]; the model normalizes them itself.
"""
import argparse

import timm
import torch

import awnet_timm  # noqa: F401  registers awnet_r18 & co. with timm
from awnet_timm.data import load_offline_cifar10, to_pixels
from awnet_timm.timing import median_times


def synthetic_batch(n: int, seed: int = 0) -> torch.Tensor:
    """Smooth random colour images (low-resolution noise upsampled to 32x32), pixels in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 4, 4, generator=g)
    return torch.nn.functional.interpolate(coarse, size=(32, 32), mode='bilinear', align_corners=False).clamp(0, 1)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--model', default='awnet_r18', help='a registered model, e.g. awnet_r18, awnet_r34, cifar_resnet18, cifar_wrn28_10')
    parser.add_argument('--data', default=None,
                        help='offline CIFAR-10 directory (or cifar10-test-exact.npz); default: synthetic images')
    parser.add_argument('--checkpoint', default=None, help='a model.safetensors to load into the model')
    parser.add_argument('--pretrained', action='store_true', help='download the published weights from the Hub')
    parser.add_argument('--batch-size', type=int, default=16)
    parser.add_argument('--repeats', type=int, default=5, help='timing repeats for the speed ratio')
    args = parser.parse_args()

    torch.manual_seed(0)
    overlay = dict(file=args.checkpoint) if args.checkpoint else None
    model = timm.create_model(args.model, pretrained=args.pretrained or bool(args.checkpoint),
                              pretrained_cfg_overlay=overlay).eval()
    labels = model.pretrained_cfg.get('label_names') or [str(i) for i in range(model.num_classes)]
    params = sum(p.numel() for p in model.parameters())
    print(f'{args.model}: {params / 1e6:.2f}M parameters, {"weights loaded" if args.pretrained or args.checkpoint else "random init"}')

    if args.data:
        images, targets = load_offline_cifar10(args.data, 'test-exact', limit=args.batch_size)
        x, y = to_pixels(images), torch.from_numpy(targets)
        print(f'data: the first {len(x)} CIFAR-10 test images (exact pixels) from {args.data}')
    else:
        x, y = synthetic_batch(args.batch_size), None
        print(f'data: {len(x)} synthetic 32x32 images (no labels)')

    with torch.inference_mode():
        # only AW-Net has a router; the static baselines and teachers are plain timm classifiers
        logits, router_out = model.forward_with_router(x) if hasattr(model, 'forward_with_router') else (model(x), None)
    pred = logits.argmax(1)
    p_clean = router_out.p_clean if router_out is not None and router_out.p_clean is not None else None
    print(f'{"#":>3}  {"label":>10}  {"predicted":>10}  {"P(clean)":>8}')
    for i in range(len(x)):
        label = labels[y[i]] if y is not None else '-'
        p = f'{p_clean[i]:.3f}' if p_clean is not None else '-'
        print(f'{i:>3}  {label:>10}  {labels[pred[i]]:>10}  {p:>8}')
    if y is not None:
        print(f'accuracy on this batch: {(pred == y).float().mean().item() * 100:.1f}%')

    baseline = timm.create_model('cifar_resnet18').eval()
    with torch.inference_mode():
        t = median_times({'awnet': lambda: model(x), 'baseline': lambda: baseline(x)}, torch.device('cpu'), args.repeats)
    print(f'eval forward, batch {len(x)} on CPU: {args.model} {t["awnet"] * 1e3:.1f} ms, '
          f'cifar_resnet18 {t["baseline"] * 1e3:.1f} ms, ratio {t["awnet"] / t["baseline"]:.2f}x')


if __name__ == '__main__':
    main()
