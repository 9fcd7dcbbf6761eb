""" Zoo plans: small JSON files that name a budgeted run's stages, their order and their share of the budget

A plan (shipped ones live in `plans/`; any path to a .json works too) holds:
- `name`, `description`, `dataset` (a dataset name of `awnet_timm.data`), `budget_minutes` (the default budget);
- `train`: TrainConfig fields shared by every training stage (data size, batch, seed, precision, ...);
- `probe`: the throughput probe's untimed warm-up steps and timed steps;
- `stages`, run in order. Each has a `name`, a `kind` and a `share` of the budget:
  - `train`: `config` (TrainConfig fields; '@stage' as a teacher names a finished stage's model and weights),
    `max_epochs` (the budget picks the most whole epochs that fit, up to this), `min_epochs`, `epochs_group`
    (stages of one group train the same number of epochs, chosen from their pooled shares) and `lr_batch`
    (the lr in `config` is for this batch size and scales linearly to the stage's batch);
  - `evaluate`: `students` (evaluated with `attacks` on the first images of the exact test set, in chunks,
    N between `n_min` and `n_target`) and `teachers` (clean accuracy, and PGD-20 for adversarial recipes);
  - `export`: `students` written as Hub folders of `dtype`, their cards carrying the run's provenance.
A stage runs once every stage in its `after` list (and every '@stage' teacher) has finished. A stage marked
`optional` runs only when asked for (`awnet zoo run --include NAME`); left out, it is dropped from the plan and
from the other stages' lists. When included stages make the shares add up to more than 1, the training stages'
shares are scaled down to fit (training time is split among them by their shares; evaluation and export keep theirs).
"""
import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..training import TrainConfig
from ..training.config import ConfigError
from ..utils import read_json

__all__ = ['ZooError', 'Plan', 'Stage', 'TrainStage', 'EvaluateStage', 'ExportStage', 'load_plan', 'list_plans', 'PLAN_DIR']

PLAN_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'plans')


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
    batch_size: int = 250
    dtype: str = 'fp16'


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
    source: str = ''

    def stage(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)

    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop('source')
        d['stages'] = [dict(dataclasses.asdict(s)) for s in self.stages]
        return d


def list_plans() -> List[str]:
    """Names of the plans shipped with the package."""
    return sorted(f[:-5] for f in os.listdir(PLAN_DIR) if f.endswith('.json'))


def _stage(raw: Dict[str, Any], where: str) -> Stage:
    if not isinstance(raw, dict) or 'kind' not in raw or 'name' not in raw:
        raise ZooError(f'{where}: a stage is an object with at least name, kind and share')
    cls = _KINDS.get(raw['kind'])
    if cls is None:
        raise ZooError(f"{where}: unknown stage kind '{raw['kind']}': expected one of {', '.join(_KINDS)}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ZooError(f"{where}: unknown keys {unknown} for a {raw['kind']} stage (expected {', '.join(sorted(names))})")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items() if k != 'config'}
    if 'config' in raw:
        values['config'] = dict(raw['config'])
    return cls(**values)


def _check(plan: Plan, where: str) -> Plan:
    seen = set()
    if not plan.stages:
        raise ZooError(f'{where}: the plan has no stages')
    for s in plan.stages:
        at = f"{where}, stage '{s.name}'"
        if s.name in seen:
            raise ZooError(f'{at}: stage names must be unique')
        if not (isinstance(s.share, (int, float)) and 0 < s.share <= 1):
            raise ZooError(f'{at}: share must be a fraction of the budget in (0, 1], got {s.share!r}')
        deps = list(s.after) + (s.teacher_refs() if isinstance(s, TrainStage) else [])
        deps += list(getattr(s, 'students', ())) + list(getattr(s, 'teachers', ()))
        missing = [d for d in deps if d not in seen]
        if missing:
            raise ZooError(f'{at}: depends on {missing}, which must be stages listed before it')
        if isinstance(s, TrainStage):
            if not 1 <= s.min_epochs <= s.max_epochs:
                raise ZooError(f'{at}: need 1 <= min_epochs <= max_epochs, got {s.min_epochs} and {s.max_epochs}')
            cfg = dict(plan.train, **s.config)
            for key in ('teacher_nat', 'teacher_adv'):
                if str(cfg.get(key, '')).startswith('@'):
                    cfg[key] = plan.stage(cfg[key][1:]).config.get('model', 'awnet_r18')
                    cfg[f'{key}_checkpoint'] = 'weights of that stage'
            try:
                TrainConfig.from_dict(dict(cfg, dataset=plan.dataset, data_dir='given to the run')).validate()
            except (ConfigError, TypeError) as e:
                raise ZooError(f'{at}: {e}') from None
        else:
            for name in s.students + getattr(s, 'teachers', ()):
                if not isinstance(plan.stage(name), TrainStage):
                    raise ZooError(f"{at}: '{name}' is not a train stage")
            if s.dtype not in ('fp32', 'fp16'):
                raise ZooError(f"{at}: dtype must be 'fp32' or 'fp16', got '{s.dtype}'")
        if isinstance(s, EvaluateStage) and not (1 <= s.chunk and 1 <= s.n_min <= s.n_target):
            raise ZooError(f'{at}: need chunk >= 1 and 1 <= n_min <= n_target, got {s.chunk}, {s.n_min}, {s.n_target}')
        seen.add(s.name)
    total = sum(s.share for s in plan.stages)
    if total > 1 + 1e-6:
        raise ZooError(f'{where}: the stages\' shares add up to {total:.3f}; they are fractions of one budget (<= 1)')
    if set(plan.probe) != {'warmup', 'steps'} or plan.probe['steps'] < 1 or plan.probe['warmup'] < 1:
        raise ZooError(f"{where}: probe must be {{\"warmup\": >= 1, \"steps\": >= 1}}, got {plan.probe}")
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


def load_plan(name_or_path: str, dataset: Optional[str] = None, include: Sequence[str] = ()) -> Plan:
    """ A shipped plan by name ('smoke', 'cifar10') or a plan file, checked.

    `dataset` overrides the plan's; `include` names the optional stages to run (the others are left out).
    """
    path = name_or_path if name_or_path.endswith('.json') else os.path.join(PLAN_DIR, f'{name_or_path}.json')
    if not os.path.isfile(path):
        raise ZooError(f"no plan '{name_or_path}': expected one of {', '.join(list_plans())} or a .json plan file")
    raw = read_json(path, ZooError, 'plan')
    keys = {'name', 'description', 'dataset', 'train', 'stages', 'probe', 'budget_minutes'}
    if not isinstance(raw, dict) or not {'name', 'dataset', 'stages'} <= set(raw) or set(raw) - keys:
        raise ZooError(f"plan '{path}': expected an object with keys {', '.join(sorted(keys))} (name, dataset and stages required)")
    stages = _select([_stage(s, f"plan '{path}'") for s in raw['stages']], include, f"plan '{raw['name']}'")
    plan = Plan(name=raw['name'], description=raw.get('description', ''), dataset=dataset or raw['dataset'],
                train=dict(raw.get('train', {})), stages=stages, probe=dict(raw.get('probe', {'warmup': 2, 'steps': 5})),
                budget_minutes=float(raw.get('budget_minutes', 10.0)), source=path)
    return _check(plan, f"plan '{raw['name']}'")
