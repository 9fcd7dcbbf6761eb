""" `awnet zoo run|report|pack|unpack`: the zoo's subcommands (the logic lives in runner.py, report.py and pack.py) """
import argparse
import os
import shlex
import sys

from ..utils import number_arg
from .plan import list_plans

__all__ = ['add_zoo_parser']

_HELP = 'Budgeted runs from data to evaluated, exported checkpoints (run), and their trip back (pack, unpack).'
_RUN_EPILOG = """\
  awnet zoo run --plan smoke --data-dir ../shared/data/cifar10 --out output/zoo-smoke       # CPU, a few minutes
  awnet zoo run --plan cifar10 --budget-minutes 8 --data-dir .data/cifar10 --out output/zoo  # one GPU window
  awnet zoo run --plan smoke --include student_arat --data-dir ../shared/data/cifar10 --out output/zoo-arat
  awnet zoo run --plan my-campaign.json --resume --budget-minutes 120 --no-progress --data-dir ../shared/data/cifar10 \
      --out output/campaign/zoo    # one slice of a campaign plan ("campaign": true); run it again to continue
Stages, their shares of the budget and their settings are in the plan (awnet_timm/zoo/plans/<name>.json).
"""


def _resume_command(args) -> str:
    """The command that continues this run (what Ctrl-C prints)."""
    words = ['awnet', 'zoo', 'run', '--plan', args.plan, '--resume', '--data-dir', args.data_dir, '--out', args.out]
    if args.budget_minutes is not None:
        words += ['--budget-minutes', f'{args.budget_minutes:g}']
    words += [w for name in args.include for w in ('--include', name)]
    words += ['--dataset', args.dataset] if args.dataset else []
    words += ['--device', args.device] if args.device != 'auto' else []
    words += [] if args.progress else ['--no-progress']
    words += ['--warm-start', args.warm_start] if args.warm_start else []
    return ' '.join(shlex.quote(w) for w in words)


def run_zoo_command(args) -> int:
    from .plan import load_plan
    from .runner import run_zoo
    plan = load_plan(args.plan, dataset=args.dataset, include=args.include)
    budget = plan.budget_minutes if args.budget_minutes is None else args.budget_minutes
    try:
        result = run_zoo(plan, budget, args.data_dir, args.out, device=args.device, resume=args.resume,
                         progress=args.progress, redo=args.redo, warm_start=args.warm_start)
    except KeyboardInterrupt:
        print(f'\nawnet zoo run: interrupted; the finished epochs are kept: continue with `{_resume_command(args)}`',
              file=sys.stderr)
        return 130
    if result.failed:
        print(f"awnet zoo run: stages failed: {', '.join(result.failed)} (see {result.out}/manifest.json)")
        return 1
    return 0


def pack_command(args) -> int:
    from .pack import pack_run
    result = pack_run(args.dir, args.out, max_file_mb=args.max_file_mb, max_total_mb=args.max_total_mb,
                      max_files=args.max_files, rest=args.rest)
    m = result.manifest
    print(f"awnet zoo pack: {len(m['files'])} files, {m['total_bytes'] / 2**20:.1f} MiB in {len(m['parts'])} parts, "
          f"{m['trips']} trip(s)")
    for f in m['files']:
        parts = [p for p in m['parts'] if p['offset'] < f['offset'] + f['size'] and f['offset'] < p['offset'] + p['size']]
        trips = sorted({p['trip'] for p in parts})
        print(f"  trip {','.join(map(str, trips)):5s} {f['size'] / 2**20:8.2f} MiB  {f['priority']:17s} {f['path']}")
    for k, folder in enumerate(result.trips, 1):
        print(f'  trip {k}: {folder}')
    if result.left_behind:
        print(f'awnet zoo pack: did not fit trip 1 ({args.out}): {len(result.left_behind)} file(s), in {", ".join(result.trips[1:])}')
    else:
        print('awnet zoo pack: everything fits trip 1')
    return 0


def report_command(args) -> int:
    from .plan import ZooError
    from ..utils import check_output_path
    from .report import curve_table, load_manifest, missing_data, plot_curves, provenance, slice_table, stage_curves
    m = load_manifest(args.dir)
    if args.provenance:  # the card section of one training stage, for release scripts
        if (m['stages'].get(args.provenance) or {}).get('kind') != 'train' or 'settings' not in m['stages'][args.provenance]:
            raise ZooError(f"'{args.provenance}' is not a training stage with a run in {args.dir}: "
                           f"{', '.join(n for n, s in m['stages'].items() if s.get('kind') == 'train')}")
        print(provenance(m, args.provenance), end='')
        return 0
    training = [n for n, s in m['stages'].items() if s.get('kind') == 'train']
    unknown = [n for n in args.stages or [] if n not in training]
    if unknown:
        raise ZooError(f"--stages: {', '.join(unknown)} {'is' if len(unknown) == 1 else 'are'} not a training stage "
                       f"of {args.dir}: {', '.join(training) or 'it has none'}")
    plot = args.plot or os.path.join(args.dir, 'curves.png')
    check_output_path(plot)  # before the report is printed: an unwritable plot must not come after it
    curves = stage_curves(args.dir, m)
    slices = m.get('slices')
    print(f"zoo folder {args.dir}: plan {m.get('plan_name')}, "
          f"{len(slices) if isinstance(slices, list) else 'no record of its'} slice(s)\n")
    print(slice_table(m) + '\n')
    print(curve_table(curves))
    if m.get('warm_start'):
        starts = ', '.join(f"{n}: {r['start']}" for n, r in m['warm_start']['stages'].items())
        print(f"\nwarm start from {m['warm_start']['from']} at {m['warm_start']['at']}: {starts}")
    for r in m.get('restored') or []:
        print(f"restored on a fresh machine at {r['at']} from the state saved at {r.get('saved')} (commit {r['commit'][:12]}, "
              f"scripts/campaign_state.py)")
    missing = missing_data(args.dir, m, curves)
    if missing:
        print('\nmissing from this report:\n' + '\n'.join(f'- {line}' for line in missing))
    plot_curves(curves, m, plot, args.stages or None)
    print(f'\nplot: {plot}')
    return 0


def unpack_command(args) -> int:
    from .pack import unpack_parts
    result = unpack_parts(args.parts, args.out)
    print(f'awnet zoo unpack: wrote {len(result.written)} file(s) to {args.out}, each sha256-verified')
    for path in result.missing:
        print(f'  missing (its parts have not arrived): {path}')
    return 0


def add_zoo_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser('zoo', help=_HELP, description=_HELP)
    zoo = p.add_subparsers(dest='zoo_command', required=True)
    r = zoo.add_parser('run', help='Run a plan within a time budget.', epilog=_RUN_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument('--plan', default='smoke', help=f"plan name ({', '.join(list_plans())}) or a .json plan file (default: %(default)s)")
    r.add_argument('--budget-minutes', type=number_arg, default=None,
                   help="wall-clock budget of this run (slice), minutes > 0 (default: the plan's budget_minutes)")
    r.add_argument('--data-dir', required=True, help='dataset root (e.g. ../shared/data/cifar10)')
    r.add_argument('--include', action='append', default=[], metavar='STAGE',
                   help="also run this optional stage of the plan (repeatable); the shipped plans have student_arat, "
                        "an ARAT student (static cifar_resnet18, split BN in training) trained for the students' epochs")
    r.add_argument('--dataset', default=None, help="override the plan's dataset (e.g. imagefolder with a digits folder)")
    r.add_argument('--out', required=True, help='folder of the run: manifest.json, runs/, eval/, releases/')
    r.add_argument('--device', default='auto', help="'auto', 'cpu' or 'cuda' (default: %(default)s)")
    r.add_argument('--resume', action='store_true',
                   help='continue the run in --out (another slice): finished stages are kept, stopped ones continue '
                        'from their last checkpoint')
    r.add_argument('--redo', action='append', default=[], metavar='STAGE',
                   help='with --resume: do this stage again from scratch (repeatable; a training stage\'s run is kept '
                        'aside and the stages trained from it are redone too; evaluate: every model again)')
    r.add_argument('--warm-start', default=None, metavar='RELEASES',
                   help="a campaign whose --out folder is gone starts from the released weights in this folder (e.g. "
                        "hub/releases, after `python scripts/release_weights.py restore`), recorded in the manifest: a "
                        "stage whose `release` is there and that others use as a teacher is taken as done, any other "
                        "released stage trains its planned epochs again from the released weights, the rest from "
                        "scratch. With the folder still there the run continues from it exactly and this is unused")
    r.add_argument('--progress', action=argparse.BooleanOptionalAction, default=True, help='progress bars (default: on)')
    r.set_defaults(func=run_zoo_command)
    c = zoo.add_parser('report', help="A zoo folder's slices and its holdout curves (tables and a plot).")
    c.add_argument('dir', help='the --out folder of `awnet zoo run`')
    c.add_argument('--plot', default='', help='the plot file (default: DIR/curves.png)')
    c.add_argument('--stages', nargs='*', default=None, help='plot only these training stages (default: all)')
    c.add_argument('--provenance', default='', metavar='STAGE',
                   help="print only the model-card section on how the zoo trained STAGE (what its exports' cards end with)")
    c.set_defaults(func=report_command)
    k = zoo.add_parser('pack', help='Split a zoo folder\'s results into parts for the trip back, in priority order.')
    k.add_argument('dir', help='the --out folder of `awnet zoo run`')
    k.add_argument('out', help='folder for the first trip\'s parts')
    k.add_argument('--max-file-mb', type=number_arg, default=15, help='largest part, MiB (default: %(default)s)')
    k.add_argument('--max-total-mb', type=number_arg, default=60, help='largest trip, MiB (default: %(default)s)')
    k.add_argument('--max-files', type=int, default=8, help='most files per trip, part manifest included (default: %(default)s)')
    k.add_argument('--rest', default=None, help='folder for the later trips (default: DIR/pack-rest)')
    k.set_defaults(func=pack_command)
    u = zoo.add_parser('unpack', help='Rejoin and verify parts written by `awnet zoo pack`.')
    u.add_argument('parts', nargs='+', help='folders holding zoo-pack.json and parts (one per trip)')
    u.add_argument('--out', required=True, help='folder to rebuild the files in')
    u.set_defaults(func=unpack_command)
    return p
