"""MTARD for AW-Net with the training attack in route 'adv' (forced Adv BN) or 'auto' (through the router), side by side.

With `attack_route='adv'` the training attack never goes through the router, so the router learns to flag the
examples of an attack that ignores it; an evaluation attack that goes through the router can look for inputs the
router calls clean (then the Clean BN, the non-robust branch, classifies them). With 'auto' the training attack can
do the same, and the type loss labels what it finds adversarial. This continues one AW-Net (e.g. the CPU campaign's
student) by MTARD on the first `--train-images` images of the offline CIFAR-10 copy, once per route, same seed,
data, teachers and schedule, then evaluates each result with `awnet eval` (fp32) on the first `--n` exact test
images: clean, PGD-20 (pgd_sat) and the router attacks, the mean P(clean) the router gives their examples, and the
per-sample worst case. The result, and the default it chose, are in docs/design.md ("The training attack's route").

    python benchmarks/bench_attack_route.py output/campaign/zoo/runs/student_awnet_r18_025 \
        --teacher-nat output/campaign/zoo/runs/teacher_clean --teacher-adv output/campaign/zoo/runs/teacher_robust
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import torch

import awnet_timm  # registers the models
import awnet_timm.utils
from awnet_timm.training import TrainConfig, load_run_config, train

ROUTES = ('adv', 'auto', 'mixed')
ATTACKS = ('pgd_sat', 'forced_clean', 'router_detach', 'two_phase')


def run(route: str, args, student, out: str):
    teacher_nat, teacher_adv = load_run_config(args.teacher_nat), load_run_config(args.teacher_adv)
    cfg = TrainConfig(
        model=student.model, model_kwargs=student.model_kwargs, pretrained=args.student, recipe='mtard',
        kl_reduction=student.kl_reduction, attack='pgd', attack_steps=args.attack_steps, attack_route=route,
        attack_step=args.attack_step or 2.5 * student.eps / args.attack_steps, attack_start=args.attack_start,
        teacher_nat=teacher_nat.model,
        teacher_nat_checkpoint=args.teacher_nat, teacher_adv=teacher_adv.model, teacher_adv_checkpoint=args.teacher_adv,
        dataset='cifar10-offline', data_dir=args.data_dir, train_size=args.train_images + args.val_size,
        val_split='holdout', val_size=args.val_size, epochs=args.epochs, batch_size=student.batch_size, lr=args.lr,
        router_lr=args.lr / 10, weight_decay=student.weight_decay, sched='cosine', precision=args.precision,
        channels_last=True, device='cpu', seed=args.seed, output=out, run_name=f'route_{route}', progress=False,
        log_interval=10 ** 6)
    t = time.time()
    result = train(cfg)
    train_seconds = time.time() - t
    record = os.path.join(out, f'eval_{route}.json')
    t = time.time()
    subprocess.run([sys.executable, '-m', 'awnet_timm.cli', 'eval', '--model', cfg.model, '--checkpoint', result.run_dir,
                    '--model-kwargs', json.dumps(cfg.model_kwargs), '--data-dir', args.data_dir, '--n', str(args.n),
                    '--attacks', *ATTACKS, '--device', 'cpu', '--no-progress', '--no-sanity', '--out', record], check=True,
                   stdout=subprocess.DEVNULL)
    with open(os.path.join(result.run_dir, 'log.jsonl')) as f:
        log = [json.loads(line) for line in f]
    with open(record) as f:
        return {'train_seconds': train_seconds, 'eval_seconds': time.time() - t, 'epochs': log, 'eval': json.load(f)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('student', help='run directory of the AW-Net to continue (its best weights and settings)')
    parser.add_argument('--teacher-nat', required=True, help='run directory of the clean teacher')
    parser.add_argument('--teacher-adv', required=True, help='run directory of the robust teacher')
    parser.add_argument('--data-dir', default=os.path.join(os.path.dirname(__file__), '..', '..', 'shared', 'data', 'cifar10'))
    parser.add_argument('--train-images', type=int, default=10000)
    parser.add_argument('--val-size', type=int, default=500)
    parser.add_argument('--epochs', type=int, default=1)
    parser.add_argument('--attack-steps', type=int, default=2, help='PGD steps of the training attack (step 2.5 eps / k)')
    parser.add_argument('--attack-step', type=awnet_timm.utils.number_arg, default=0.,
                        help='step of the training attack (default: 2.5 eps / k), e.g. 4/255')
    parser.add_argument('--attack-start', default='', choices=('', 'uniform', 'normal', 'none'),
                        help="the training attack's start (default: the recipe's, 'normal' for mtard)")
    parser.add_argument('--lr', type=float, default=0.05)
    parser.add_argument('--precision', default='fast')
    parser.add_argument('--n', type=int, default=200, help='first N exact test images evaluated (default: %(default)s)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--routes', nargs='+', default=list(ROUTES), choices=ROUTES)
    parser.add_argument('--json', default='', help='also write the results here')
    args = parser.parse_args()
    student = load_run_config(args.student)
    args.student = os.path.join(args.student, 'best.safetensors') if os.path.isdir(args.student) else args.student
    print(f'torch threads: {torch.get_num_threads()}; {student.model} {student.model_kwargs} from {args.student}; '
          f'{args.train_images} train / {args.val_size} holdout images, {args.epochs} epoch(s), PGD-{args.attack_steps}, '
          f'cosine lr {args.lr}; evaluation on the first {args.n} exact test images', flush=True)
    results = {}
    with tempfile.TemporaryDirectory() as out:
        for route in args.routes:
            results[route] = run(route, args, student, out)
            print(f"route {route}: trained {results[route]['train_seconds']:.0f} s, evaluated "
                  f"{results[route]['eval_seconds']:.0f} s", flush=True)
    print('\n| training attack route | holdout clean | holdout PGD-10 | clean | ' +
          ' | '.join(f'{a} (P(clean))' for a in ATTACKS) + ' | worst case |')
    print('|---|---:|---:|---:|' + '---:|' * len(ATTACKS) + '---:|')
    for route, r in results.items():
        last, ev = r['epochs'][-1], r['eval']
        rows = {a['name']: a for a in ev['attacks']}
        cells = [f"{100 * rows[a]['robust_acc']:.1f} ({rows[a]['router']['p_clean_adv_mean']:.2f})" for a in ATTACKS]
        print(f"| {route} | {100 * last['val_clean_acc']:.1f} | {100 * last['val_pgd_acc']:.1f} | "
              f"{100 * ev['clean_acc']:.1f} | " + ' | '.join(cells) + f" | {100 * ev['worst_case']['robust_acc']:.1f} |")
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(results, f, indent=1)


if __name__ == '__main__':
    main()
