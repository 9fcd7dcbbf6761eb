"""Throughput of each training stage of a zoo plan on this device: images/s, achieved GFLOP/s, and (--sweep) the
speed settings (channels_last, torch.compile, batch size, threads) against the plan's own, in one process.

Each row is the zoo's own probe (`awnet_timm.zoo.budget.probe_stage`): the stage's model, teachers and recipe
built as `train()` builds them, untimed warm-up steps (the first under torch's FlopCounterMode: FLOPs per image
of the whole step, attack and teachers included), then timed synchronized steps. Images are random pixels and
teachers have random weights (neither changes the time). `--sweep` probes each stage again with one setting changed
at a time and prints its speed as a ratio to the plan's setting measured in the same process:
- `no_channels_last` / `compile` (inductor; its compile time is the `setup s` column) / `batch_64`, `batch_256`;
- `bf16`, `bf16_compile`: bf16 autocast (the trainer's `precision='bf16'`); on a CPU with AMX (Sapphire Rapids and
  later: `amx_bf16` in /proc/cpuinfo) oneDNN runs bf16 convs and matmuls on its tile units;
- `router_half`: (AW-Net stages) the router trunk at half the classifier's widths (the paper's AW-Net-L router is
  narrower than its classifier; its AW-Net router is as wide);
- `threads_1`: one thread (torch.set_num_threads(1));
- `2x1_thread`: two processes of one thread each, probed at the same moment, images/s summed: the throughput of
  running two stages side by side instead of one after the other with two threads.
On a CPU the peak is the fp32 matmul rate (2048 x 2048, the same threads) measured here first; `% peak` is the
stage's GFLOP/s over it. Run it alone: another busy process changes every number.

    python benchmarks/bench_zoo_stages.py --plan smoke                                   # CPU: the smoke plan's sizes
    python benchmarks/bench_zoo_stages.py --plan cifar10-cpu --sweep                     # the CPU campaign's settings
    python benchmarks/bench_zoo_stages.py --plan cifar10 --device cuda                   # the real plan on a GPU
    python benchmarks/bench_zoo_stages.py --plan cifar10 --device cpu --batch-size 32 --steps 2 \
        --stages student_awnet_r18 student_cifar_resnet18                              # full-size students, CPU
"""
import argparse
import json
import multiprocessing as mp
import time
from dataclasses import replace

import timm
import torch

import awnet_timm  # noqa: F401  registers the models
from awnet_timm.data import ImageTensors
from awnet_timm.utils import resolve_device
from awnet_timm.zoo import load_plan
from awnet_timm.zoo.budget import device_name, probe_stage
from awnet_timm.zoo.plan import TrainStage
from awnet_timm.zoo.runner import stage_config

VARIANTS = ('plan', 'no_channels_last', 'compile', 'bf16', 'bf16_compile', 'batch_64', 'batch_256', 'threads_1',
            '2x1_thread', 'router_half')


def matmul_gflops(device: torch.device, n: int = 2048, reps: int = 10) -> float:
    """The fp32 matmul rate of `device` with the current threads (GFLOP/s)."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    for _ in range(2):
        a @ b
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    return 2 * n ** 3 * reps / (time.perf_counter() - t0) / 1e9


def variant_config(cfg, variant: str):
    if variant == 'no_channels_last':
        return replace(cfg, channels_last=not cfg.channels_last)
    if variant == 'compile':
        return replace(cfg, compile=True)
    if variant == 'bf16':
        return replace(cfg, precision='bf16')
    if variant == 'bf16_compile':
        return replace(cfg, precision='bf16', compile=True)
    if variant == 'router_half':  # an AW-Net whose router trunk has half the classifier's widths
        kwargs = dict(cfg.model_kwargs)
        widths = kwargs.get('router_channels') or kwargs.get('channels') or [64, 128, 256, 512]
        return replace(cfg, model_kwargs=dict(kwargs, router_channels=[c // 2 for c in widths]))
    if variant.startswith('batch_'):
        return replace(cfg, batch_size=int(variant[len('batch_'):]))
    return cfg


def probe(configs, stage_name: str, teacher_refs, device, warmup: int, steps: int) -> dict:
    cfg = configs[stage_name]
    torch.manual_seed(0)
    data = ImageTensors(torch.randint(0, 256, (cfg.batch_size, 3, 32, 32), dtype=torch.uint8),
                        torch.randint(0, 10, (cfg.batch_size,)), tuple(str(i) for i in range(10)))
    teachers = None
    if cfg.recipe == 'mtard':
        teachers = [timm.create_model(configs[t].model, num_classes=10, **configs[t].model_args()).to(device).eval()
                    .requires_grad_(False) for t in teacher_refs]
        if cfg.channels_last:
            teachers = [t.to(memory_format=torch.channels_last) for t in teachers]
    p = probe_stage(cfg, data, teachers, device, warmup=warmup, steps=steps)
    return dict(p.to_dict(), model=cfg.model, recipe=cfg.recipe, attack_steps=cfg.attack_steps,
                precision='bf16' if cfg.autocast(device) else 'fp32')


def _worker(configs, stage_name, teacher_refs, warmup, steps, barrier, queue):
    """One of the `2x1_thread` processes: one thread, wait for the other, probe."""
    torch.set_num_threads(1)
    barrier.wait()
    queue.put(probe(configs, stage_name, teacher_refs, torch.device('cpu'), warmup, steps))


def probe_side_by_side(configs, stage_name, teacher_refs, warmup, steps, processes: int = 2) -> dict:
    ctx = mp.get_context('spawn')
    barrier, queue = ctx.Barrier(processes), ctx.Queue()
    workers = [ctx.Process(target=_worker, args=(configs, stage_name, teacher_refs, warmup, steps, barrier, queue))
               for _ in range(processes)]
    for w in workers:
        w.start()
    rows = [queue.get() for _ in workers]
    for w in workers:
        w.join()
    return dict(rows[0], images_per_second=sum(r['images_per_second'] for r in rows),
                tflops=sum(r['tflops'] for r in rows))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--plan', default='cifar10', help='zoo plan name or .json file (default: %(default)s)')
    parser.add_argument('--device', default='auto')
    parser.add_argument('--batch-size', type=int, default=None, help="override the plan's batch size")
    parser.add_argument('--warmup', type=int, default=None, help="warm-up steps (default: the plan's probe)")
    parser.add_argument('--steps', type=int, default=None, help="timed steps (default: the plan's probe)")
    parser.add_argument('--stages', nargs='*', default=None, help='only these training stages (default: all)')
    parser.add_argument('--sweep', action='store_true', help='also probe each speed setting against the plan\'s')
    parser.add_argument('--variants', nargs='*', default=None, choices=VARIANTS,
                        help='with --sweep: only these settings (default: all)')
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
    variants = ['plan']
    if args.sweep:
        variants = list(args.variants or VARIANTS)
        if device.type != 'cpu':
            variants = [v for v in variants if v not in ('threads_1', '2x1_thread')]
        if 'plan' not in variants:
            variants.insert(0, 'plan')
    threads = torch.get_num_threads()
    peak = matmul_gflops(device)
    print(f'{device_name(device)}: fp32 matmul 2048x2048 {peak:.0f} GFLOP/s', flush=True)
    results = {}
    for s in stages:
        if args.stages and s.name not in args.stages:
            continue
        for variant in variants:
            if variant == 'router_half' and not configs[s.name].model.startswith('awnet'):
                continue
            vconfigs = dict(configs, **{s.name: variant_config(configs[s.name], variant)})
            if variant == '2x1_thread':
                row = probe_side_by_side(vconfigs, s.name, s.teacher_refs(), warmup, steps)
            else:
                torch.set_num_threads(1 if variant == 'threads_1' else threads)
                try:  # a compiled step recompiles in its first calls (train/eval, attack): warm it up longer
                    row = probe(vconfigs, s.name, s.teacher_refs(), device,
                                warmup + 3 if 'compile' in variant else warmup, steps)
                finally:
                    torch.set_num_threads(threads)
                    torch._dynamo.reset()  # a compiled model's caches do not leak into the next row
            row['variant'] = variant
            row['gflops'] = row['tflops'] * 1e3
            row['peak_fraction'] = row['gflops'] / peak
            row['ratio'] = row['images_per_second'] / results[(s.name, 'plan')]['images_per_second'] \
                if variant != 'plan' else 1.0
            results[(s.name, variant)] = row
            print(f"  {s.name} {variant}: {row['images_per_second']:.1f} img/s ({row['ratio']:.2f}x)", flush=True)
    print(f'\n{device_name(device)}: plan {plan.name}, {warmup} warm-up + {steps} timed steps per row; '
          f'fp32 matmul peak {peak:.0f} GFLOP/s')
    print(f"{'stage':26s} {'setting':17s} {'model':15s} {'recipe':8s} {'batch':>5s} {'prec':>5s} {'img/s':>8s} "
          f"{'vs plan':>7s} {'GFLOP/img':>9s} {'GFLOP/s':>8s} {'% peak':>6s} {'setup s':>7s}")
    for (name, variant), r in results.items():
        print(f"{name:26s} {variant:17s} {r['model']:15s} {r['recipe']:8s} {r['batch_size']:5d} {r['precision']:>5s} "
              f"{r['images_per_second']:8.1f} {r['ratio']:6.2f}x {r['flops_per_image'] / 1e9:9.2f} "
              f"{r['gflops']:8.1f} {100 * r['peak_fraction']:5.0f}% {r['setup_seconds']:7.1f}")
    plan_rows = {name: r for (name, v), r in results.items() if v == 'plan'}
    students = [s.name for s in stages if s.name in plan_rows and s.epochs_group and configs[s.name].recipe == 'mtard']
    dynamic = [n for n in students if configs[n].model.startswith('awnet')]
    static = [n for n in students if not configs[n].model.startswith('awnet')]
    out = {'device': device_name(device), 'matmul_gflops': peak,
           'rows': [dict(r, stage=name) for (name, _), r in results.items()]}
    if dynamic and static:
        a, b = plan_rows[dynamic[0]], plan_rows[static[0]]
        ratio = b['images_per_second'] / a['images_per_second']
        print(f"AW-Net / static MTARD step: {ratio:.2f}x the time ({a['flops_per_image'] / b['flops_per_image']:.2f}x "
              f"the FLOPs per image)")
        out['awnet_static_step_ratio'] = ratio
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(out, f, indent=2)


if __name__ == '__main__':
    main()
