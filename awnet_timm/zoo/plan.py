""" Zoo plans: small JSON files that name a budgeted run's stages, their order and their share of the budget

A plan (shipped ones live in `plans/`; any path to a .json works too) holds:
- `name`, `description`, `dataset` (a dataset name of `awnet_timm.data`), `budget_minutes` (the default budget);
- `campaign` (default false): a run continued over many `awnet zoo run --resume` slices, each training stage
  towards its full `max_epochs` (runner.py has the rules); false: one run fits each stage's epochs to its budget;
- `train`: TrainConfig fields shared by every training stage (data size, batch, seed, precision, ...);
- `probe`: the throughput probe's untimed warm-up steps and timed steps;
- `stages`, run in order. Each has a plain `name` (its run folder's name), a `kind` and a `share` of the budget:
  - `train`: `config` (TrainConfig fields; '@stage' as a teacher names a finished stage's model and weights),
    `max_epochs` (the planned total of a campaign; without one, the most whole epochs that fit, up to this),
    `min_epochs`, `epochs_group` (stages of one group train the same number of epochs), `lr_batch` (the lr in
    `config` is for this batch size and scales linearly to the stage's batch) and `release` (the name.tag its weights
    are released as: where `--warm-start` finds them when a campaign's folder is gone). The best checkpoint is chosen on
    a holdout of the training images (`val_split` 'holdout', the default); a plan that selects on a split the
    evaluation reports on is refused;
  - `evaluate`: `students` (evaluated with `attacks` on the first images of the exact test set, in chunks,
    N between `n_min` and `n_target`, with the sanity checks on the first `sanity_n` images of the first chunk; an
    AW-Net student also by transfer from the stage's static students, 'transfer_pgd', which applies only where such
    a surrogate exists) and `teachers` (clean accuracy, and PGD-20 for adversarial recipes); in a campaign,
    `min_holdout_pgd` holds the students' evaluation (and its time) back until one of them has reached that holdout
    PGD accuracy in an epoch of its run;
  - `export`: `students` written as Hub folders of `dtype`, their cards carrying the run's provenance.
A stage runs once every stage in its `after` list (and every '@stage' teacher) has finished. A stage marked
`optional` runs only when asked for (`awnet zoo run --include NAME`); left out, it is dropped from the plan and
from the other stages' lists. When included stages make the shares add up to more than 1, the training stages'
shares are scaled down to fit (training time is split among them by their shares; evaluation and export keep theirs).
Every value is checked (types included) when the plan loads, so that a bad plan fails before its first stage.
"""
import dataclasses
import math
import os
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..eval.suite import GROUPS
from ..training import TrainConfig
from ..training.config import ConfigError
from ..utils import read_json

__all__ = ['ZooError', 'Plan', 'Stage', 'TrainStage', 'EvaluateStage', 'ExportStage', 'load_plan', 'list_plans', 'PLAN_DIR',
           'eval_splits']

PLAN_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'plans')
_PLAIN_NAME = re.compile(r'[A-Za-z0-9][A-Za-z0-9_.-]*')


class ZooError(ValueError):
    """A plan, budget or zoo folder that cannot work, with what was expected."""


@dataclass
class Stage:
    name: str
    kind: str
    share: float
    after: Tuple[str, ...] = ()
    optional: bool = False  # runs only when included by name


@dataclass
class TrainStage(Stage):
    config: Dict[str, Any] = field(default_factory=dict)
    max_epochs: int = 1
    min_epochs: int = 1
    epochs_group: str = ''
    lr_batch: int = 0
    release: str = ''  # the released Hub folder of this stage's weights (name.tag), for `awnet zoo run --warm-start`

    def teacher_refs(self) -> List[str]:
        """Stages whose weights this stage's recipe uses as teachers ('@stage' values)."""
        return [v[1:] for k, v in self.config.items() if k in ('teacher_nat', 'teacher_adv') and str(v).startswith('@')]


@dataclass
class EvaluateStage(Stage):
    students: Tuple[str, ...] = ()
    teachers: Tuple[str, ...] = ()
    attacks: Tuple[str, ...] = ('paper', 'router')
    n_target: int = 1000
    n_min: int = 200
    chunk: int = 100
    clean_n: Optional[int] = None  # images of each clean-accuracy split (None: all)
    router_steps: int = 50
    sanity_n: int = 100  # images of the first chunk the sanity checks' eps sweep and PGD-100 run on
    batch_size: int = 250
    dtype: str = 'fp16'
    min_holdout_pgd: float = 0.0  # a campaign evaluates its students once an epoch of one reached this holdout PGD accuracy


@dataclass
class ExportStage(Stage):
    students: Tuple[str, ...] = ()
    dtype: str = 'fp16'


_KINDS = {'train': TrainStage, 'evaluate': EvaluateStage, 'export': ExportStage}


@dataclass
class Plan:
    name: str
    description: str
    dataset: str
    train: Dict[str, Any]
    stages: List[Stage]
    probe: Dict[str, int] = field(default_factory=lambda: {'warmup': 2, 'steps': 5})
    budget_minutes: float = 10.0
    campaign: bool = False
    source: str = ''

    def stage(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)

    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop('source')
        d['stages'] = [dict(dataclasses.asdict(s)) for s in self.stages]
        return d


def eval_splits(dataset: str) -> Tuple[Tuple[str, ...], str]:
    """(splits scored for clean accuracy, split of the attack evaluation): the splits a zoo run reports on."""
    if dataset == 'cifar10-offline':
        return ('test', 'test-exact'), 'test-exact'
    if dataset in ('cifar10', 'cifar100'):
        return ('test',), 'test'
    return ('val',), 'val'


def list_plans() -> List[str]:
    """Names of the plans shipped with the package."""
    return sorted(f[:-5] for f in os.listdir(PLAN_DIR) if f.endswith('.json'))


def _type_error(value: Any, hint: Any) -> Optional[str]:
    """What a plan value of type `hint` should have been, or None when it is one."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union:  # Optional[int]
        inner = None if value is None else _type_error(value, args[0])
        return inner and f'{inner} or null'
    if origin in (tuple, typing.Tuple):
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        return None if ok else 'a list of names'
    if origin in (dict, typing.Dict):
        return None if isinstance(value, dict) else 'an object'
    if hint is bool:
        return None if isinstance(value, bool) else 'true or false'
    if hint is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else 'an integer'
    if hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        return None if ok else 'a number'
    return None if isinstance(value, hint) else f'a {hint.__name__}'


def _typed(raw: Dict[str, Any], hints: Dict[str, Any], where: str):
    for key, value in raw.items():
        expected = _type_error(value, hints[key])
        if expected:
            raise ZooError(f'{where}: {key} must be {expected}, got {value!r}')


def _stage(raw: Dict[str, Any], where: str) -> Stage:
    if not isinstance(raw, dict) or 'kind' not in raw or 'name' not in raw:
        raise ZooError(f'{where}: a stage is an object with at least name, kind and share')
    cls = _KINDS.get(raw['kind']) if isinstance(raw['kind'], str) else None
    if cls is None:
        raise ZooError(f"{where}: unknown stage kind '{raw['kind']}': expected one of {', '.join(_KINDS)}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ZooError(f"{where}: unknown keys {unknown} for a {raw['kind']} stage (expected {', '.join(sorted(names))})")
    _typed(raw, typing.get_type_hints(cls), f"{where}, stage '{raw['name']}'")
    if not _PLAIN_NAME.fullmatch(raw['name']):
        raise ZooError(f"{where}: stage names are plain folder names (letters, digits, '_', '-', '.'), got '{raw['name']}'")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items() if k != 'config'}
    if 'config' in raw:
        values['config'] = dict(raw['config'])
    return cls(**values)


def _check_train(plan: Plan, s: TrainStage, at: str):
    if not 1 <= s.min_epochs <= s.max_epochs:
        raise ZooError(f'{at}: need 1 <= min_epochs <= max_epochs, got {s.min_epochs} and {s.max_epochs}')
    if s.lr_batch < 0:
        raise ZooError(f'{at}: lr_batch must be >= 0 (0: the lr as given), got {s.lr_batch}')
    cfg = dict(plan.train, **s.config)
    for key in ('teacher_nat', 'teacher_adv'):
        if str(cfg.get(key, '')).startswith('@'):
            if cfg.get(f'{key}_checkpoint'):
                raise ZooError(f"{at}: {key} '{cfg[key]}' uses that stage's weights, but {key}_checkpoint "
                               f"'{cfg[key + '_checkpoint']}' is given too: give one of them")
            cfg[key] = plan.stage(cfg[key][1:]).config.get('model', 'awnet_r18')
            cfg[f'{key}_checkpoint'] = 'weights of that stage'
    try:
        resolved = TrainConfig.from_dict(dict(cfg, dataset=plan.dataset, data_dir='given to the run',
                                              val_split=cfg.get('val_split', 'holdout'))).validate()
    except (ConfigError, TypeError) as e:
        raise ZooError(f'{at}: {e}') from None
    clean, attacked = eval_splits(plan.dataset)
    if resolved.val_size and resolved.val_split in clean + (attacked,):
        raise ZooError(f"{at}: val_split '{resolved.val_split}' picks the best checkpoint on the images the evaluation "
                       f"then reports on ({', '.join(sorted(set(clean + (attacked,))))} of {plan.dataset}): use 'holdout' "
                       f"(the last val_size training images, the default)")


def _check_evaluate(plan: Plan, s: EvaluateStage, at: str):
    for key in ('n_target', 'n_min', 'chunk', 'router_steps', 'sanity_n', 'batch_size'):
        if getattr(s, key) < 1:
            raise ZooError(f'{at}: {key} must be >= 1, got {getattr(s, key)}')
    if s.clean_n is not None and s.clean_n < 1:
        raise ZooError(f'{at}: clean_n must be >= 1 (or null: every image of the split), got {s.clean_n}')
    if s.n_min > s.n_target:
        raise ZooError(f'{at}: need n_min <= n_target, got {s.n_min} and {s.n_target}')
    if not 0. <= s.min_holdout_pgd <= 1.:
        raise ZooError(f'{at}: min_holdout_pgd is a holdout accuracy in [0, 1], got {s.min_holdout_pgd}')
    known = set(GROUPS) | {n for g in GROUPS.values() for n in g}
    unknown = [a for a in s.attacks if a not in known]
    if unknown or not s.attacks:
        raise ZooError(f"{at}: unknown attacks {unknown or '(none given)'}: expected names of {', '.join(sorted(known))}")
    if all(a in GROUPS['transfer'] + ('transfer',) for a in s.attacks):
        raise ZooError(f"{at}: transfer attacks {list(s.attacks)} apply only to an AW-Net beside a static student (its "
                       f"surrogate): name other attacks too")
    router = [a for a in s.attacks if a in GROUPS['router']]
    static = [n for n in s.students if not str(plan.stage(n).config.get('model', 'awnet_r18')).startswith('awnet_')]
    if router and static:
        raise ZooError(f"{at}: router attacks {router} named one by one need an AW-Net, and {', '.join(static)} is not "
                       f"one: name the 'router' group instead (skipped for static students)")


def _check(plan: Plan, where: str) -> Plan:
    seen = set()
    if not plan.stages:
        raise ZooError(f'{where}: the plan has no stages')
    if not 0 < plan.budget_minutes < math.inf:
        raise ZooError(f'{where}: budget_minutes must be a number of minutes > 0, got {plan.budget_minutes}')
    for s in plan.stages:
        at = f"{where}, stage '{s.name}'"
        if s.name in seen:
            raise ZooError(f'{at}: stage names must be unique')
        if not 0 < s.share <= 1:
            raise ZooError(f'{at}: share must be a fraction of the budget in (0, 1], got {s.share!r}')
        deps = list(s.after) + (s.teacher_refs() if isinstance(s, TrainStage) else [])
        deps += list(getattr(s, 'students', ())) + list(getattr(s, 'teachers', ()))
        missing = [d for d in deps if d not in seen]
        if missing:
            raise ZooError(f'{at}: depends on {missing}, which must be stages listed before it')
        if isinstance(s, TrainStage):
            _check_train(plan, s, at)
        else:
            for name in s.students + getattr(s, 'teachers', ()):
                if not isinstance(plan.stage(name), TrainStage):
                    raise ZooError(f"{at}: '{name}' is not a train stage")
            if s.dtype not in ('fp32', 'fp16'):
                raise ZooError(f"{at}: dtype must be 'fp32' or 'fp16', got '{s.dtype}'")
        if isinstance(s, EvaluateStage):
            _check_evaluate(plan, s, at)
        seen.add(s.name)
    total = sum(s.share for s in plan.stages)
    if total > 1 + 1e-6:
        raise ZooError(f'{where}: the stages\' shares add up to {total:.3f}; they are fractions of one budget (<= 1)')
    probe = plan.probe
    if set(probe) != {'warmup', 'steps'} or _type_error(probe['warmup'], int) or _type_error(probe['steps'], int) \
            or probe['steps'] < 1 or probe['warmup'] < 1:
        raise ZooError(f"{where}: probe must be {{\"warmup\": >= 1, \"steps\": >= 1}}, got {probe}")
    return plan


def _select(stages: List[Stage], include: Sequence[str], where: str) -> List[Stage]:
    """The stages that run: the optional ones in `include` and every other one, with the shares made to fit."""
    optional = [s.name for s in stages if s.optional]
    unknown = sorted(set(include) - set(optional))
    if unknown:
        raise ZooError(f"{where}: cannot include {', '.join(unknown)}: the plan's optional stages are "
                       f"{', '.join(optional) or 'none'}")
    dropped = set(optional) - set(include)
    kept = []
    for s in stages:
        if s.name in dropped:
            continue
        lists = {k: tuple(n for n in getattr(s, k) if n not in dropped) for k in ('after', 'students', 'teachers')
                 if hasattr(s, k)}
        kept.append(dataclasses.replace(s, **lists))
    train = sum(s.share for s in kept if isinstance(s, TrainStage))
    rest = sum(s.share for s in kept) - train
    if include and train + rest > 1 and train > 0 and rest < 1:
        kept = [dataclasses.replace(s, share=s.share * (1 - rest) / train) if isinstance(s, TrainStage) else s for s in kept]
    return kept


_PLAN_TYPES = {'name': str, 'description': str, 'dataset': str, 'train': Dict[str, Any], 'stages': list,
               'probe': Dict[str, int], 'budget_minutes': float, 'campaign': bool}


def load_plan(name_or_path: str, dataset: Optional[str] = None, include: Sequence[str] = ()) -> Plan:
    """ A shipped plan by name ('smoke', 'cifar10') or a plan file, checked.

    `dataset` overrides the plan's; `include` names the optional stages to run (the others are left out).
    """
    if not isinstance(name_or_path, str):
        raise ZooError(f'load_plan takes a plan name or a .json path, got {type(name_or_path).__name__}')
    if isinstance(include, str) or not all(isinstance(n, str) for n in include):
        raise ZooError(f"include is a list of stage names (e.g. include=['student_arat']), got {include!r}")
    path = name_or_path if name_or_path.endswith('.json') else os.path.join(PLAN_DIR, f'{name_or_path}.json')
    if not os.path.isfile(path):
        raise ZooError(f"no plan '{name_or_path}': expected one of {', '.join(list_plans())} or a .json plan file")
    raw = read_json(path, ZooError, 'plan')
    if not isinstance(raw, dict) or not {'name', 'dataset', 'stages'} <= set(raw) or set(raw) - set(_PLAN_TYPES):
        raise ZooError(f"plan '{path}': expected an object with keys {', '.join(sorted(_PLAN_TYPES))} "
                       f"(name, dataset and stages required)")
    _typed(raw, _PLAN_TYPES, f"plan '{path}'")
    stages = _select([_stage(s, f"plan '{path}'") for s in raw['stages']], include, f"plan '{raw['name']}'")
    plan = Plan(name=raw['name'], description=raw.get('description', ''), dataset=dataset or raw['dataset'],
                train=dict(raw.get('train', {})), stages=stages, probe=dict(raw.get('probe', {'warmup': 2, 'steps': 5})),
                budget_minutes=float(raw.get('budget_minutes', 10.0)), campaign=raw.get('campaign', False), source=path)
    return _check(plan, f"plan '{raw['name']}'")
