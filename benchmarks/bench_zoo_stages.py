"""Throughput of each training stage of a zoo plan on this device: images/s, achieved TFLOP/s, AW-Net / static step ratio.

Each row is the zoo's own probe (`awnet_timm.zoo.budget.probe_stage`): the stage's model, teachers and recipe
built as `train()` builds them, untimed warm-up steps (the first under torch's FlopCounterMode: FLOPs per image
of the whole step, attack and teachers included), then timed synchronized steps. Images are random pixels and
teachers have random weights (neither changes the time). The ratio is the AW-Net student's step time over its
static baseline's (same recipe, teachers, attack and batch).

    python benchmarks/bench_zoo_stages.py --plan smoke                                   # CPU: the smoke plan's sizes
    python benchmarks/bench_zoo_stages.py --plan cifar10 --device cuda                   # the real plan on a GPU
    python benchmarks/bench_zoo_stages.py --plan cifar10 --device cpu --batch-size 32 --steps 2 \
        --stages student_awnet_r18 student_cifar_resnet18                              # full-size students, CPU
"""
import argparse
import json
from dataclasses import replace

import timm
import torch

import awnet_timm  # noqa: F401  registers the models
from awnet_timm.data import ImageTensors
from awnet_timm.utils import resolve_device
from awnet_timm.zoo import load_plan
from awnet_timm.zoo.budget import device_name, probe_stage, uses_autocast
from awnet_timm.zoo.plan import TrainStage
from awnet_timm.zoo.runner import stage_config


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--plan', default='cifar10', help='zoo plan name or .json file (default: %(default)s)')
    parser.add_argument('--device', default='auto')
    parser.add_argument('--batch-size', type=int, default=None, help="override the plan's batch size")
    parser.add_argument('--warmup', type=int, default=None, help="warm-up steps (default: the plan's probe)")
    parser.add_argument('--steps', type=int, default=None, help="timed steps (default: the plan's probe)")
    parser.add_argument('--stages', nargs='*', default=None, help='only these training stages (default: all)')
    parser.add_argument('--json', default='', help='also write the results to this file')
    args = parser.parse_args()
    plan = load_plan(args.plan)
    device = resolve_device(args.device)
    warmup, steps = args.warmup or plan.probe['warmup'], args.steps or plan.probe['steps']
    stages = [s for s in plan.stages if isinstance(s, TrainStage)]
    configs = {}
    for s in stages:
        teachers = {t: (configs[t].model, '') for t in s.teacher_refs()}
        cfg = stage_config(plan, s, data_dir='random pixels', output='unused', device=args.device, progress=False,
                           teachers=teachers)
        configs[s.name] = replace(cfg, batch_size=args.batch_size) if args.batch_size else cfg
    results = {}
    for s in stages:
        if args.stages and s.name not in args.stages:
            continue
        cfg = configs[s.name]
        torch.manual_seed(0)
        data = ImageTensors(torch.randint(0, 256, (cfg.batch_size, 3, 32, 32), dtype=torch.uint8),
                            torch.randint(0, 10, (cfg.batch_size,)), tuple(str(i) for i in range(10)))
        teachers = None
        if cfg.recipe == 'mtard':
            teachers = [timm.create_model(configs[t].model, num_classes=10, **configs[t].model_args()).to(device).eval()
                        .requires_grad_(False) for t in s.teacher_refs()]
            if cfg.channels_last:
                teachers = [t.to(memory_format=torch.channels_last) for t in teachers]
        probe = probe_stage(cfg, data, teachers, device, warmup=warmup, steps=steps)
        results[s.name] = dict(probe.to_dict(), model=cfg.model, recipe=cfg.recipe, attack_steps=cfg.attack_steps,
                               precision='bf16' if uses_autocast(cfg, device) else 'fp32')
    print(f'\n{device_name(device)}: plan {plan.name}, {warmup} warm-up + {steps} timed steps per stage')
    print(f"{'stage':24s} {'model':15s} {'recipe':9s} {'batch':>5s} {'prec':>5s} {'img/s':>9s} {'GFLOP/img':>10s} {'TFLOP/s':>8s}")
    for name, r in results.items():
        print(f"{name:24s} {r['model']:15s} {r['recipe']:9s} {r['batch_size']:5d} {r['precision']:>5s} "
              f"{r['images_per_second']:9.1f} {r['flops_per_image'] / 1e9:10.2f} {r['tflops']:8.3f}")
    students = [s.name for s in stages if s.name in results and s.epochs_group and configs[s.name].recipe == 'mtard']
    dynamic = [n for n in students if configs[n].model.startswith('awnet')]
    static = [n for n in students if not configs[n].model.startswith('awnet')]
    if dynamic and static:
        a, b = results[dynamic[0]], results[static[0]]
        ratio = b['images_per_second'] / a['images_per_second']
        print(f"AW-Net / static MTARD step: {ratio:.2f}x the time ({a['flops_per_image'] / b['flops_per_image']:.2f}x "
              f"the FLOPs per image)")
        results['awnet_static_step_ratio'] = ratio
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(results, f, indent=2)


if __name__ == '__main__':
    main()
