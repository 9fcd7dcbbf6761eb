""" The attacks of an evaluation, by name: the paper's protocol, AutoAttack, router-aware and transfer attacks

An `AttackSpec` is a name, a kind, its parameters (recorded in the report) and a builder that makes
the attack for a target model. `build_suite` expands group names:
- 'paper': fgsm, pgd_sat (20 x 2/255), pgd_trades (20 x 0.003), cw_inf (30 steps, margin loss), autoattack
  (the AW-Net paper's protocol, Sec. 5.1, with AutoAttack 'standard');
- 'router' (AW-Net only, docs/evaluation.md section 6): forced_clean, forced_adv, router_detach, two_phase,
  signal_match, joint_adaptive (the paper's own adaptive attack), and two attacks on a sharpened route
  (`route_threshold`), which sends an image down the Clean BN path only when P(clean) is high: joint_clean (the type
  term with the cross-entropy of that path) and two_phase_clean (two_phase on that path: fool it, then raise P(clean)
  while it stays fooled);
- 'blackbox': square (AutoAttack's Square, 5,000 queries);
- 'transfer' (needs surrogates): transfer_pgd, recorded as transfer_<name> (PGD-20 on each surrogate, e.g. AW-Net's
  static twin: Tramer et al.'s transfer from a twin without the defence), and msa (AutoAttack on every surrogate,
  per-sample first success).
A model with an HPM head also gets, unasked, its FC surrogate (`hpm_fc`) and the 'transfer' and 'blackbox'
groups, as its paper evaluates it (MSA), whoever builds the suite (`awnet eval`, the zoo's evaluate stage).
`validate_suite_args` checks names and numbers without a model, so a plan can be checked before any training.
Step sizes are the paper's at its eps 8/255 and scale with eps (at 4/255, pgd_sat steps 1/255), so every
attack can cross the ball at any eps. White-box PGD attacks keep, per sample, the first iterate that
fools the model (`keep='best'`, as AutoAttack does); transfer attacks keep the last surrogate iterate.
"""
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import math

import torch.nn as nn

from ..attacks import (
    FGSM, AutoAttack, ForcedRoutePGD, JointLossPGD, LinfPGD, MixedSurrogateAttack, SignalMatchPGD, TwoPhaseAttack,
    has_hpm_head, hpm_surrogates)
from ..models import AWNet

__all__ = ['AttackSpec', 'GROUPS', 'PROTOCOL_EPS', 'ATTACK_NAMES', 'build_suite', 'pgd_spec', 'validate_suite_args']

GROUPS = {
    'paper': ('fgsm', 'pgd_sat', 'pgd_trades', 'cw_inf', 'autoattack'),
    'router': ('forced_clean', 'forced_adv', 'router_detach', 'two_phase', 'signal_match', 'joint_adaptive', 'joint_clean',
               'two_phase_clean'),
    'blackbox': ('square',),
    'transfer': ('transfer_pgd', 'msa'),
}

ATTACK_NAMES = tuple(n for g in GROUPS.values() for n in g)
PROTOCOL_EPS = 8 / 255  # the eps the paper's step sizes are given for
AA_VERSIONS = ('standard', 'plus')
RANDOM_STARTS = ('uniform', 'none')


@dataclass
class AttackSpec:
    name: str
    kind: str  # 'white-box', 'router', 'black-box' or 'transfer'
    params: Dict[str, Any]
    build: Callable[[nn.Module], Any] = field(repr=False)
    iterative: bool = True
    whole_set: bool = False  # the attack batches and seeds by itself: give it the whole evaluation set at once


def pgd_spec(name: str, eps: float, step_size: float, steps: int, loss: str = 'ce', random_start: str = 'uniform',
             kind: str = 'white-box', route: Optional[str] = None, keep: str = 'best') -> AttackSpec:
    params = dict(attack='LinfPGD', eps=eps, step_size=step_size, steps=steps, loss=loss, random_start=random_start, keep=keep)
    if route is not None:
        params['route'] = route
    return AttackSpec(name, kind, params, lambda m: LinfPGD(m, eps, step_size, steps, loss, random_start, route=route, keep=keep))


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def validate_suite_args(
        names: Sequence[str],
        eps: float = 8 / 255,
        random_start: str = 'uniform',
        cw_step: Optional[float] = None,
        router_steps: int = 50,
        square_queries: int = 5000,
        aa_version: str = 'standard',
        batch_size: int = 500,
) -> List[str]:
    """ The attack names of `names` with groups expanded, in order; ValueError (one line, saying what is expected)
    for anything `build_suite` would refuse or fail on later. Needs no model: a plan can be checked before training.

    What depends on the model is left to `build_suite`: router attacks need an AW-Net with a router, 'transfer'
    needs surrogates (an HPM model brings its own).
    """
    if isinstance(names, str) or not isinstance(names, Sequence) or not all(isinstance(n, str) for n in names):
        raise ValueError(f'attacks must be a list of attack or group names, got {names!r}: '
                         f"e.g. ['paper', 'router'] (groups: {', '.join(GROUPS)})")
    unknown = [n for n in names if n not in GROUPS and n not in ATTACK_NAMES]
    if unknown or not names:
        what = f"unknown attack {', '.join(repr(n) for n in unknown)}" if unknown else 'no attacks named'
        raise ValueError(f"{what}: expected groups {', '.join(GROUPS)} or attacks {', '.join(ATTACK_NAMES)}")
    for label, value in (('batch_size', batch_size), ('router_steps', router_steps), ('square_queries', square_queries)):
        if not _positive_int(value):
            raise ValueError(f'{label} must be an integer >= 1, got {value!r}')
    if not (isinstance(eps, (int, float)) and 0 < eps <= 1):
        raise ValueError(f'eps must be in (0, 1] (L-inf radius in [0, 1] pixel units, e.g. 8/255), got {eps!r}')
    if cw_step is not None and not (isinstance(cw_step, (int, float)) and math.isfinite(cw_step) and cw_step > 0):
        raise ValueError(f'cw_step must be a step size > 0 (or None: 0.003 at eps 8/255, scaled with eps), got {cw_step!r}')
    if aa_version not in AA_VERSIONS:
        raise ValueError(f"aa_version must be one of {', '.join(AA_VERSIONS)}, got {aa_version!r}")
    if random_start not in RANDOM_STARTS:
        raise ValueError(f"random_start must be one of {', '.join(RANDOM_STARTS)}, got {random_start!r}")
    expanded: List[str] = []
    for name in names:
        for n in GROUPS.get(name, (name,)):
            if n not in expanded:
                expanded.append(n)
    return expanded


def build_suite(
        model: nn.Module,
        names: Sequence[str],
        eps: float = 8 / 255,
        random_start: str = 'uniform',
        cw_step: Optional[float] = None,
        router_steps: int = 50,
        square_queries: int = 5000,
        aa_version: str = 'standard',
        seed: int = 0,
        batch_size: int = 500,
        surrogates: Optional[Mapping[str, nn.Module]] = None,
        progress: bool = False,
        hpm_attacks: bool = True,
) -> List[AttackSpec]:
    """ The attacks named (or in the groups named) for `model`.

    Names and numbers are checked first (`validate_suite_args`). Router attacks need an AW-Net with a router:
    named one by one for another model they are refused, and so is a request where nothing but router attacks
    is left to run; the 'router' group is skipped otherwise. A model with an HPM head gets, when `hpm_attacks`,
    its surrogate added to `surrogates` and the 'transfer' and 'blackbox' groups appended. `cw_step` defaults
    to 0.003 at eps 8/255, scaled with eps; `batch_size` is AutoAttack's own (it sees the whole set at once).
    """
    expanded = validate_suite_args(names, eps, random_start, cw_step, router_steps, square_queries, aa_version, batch_size)
    dynamic = isinstance(model, AWNet) and model.router is not None
    if not dynamic:  # judged on what was asked: the HPM extras below are no white-box attack
        named = [n for n in names if n in GROUPS['router']]
        if named or all(n in GROUPS['router'] for n in expanded):
            raise ValueError(f"router attacks ({', '.join(named or GROUPS['router'])}) need an AW-Net with a router, and "
                             f"{type(model).__name__} has none: choose other attacks (e.g. --attacks paper)")
    if hpm_attacks and has_hpm_head(model):  # as its paper evaluates it: MSA on its surrogate; and gradient-free attacks
        surrogates = {**hpm_surrogates(model), **(surrogates or {})}
        expanded += [n for g in ('transfer', 'blackbox') for n in GROUPS[g] if n not in expanded]
    surrogates = dict(surrogates or {})
    scale = eps / PROTOCOL_EPS
    step, trades_step = 2 / 255 * scale, 0.003 * scale
    cw_step = 0.003 * scale if cw_step is None else cw_step
    specs = []
    aa = dict(seed=seed, batch_size=batch_size, progress=progress)
    for name in expanded:
        if name == 'fgsm':
            specs.append(AttackSpec(name, 'white-box', dict(attack='FGSM', eps=eps, step_size=eps), lambda m: FGSM(m, eps),
                                    iterative=False))
        elif name == 'pgd_sat':
            specs.append(pgd_spec(name, eps, step, 20, 'ce', random_start))
        elif name == 'pgd_trades':
            specs.append(pgd_spec(name, eps, trades_step, 20, 'ce', random_start))
        elif name == 'cw_inf':
            specs.append(pgd_spec(name, eps, cw_step, 30, 'cw', random_start))
        elif name == 'autoattack':
            specs.append(AttackSpec(name, 'white-box', dict(attack='AutoAttack', version=aa_version, eps=eps, norm='Linf',
                                                            seed=seed, batch_size=batch_size),
                                    lambda m: AutoAttack(m, eps, version=aa_version, **aa), whole_set=True))
        elif name == 'square':
            specs.append(AttackSpec(name, 'black-box', dict(attack='Square', queries=square_queries, eps=eps, seed=seed,
                                                            batch_size=batch_size),
                                    lambda m: AutoAttack(m, eps, version='custom', attacks=['square'],
                                                         square_queries=square_queries, **aa), whole_set=True))
        elif name in GROUPS['router']:
            if not dynamic:
                continue  # the group was asked for with other attacks: a static model has no router to attack
            pgd = dict(eps=eps, step_size=step, steps=router_steps, random_start=random_start, keep='best')
            if name in ('forced_clean', 'forced_adv'):
                forced = name.split('_')[1]
                specs.append(AttackSpec(name, 'router', dict(attack='ForcedRoutePGD', forced=forced, **pgd),
                                        lambda m, f=forced: ForcedRoutePGD(m, f, **pgd)))
            elif name == 'router_detach':
                specs.append(pgd_spec(name, eps, step, router_steps, 'ce', random_start, kind='router', route='detach'))
            elif name in ('two_phase', 'two_phase_clean'):  # _clean: both phases on the Clean BN path
                two = dict(eps=eps, steps=100, step_size=2.5 * eps / 100, random_start=random_start)
                if name == 'two_phase_clean':
                    two['route'] = 'clean'
                specs.append(AttackSpec(name, 'router', dict(attack='TwoPhaseAttack', **two, keep='best P(clean) among fooling'),
                                        lambda m, two=two: TwoPhaseAttack(m, **two)))
            elif name == 'signal_match':
                specs.append(AttackSpec(name, 'router', dict(attack='SignalMatchPGD', penalty=1.0, **pgd),
                                        lambda m: SignalMatchPGD(m, 1.0, **pgd)))
            elif name == 'joint_adaptive':
                joint = dict(pgd, step_size=trades_step, steps=20)
                specs.append(AttackSpec(name, 'router', dict(attack='JointLossPGD', weight=1.0, **joint),
                                        lambda m: JointLossPGD(m, 1.0, **joint)))
            else:  # joint_clean: the Clean BN path's cross-entropy, P(clean) pushed up, signals from x'
                specs.append(AttackSpec(name, 'router', dict(attack='JointLossPGD', weight=1.0, route='clean', **pgd),
                                        lambda m: JointLossPGD(m, 1.0, route='clean', **pgd)))
        elif name in GROUPS['transfer']:
            if not surrogates:
                raise ValueError(f"attack '{name}' needs surrogate models (--surrogate NAME=CHECKPOINT)")
            if name == 'transfer_pgd':
                for s_name, s_model in surrogates.items():
                    specs.append(AttackSpec(f'transfer_{s_name}', 'transfer',
                                            dict(attack='LinfPGD', surrogate=s_name, eps=eps, step_size=step, steps=20,
                                                 random_start=random_start, keep='last'),
                                            lambda m, s=s_model: LinfPGD(s, eps, step, 20, random_start=random_start)))
            else:
                specs.append(AttackSpec(name, 'transfer', dict(attack='MixedSurrogate(AutoAttack)', surrogates=list(surrogates),
                                                               version=aa_version, eps=eps, seed=seed, batch_size=batch_size),
                                        lambda m: MixedSurrogateAttack(m, [AutoAttack(s, eps, version=aa_version, **aa)
                                                                           for s in surrogates.values()], batch_size=batch_size),
                                        whole_set=True))
    return specs
