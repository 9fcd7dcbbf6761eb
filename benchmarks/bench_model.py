"""Time AW-Net against the static CIFAR ResNet-18 in one process and print the ratios.

Two measurements per model, interleaved so both see the same machine state:
- eval forward: `model(x)` under inference_mode, auto route;
- training step: forward (route 'adv' for AW-Net, as a training recipe states the batch's type),
  cross-entropy, backward and an SGD step.
The router is itself a ResNet-18, so 2.0x is the floor of both ratios.

    python benchmarks/bench_model.py                      # CPU, and CUDA when present
    python benchmarks/bench_model.py --device cuda --batch-size 256 --amp --channels-last
"""
import argparse
import json
from typing import Callable, Dict

import timm
import torch
import torch.nn.functional as F

from awnet_timm import AWNet, use_route
from awnet_timm.timing import median_times


def _workloads(name: str, args, device: torch.device) -> Dict[str, Callable[[], None]]:
    model = timm.create_model(name, device=device)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    run = torch.compile(model) if args.compile else model
    x = torch.rand(args.batch_size, 3, 32, 32, device=device).to(memory_format=memory_format)
    y = torch.randint(0, 10, (args.batch_size,), device=device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp)
    train_route = 'adv' if isinstance(model, AWNet) and model.router is not None else 'auto'

    def forward():
        model.eval()
        with torch.inference_mode(), amp:
            run(x)

    def train_step():
        model.train()
        with use_route(model, train_route), amp:
            loss = F.cross_entropy(run(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return {'eval_forward': forward, 'train_step': train_step}


def _profile(models, device: torch.device, repeats: int = 3) -> Dict[str, Dict[str, float]]:
    """Self time per eval forward, split into convolutions and everything else, per model."""
    from torch.profiler import ProfilerActivity, profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == 'cuda' else [])
    out = {}
    for key, workload in models.items():
        with profile(activities=activities) as prof:
            for _ in range(repeats):
                workload['eval_forward']()
        attr = 'self_device_time_total' if device.type == 'cuda' else 'self_cpu_time_total'
        events = prof.key_averages()
        total = sum(getattr(e, attr) for e in events) / repeats / 1e3
        conv = sum(getattr(e, attr) for e in events if 'conv' in e.key) / repeats / 1e3
        out[key] = {'total_ms': total, 'conv_ms': conv, 'other_ms': total - conv}
        print(f'  profile {key:8s}: {total:8.2f} ms per eval forward, convolutions {conv:8.2f} ms '
              f'({100 * conv / total:.0f}%), everything else {total - conv:7.2f} ms')
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--model', default='awnet_r18', help='AW-Net variant to time')
    parser.add_argument('--baseline', default='cifar_resnet18', help='static model it is compared with')
    parser.add_argument('--device', action='append', help='cpu and/or cuda (default: cpu, plus cuda when present)')
    parser.add_argument('--batch-size', type=int, default=32)
    parser.add_argument('--repeats', type=int, default=10)
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--threads', type=int, default=None, help='torch CPU threads (default: torch default)')
    parser.add_argument('--amp', action='store_true', help='bf16 autocast')
    parser.add_argument('--channels-last', action='store_true')
    parser.add_argument('--compile', action='store_true', help='torch.compile both models')
    parser.add_argument('--profile', action='store_true',
                        help='also profile one eval forward of each model: share of time in convolutions')
    parser.add_argument('--json', default=None, help='also write the results to this JSON file')
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = args.device or (['cpu', 'cuda'] if torch.cuda.is_available() else ['cpu'])
    torch.manual_seed(0)
    report = {'config': vars(args), 'torch': torch.__version__, 'threads': torch.get_num_threads(), 'results': {}}
    for name in devices:
        device = torch.device(name)
        models = {'baseline': _workloads(args.baseline, args, device), 'awnet': _workloads(args.model, args, device)}
        label = torch.cuda.get_device_name(device) if device.type == 'cuda' else f'cpu x{torch.get_num_threads()} threads'
        print(f'{args.model} vs {args.baseline} on {label}, batch {args.batch_size}, 32x32'
              f'{", bf16" if args.amp else ""}{", channels_last" if args.channels_last else ""}'
              f'{", compiled" if args.compile else ""}:')
        report['results'][name] = {}
        for task in ('eval_forward', 'train_step'):
            t = median_times({k: w[task] for k, w in models.items()}, device, args.repeats, args.warmup)
            r = dict(baseline_ms=t['baseline'] * 1e3, awnet_ms=t['awnet'] * 1e3, ratio=t['awnet'] / t['baseline'])
            report['results'][name][task] = r
            print(f'  {task:13s} baseline {r["baseline_ms"]:8.2f} ms   awnet {r["awnet_ms"]:8.2f} ms   ratio {r["ratio"]:.2f}x')
        if args.profile:
            report['results'][name]['profile'] = _profile(models, device)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(report, f, indent=2)


if __name__ == '__main__':
    main()
