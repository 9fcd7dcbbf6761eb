"""Training throughput: one MTARD step of AW-Net against one PGD-AT step of the static ResNet-18.

Every row runs the project's own recipe code (`create_recipe` + `TrainForward`: attack, forward,
loss, backward, SGD step, MTARD weight update) on random data, interleaved in one process so all see
the same machine state; the attack is the same in every row (PGD, `--attack-steps`, step 2/255).
- pgd_at cifar_resnet18: the baseline (the paper's static network, trained adversarially);
- mtard cifar_resnet18: MTARD alone (adds the two teachers' forwards and the clean student pass);
- mtard awnet_r18: AW-Net's recipe (adds the router and the dynamic convs).
Teachers are the paper's architectures (clean cifar_resnet56, robust cifar_wrn34_10) with random
weights: their values do not change the time.

    python benchmarks/bench_training.py                              # CPU (batch 32), and CUDA when present
    python benchmarks/bench_training.py --device cuda --batch-size 256 --precision bf16 --channels-last
"""
import argparse
import json
from typing import Callable, Dict

import timm
import torch

import awnet_timm  # noqa: F401  registers the models
from awnet_timm.timing import median_times
from awnet_timm.training import TrainConfig, fixed_batch_step

ROWS = (('pgd_at', 'cifar_resnet18'), ('mtard', 'cifar_resnet18'), ('mtard', 'awnet_r18'))


def _step(recipe_name: str, model_name: str, args, device: torch.device) -> Callable[[], None]:
    cfg = TrainConfig(recipe=recipe_name, model=model_name, teacher_nat='cifar_resnet56', teacher_adv='cifar_wrn34_10',
                      attack_steps=args.attack_steps, compile=args.compile)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    model = timm.create_model(model_name, device=device).to(memory_format=memory_format)
    teachers = None
    if recipe_name == 'mtard':
        teachers = [timm.create_model(name, device=device).to(memory_format=memory_format).eval().requires_grad_(False)
                    for name in (cfg.teacher_nat, cfg.teacher_adv)]
    x = torch.rand(args.batch_size, 3, 32, 32, device=device).contiguous(memory_format=memory_format)
    y = torch.randint(0, 10, (args.batch_size,), device=device)
    return fixed_batch_step(cfg, model, teachers, x, y, autocast=args.precision == 'bf16')


def run(args, device: torch.device) -> Dict[str, float]:
    torch.manual_seed(0)
    steps = {f'{r} {m}': _step(r, m, args, device) for r, m in ROWS}
    times = median_times(steps, device, repeats=args.repeats, warmup=args.warmup)
    base = times[f'{ROWS[0][0]} {ROWS[0][1]}']
    print(f'\n{device.type}: batch {args.batch_size}, PGD-{args.attack_steps}, {args.precision}'
          f'{", channels_last" if args.channels_last else ""}{", compiled" if args.compile else ""}, '
          f'median of {args.repeats} steps')
    result = {}
    for name, t in times.items():
        print(f'  {name:24s} {t * 1000:9.1f} ms/step  {args.batch_size / t:8.1f} img/s  {t / base:5.2f}x the baseline step')
        result[name] = {'seconds_per_step': t, 'images_per_second': args.batch_size / t, 'ratio': t / base}
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--device', default=None, help='cpu or cuda (default: cpu, and cuda when present)')
    parser.add_argument('--batch-size', type=int, default=None, help='default 32 on CPU, 256 on CUDA (the paper)')
    parser.add_argument('--attack-steps', type=int, default=10)
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--warmup', type=int, default=1)
    parser.add_argument('--precision', default='fp32', choices=('fp32', 'bf16'))
    parser.add_argument('--channels-last', action='store_true')
    parser.add_argument('--compile', action='store_true')
    parser.add_argument('--json', default='', help='also write the results to this file')
    args = parser.parse_args()
    devices = [args.device] if args.device else ['cpu'] + (['cuda'] if torch.cuda.is_available() else [])
    results = {}
    for name in devices:
        device = torch.device(name)
        batch = args.batch_size
        args.batch_size = batch or (256 if device.type == 'cuda' else 32)
        results[name] = run(args, device)
        args.batch_size = batch
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(results, f, indent=2)


if __name__ == '__main__':
    main()
