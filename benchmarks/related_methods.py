""" PGD-AT vs ARAT vs PGD-AT + HPM head on scikit-learn's digits: a small, honest CPU comparison

    python3 benchmarks/related_methods.py     # a few minutes on an idle 2-core CPU (25 on a shared, loaded one)

What it does (every run the same budget: epochs, batch, lr schedule, PGD steps, data, seed):
1. `pgd_at`: a small static CIFAR ResNet (PGD-AT, Madry et al.).
2. `arat`: the same network with split BN (`mix_bn=True, type_head=False`), ARAT recipe; exported as the
   static network ARAT deploys (Adv BN only) and evaluated in that form.
3. `pgd_at+fc` and `pgd_at+hpm`: run 1 fine-tuned for --finetune-epochs more with PGD-AT, keeping the FC
   head (the control: the same extra budget) or with the HPM head (`awnet finetune --head hpm`).
Each model is scored on the val digits: clean accuracy and the per-sample worst case over FGSM, PGD-20,
CW-30, Square (--square-queries) and, for HPM, PGD-20 transfer from each differentiable surrogate and MSA over
them. MSA here runs PGD-20 on each surrogate instead of AutoAttack (`awnet eval` runs AutoAttack) to
stay within CPU minutes. Digits at 16x16 are not CIFAR-10: the numbers compare the methods on this
toy task only and say nothing about the papers' results.
"""
import argparse
import json
import os

import timm
import torch

import awnet_timm  # noqa: F401  registers the models
from awnet_timm.attacks import LinfPGD, MixedSurrogateAttack, has_hpm_head, hpm_surrogates
from awnet_timm.data import load_dataset, write_digits_imagefolder
from awnet_timm.eval import AttackSpec, build_suite, evaluate_robustness
from awnet_timm.hub.export import export_checkpoint
from awnet_timm.training import TrainConfig, create_model_with_weights, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _attacks(model, eps: float, square_queries: int):
    specs = build_suite(model, ['fgsm', 'pgd_sat', 'cw_inf', 'square'], eps=eps, square_queries=square_queries,
                        batch_size=1000)
    if has_hpm_head(model):
        surrogates = hpm_surrogates(model)
        step = 2 / 255 * eps / (8 / 255)
        for name, s in surrogates.items():
            specs.append(AttackSpec(f'transfer_{name}', 'transfer', dict(attack='LinfPGD', surrogate=name, steps=20),
                                    lambda m, s=s: LinfPGD(s, eps, step, 20)))
        specs.append(AttackSpec('msa_pgd', 'transfer', dict(attack='MixedSurrogate(LinfPGD-20)', surrogates=list(surrogates)),
                                lambda m: MixedSurrogateAttack(m, [LinfPGD(s, eps, step, 20) for s in surrogates.values()])))
    return specs


def _train_seconds(run_dir: str) -> float:
    """Training time of a run: the sum of its epochs' seconds (training and per-epoch validation)."""
    with open(os.path.join(run_dir, 'log.jsonl')) as f:
        return sum(json.loads(line)['epoch_seconds'] for line in f if line.strip())


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out', default=os.path.join(REPO, 'output', 'related_methods'))
    parser.add_argument('--epochs', type=int, default=10)
    parser.add_argument('--finetune-epochs', type=int, default=2)
    parser.add_argument('--attack-steps', type=int, default=5, help='PGD steps in training')
    parser.add_argument('--n', type=int, default=359, help='val images to evaluate (359: all)')
    parser.add_argument('--square-queries', type=int, default=200)
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))

    digits = os.path.join(args.out, 'digits')
    if not os.path.isdir(os.path.join(digits, 'val')):
        write_digits_imagefolder(digits, img_size=16)
    net = dict(layers=[1, 1, 1, 1], channels=[16, 32, 64, 128])  # lists, as config.json stores them (resume 'auto')
    common = dict(model='cifar_resnet18', dataset='imagefolder', data_dir=digits, val_split='val', val_size=args.n,
                  batch_size=64, lr=0.05, attack_steps=args.attack_steps, val_attack_steps=args.attack_steps,
                  seed=args.seed, output=args.out, progress=False, log_interval=1000)
    milestones = (max(1, round(0.75 * args.epochs)),)
    runs = {}
    plan = [
        ('pgd_at', dict(recipe='pgd_at', model_kwargs=net, epochs=args.epochs, decay_milestones=milestones)),
        ('arat', dict(recipe='arat', model_kwargs=dict(net, mix_bn=True, type_head=False), epochs=args.epochs,
                      decay_milestones=milestones)),
    ]
    for name, cfg in plan:
        runs[name] = train(TrainConfig(run_name=name, resume='auto', **dict(common, **cfg))).run_dir
    tune = dict(recipe='pgd_at', pretrained=runs['pgd_at'], epochs=args.finetune_epochs, lr=0.01,
                decay_milestones=(args.finetune_epochs + 1,))
    for name, head in (('pgd_at+fc', 'fc'), ('pgd_at+hpm', 'hpm')):
        runs[name] = train(TrainConfig(run_name=name, resume='auto', head=head, **dict(common, **tune))).run_dir
    seconds = {name: _train_seconds(run) for name, run in runs.items()}  # from the logs: right after a resume too
    seconds.update({name: seconds['pgd_at'] + seconds[name] for name in ('pgd_at+fc', 'pgd_at+hpm')})

    val = load_dataset('imagefolder', digits, 'val', limit=args.n)
    x, y = val.images.float() / 255, val.labels
    rows = []
    for name, run in runs.items():
        if name == 'arat':  # evaluate what ARAT deploys: the exported static network (one BN per site)
            folder = export_checkpoint(run, os.path.join(args.out, 'arat-export'), tag='arat_digits', weights='last',
                                       overwrite=True).folder
            model = timm.create_model(f'local-dir:{folder}', pretrained=True)
        else:
            model = create_model_with_weights('cifar_resnet18', os.path.join(run, 'last.safetensors'))
        result = evaluate_robustness(model.eval(), x, y, _attacks(model, 8 / 255, args.square_queries), sanity=False,
                                     progress=False, seed=args.seed)
        per_attack = {a['name']: a['robust_acc'] for a in result['attacks']}
        rows.append(dict(method=name, clean=result['clean_acc'], worst_case=result['worst_case']['robust_acc'],
                         train_seconds=round(seconds[name], 1), attacks=per_attack))
        print(json.dumps(rows[-1]))
    print(f'\ndigits 16x16, {len(y)} val images, L-inf eps 8/255, {args.epochs} epochs (+{args.finetune_epochs} fine-tune), '
          f'PGD-{args.attack_steps} in training\n')
    print('| method | clean acc (%) | worst-case robust acc (%) | train time (s, CPU) |\n|---|---:|---:|---:|')
    for r in rows:
        print(f"| {r['method']} | {100 * r['clean']:.1f} | {100 * r['worst_case']:.1f} | {r['train_seconds']} |")
    with open(os.path.join(args.out, 'results.json'), 'w') as f:
        json.dump(rows, f, indent=2)


if __name__ == '__main__':
    main()
