"""Parameter counts of every registered model and of AW-Net's ablations, next to the paper's.

The paper's counts (AW-Net 26.3M, AW-Net-L 38.8M, ResNet-18 10.7M, ResNet-34 20.3M) are in units
of 2^20, so both units are printed. The teachers' papers count in 10^6 (WRN-34-10 46.16M as reported
for TRADES, WRN-28-10 36.5M; ResNet-56 0.85M with parameter-free shortcuts, where ours project).
Prints a Markdown table.

    python benchmarks/param_counts.py
"""
import timm
import torch

import awnet_timm  # noqa: F401

PAPER = {'awnet_r18': '26.3', 'awnet_r34': '38.8', 'cifar_resnet18': '10.7', 'cifar_resnet34': '20.3'}
PAPER_SI = {'cifar_wrn34_10': '46.16', 'cifar_wrn28_10': '36.5', 'cifar_resnet56': '0.85'}
ROWS = [
    ('awnet_r18', {}, 'AW-Net'),
    ('awnet_r34', {}, 'AW-Net-L'),
    ('cifar_resnet18', {}, 'static ResNet-18 baseline'),
    ('cifar_resnet34', {}, 'static ResNet-34 baseline'),
    ('cifar_wrn34_10', {}, 'MTARD robust teacher (WRN-34-10)'),
    ('cifar_wrn28_10', {}, 'WRN-28-10'),
    ('cifar_resnet56', {}, 'MTARD clean teacher (ResNet-56, projection shortcuts)'),
    ('awnet_r18', dict(mix_bn=False, type_head=False), 'ablation (1): dynamic weight only'),
    ('awnet_r18', dict(type_head=False), 'ablation (2): + MixBN, Adv BN at test'),
    ('awnet_r18', dict(modulate=False), 'MixBN + type head, no modulation'),
    ('awnet_r18', dict(router_feature='last'), 'router psi from the last stage only'),
    ('awnet_r18', dict(modulate_stem_shortcut=True), 'stem and shortcut convs modulated too'),
]


def main():
    print('| model | options | what | params (M, 10^6) | params (M, 2^20) | paper (M, 2^20) | paper (M, 10^6) |')
    print('|---|---|---|---:|---:|---:|---:|')
    for name, kwargs, what in ROWS:
        with torch.device('meta'):
            n = sum(p.numel() for p in timm.create_model(name, **kwargs).parameters())
        opts = ', '.join(f'{k}={v!r}' for k, v in kwargs.items()) or '-'
        paper = PAPER.get(name, '-') if not kwargs else '-'
        paper_si = PAPER_SI.get(name, '-') if not kwargs else '-'
        print(f'| `{name}` | {opts} | {what} | {n / 1e6:.2f} | {n / 2 ** 20:.2f} | {paper} | {paper_si} |')


if __name__ == '__main__':
    main()
