""" Fine-tune an AW-Net on a new dataset: scikit-learn's handwritten digits, written out as an ImageFolder

    python examples/finetune_digits.py --pretrained output/my-awnet-run          # your CIFAR-10 run
    python examples/finetune_digits.py --pretrained awnet_r18.mtard_cifar10      # Hub weights, once published
    python examples/finetune_digits.py                                           # makes a short source run first

The digits (1,797 images, 10 classes, shipped inside scikit-learn, so nothing is downloaded) become
`<out>/digits/{train,val}/<digit>/*.png` at --img-size; the source model's classifier is replaced and
the whole AW-Net (both BN branches and the router) is fine-tuned adversarially with PGD-AT, or clean-only
with --recipe standard. The same run from the shell:

    awnet finetune --pretrained RUN --data-dir <out>/digits --img-size 32 --epochs 2 --attack-steps 3

Without --pretrained, a source AW-Net is first trained for one short epoch on the offline CIFAR-10 copy
(--cifar10-root) so that the example runs anywhere the copy is; its accuracy says nothing about AW-Net.
"""
import argparse
import json
import os

from awnet_timm.data import write_digits_imagefolder
from awnet_timm.training import TrainConfig, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--pretrained', default='', help='source weights: a run directory, .safetensors file, name.tag or hf-hub:org/repo')
    parser.add_argument('--model', default='awnet_r18')
    parser.add_argument('--model-kwargs', type=json.loads, default={}, help='JSON, e.g. a smaller model for a quick try')
    parser.add_argument('--cifar10-root', default=os.path.join(REPO, '..', 'shared', 'data', 'cifar10'),
                        help='offline CIFAR-10 copy, for the source run when --pretrained is not given')
    parser.add_argument('--out', default=os.path.join(REPO, 'output', 'finetune_digits'))
    parser.add_argument('--img-size', type=int, default=32)
    parser.add_argument('--recipe', default='pgd_at', choices=('pgd_at', 'standard'))
    parser.add_argument('--epochs', type=int, default=3)
    parser.add_argument('--attack-steps', type=int, default=3, help='PGD steps in training (the paper uses 10)')
    parser.add_argument('--freeze-router', action='store_true')
    parser.add_argument('--device', default='auto')
    parser.add_argument('--no-progress', action='store_true')
    args = parser.parse_args()

    common = dict(model=args.model, model_kwargs=args.model_kwargs, batch_size=64, attack_steps=args.attack_steps,
                  val_attack_steps=args.attack_steps, device=args.device, output=args.out, progress=not args.no_progress)
    pretrained = args.pretrained
    if not pretrained:
        source = TrainConfig(recipe='pgd_at', dataset='cifar10-offline', data_dir=args.cifar10_root, train_size=512,
                             val_size=0, epochs=1, run_name='source', resume='auto', **common)
        pretrained = train(source).run_dir
        print(f'source AW-Net (1 short epoch on CIFAR-10, a stand-in for real weights): {pretrained}')

    digits = os.path.join(args.out, 'digits')
    if not os.path.isdir(os.path.join(digits, 'val')):
        write_digits_imagefolder(digits, img_size=args.img_size)
    cfg = TrainConfig(pretrained=pretrained, dataset='imagefolder', data_dir=digits, val_split='val', val_size=1000,
                      img_size=args.img_size, recipe=args.recipe, epochs=args.epochs, lr=0.05, router_lr=0.005,
                      decay_milestones=(max(1, round(0.75 * args.epochs)),), freeze_router=args.freeze_router,
                      **common)
    result = train(cfg)
    last = result.last or {}
    print(f"fine-tuned on digits ({args.img_size}x{args.img_size}, 10 classes) in {result.run_dir}: "
          f"val clean {last.get('val_clean_acc', float('nan')):.3f}, PGD-{args.attack_steps} {last.get('val_pgd_acc', float('nan')):.3f} "
          f"(eps 8/255)")


if __name__ == '__main__':
    main()
