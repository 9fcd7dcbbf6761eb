""" The `awnet` command (installed by the package): train, finetune, eval, plot, filters, export, publish, zoo

Every option is a field of `TrainConfig` (same name, dashes for underscores) with the paper's default;
`--config run.json` starts from a saved config, and `--resume RUN_DIR` continues a run with its own
config (options given on the command line override either; `none` clears an optional one). The CLI only
wires arguments to `awnet_timm.training.train`; everything it does is available from Python. Bad input is
one line on stderr and exit code 2, a diverged run exit code 1, Ctrl-C exit code 130 with the resume command.
"""
import argparse
import dataclasses
import json
import sys
import typing
from typing import Any, Dict, Optional, Sequence

from .models.pretrained import PretrainedWeightsError
from .training import TrainConfig, load_run_config, train
from .training.config import ConfigError
from .training.trainer import DivergenceError, RunInterrupted
from .utils import eps_string, number_arg

__all__ = ['main', 'build_parser', 'FINETUNE_DEFAULTS']

# `awnet finetune`: a short adversarial fine-tune of given weights on an ImageFolder dataset
FINETUNE_DEFAULTS = dict(recipe='pgd_at', dataset='imagefolder', epochs=20, lr=0.01, router_lr=0.001,
                         decay_milestones=(15, 18))


def _optional(convert):
    """argparse type of an Optional field: `none` gives None (e.g. to clear a value inherited on --resume)."""
    def parse(text: str):
        return None if text.lower() == 'none' else convert(text)
    parse.__name__ = getattr(convert, '__name__', 'value')
    return parse


def _arg_type(annotation):
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Union:  # Optional[X]
        return _arg_type(next(a for a in args if a is not type(None)))
    if origin in (dict, typing.Dict) or annotation is dict:
        return 'json'
    if origin in (tuple, typing.Tuple):
        return ('tuple', args[0])
    return annotation


def _json_dict(text: str) -> Dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f'expected a JSON object such as {{"modulate": false}}: {e}')
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f'expected a JSON object, got {text}')
    return value


def _add_config_options(parser: argparse.ArgumentParser, defaults: Dict[str, Any]):
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        kind = _arg_type(hints[f.name])
        default = defaults.get(f.name, f.default if f.default is not dataclasses.MISSING else f.default_factory())
        shown = eps_string(default) if f.name in ('eps', 'attack_step') else repr(default)
        help_text = f.metadata['help']
        if '(default' not in help_text:  # a help text that explains its default says it once
            help_text += f' (default: {shown})'
        help_text = help_text.replace('%', '%%')
        flag = '--' + f.name.replace('_', '-')
        optional = typing.get_origin(hints[f.name]) is typing.Union
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text)
        elif kind == 'json':
            parser.add_argument(flag, type=_json_dict, default=argparse.SUPPRESS, metavar='JSON', help=help_text)
        elif isinstance(kind, tuple):
            parser.add_argument(flag, type=kind[1], nargs='+', default=argparse.SUPPRESS, metavar='N', help=help_text)
        else:
            convert = number_arg if kind is float else kind
            parser.add_argument(flag, type=_optional(convert) if optional else convert, default=argparse.SUPPRESS,
                                metavar=kind.__name__.upper(), help=help_text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='awnet', description='AW-Net and robust CIFAR models for timm: training, fine-tuning and robustness evaluation.')
    sub = parser.add_subparsers(dest='command', required=True)
    commands = {
        'train': ('Train a model from scratch (or resume a run).', {}),
        'finetune': ('Fine-tune weights (--pretrained) on a new dataset, adversarially or clean-only.', FINETUNE_DEFAULTS),
    }
    for name, (help_text, defaults) in commands.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument('--config', default=None, metavar='JSON_FILE',
                       help='start from a saved TrainConfig (e.g. a run\'s config.json); options given here override it')
        _add_config_options(p, defaults)
    from .eval.cli import add_eval_parser, add_filters_parser, add_plot_parser
    add_eval_parser(sub)
    add_plot_parser(sub)
    add_filters_parser(sub)
    from .hub.cli import add_export_parser, add_mirror_parser, add_publish_parser
    add_export_parser(sub)
    add_publish_parser(sub)
    add_mirror_parser(sub)
    from .zoo.cli import add_zoo_parser
    add_zoo_parser(sub)
    return parser


def config_from_args(command: str, args: argparse.Namespace) -> TrainConfig:
    """Defaults (the command's), then --config or the resumed run's config, then the options given."""
    given = {k: v for k, v in vars(args).items() if k not in ('command', 'config')}
    if 'decay_milestones' in given:
        given['decay_milestones'] = tuple(given['decay_milestones'])
    defaults = FINETUNE_DEFAULTS if command == 'finetune' else {}
    base = None
    if args.config:
        with open(args.config) as f:
            base = TrainConfig.from_dict(json.load(f))
    elif given.get('resume') and given['resume'] != 'auto':
        run = given['resume']
        base = load_run_config(run.rsplit('/', 1)[0] if run.endswith('.safetensors') else run)
    # a fresh config is built in one go, so that defaults depending on other fields (val_split) see the given dataset
    cfg = TrainConfig(**{**defaults, **given}) if base is None else dataclasses.replace(base, **given)
    if command == 'finetune' and not cfg.pretrained:
        raise ConfigError('awnet finetune needs --pretrained: a .safetensors file, a run directory, a name.tag or hf-hub:org/repo')
    return cfg


# bad input of any command (ConfigError, CheckpointError, DatasetError, DeviceError, HubReleaseError are ValueErrors)
USER_ERRORS = (ValueError, FileNotFoundError, PretrainedWeightsError)


def _interrupted(command: str, e: KeyboardInterrupt) -> str:
    if not isinstance(e, RunInterrupted):
        return f'awnet {command}: interrupted'
    if not e.epochs_saved:
        return f'awnet {command}: interrupted before the first epoch finished; nothing was kept'
    return (f'awnet {command}: interrupted; {e.run_dir} holds epoch {e.epochs_saved}: continue with '
            f'`awnet {command} --resume {e.run_dir}`')


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command not in ('train', 'finetune'):
            return args.func(args)
        result = train(config_from_args(args.command, args))
    except USER_ERRORS as e:
        print(f'awnet {args.command}: error: {e}', file=sys.stderr)
        return 2
    except DivergenceError as e:
        print(f'awnet {args.command}: error: {e}', file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        print(f'\n{_interrupted(args.command, e)}', file=sys.stderr)
        return 130
    state = 'finished' if result.finished else 'stopped early (resume to continue)'
    print(f'awnet {args.command}: {state} after epoch {result.epochs_done}; run in {result.run_dir}; '
          f'best {json.dumps(result.best)}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
