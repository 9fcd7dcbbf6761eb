""" Robustness evaluation: every attack scored on the real model, per-sample worst case, router statistics

Conventions (RobustBench / AutoAttack, docs/evaluation.md section 1): the model is in eval mode and, for an
AW-Net, in route auto for every score; inputs are [0, 1] pixels and eps is in pixel units; robust
accuracy is over all N points (a point misclassified when clean is not robust); fp32.
W-Robust accuracy = (clean + robust) / 2 (the paper's Eq. 23), for each attack and for the worst case.
The evaluator knows nothing about gradients: attacks come from `suite.py` as objects with `perturb`.
Every example is checked (finite, in [0, 1], within eps) before it is scored. An attack that batches by
itself (AutoAttack) gets the whole set in one call; the others get the evaluator's batches.

Sanity checks (Carlini et al. 2019) run with the evaluation and flag gradient masking: accuracy is ~0 at a
large eps; PGD-20 has converged (PGD-100 breaks few more points); a black-box attack never beats the best
white-box one; a single-step attack never beats an iterative one. Their cost stays a fraction of the
attacks': the eps sweep runs on the first `sanity_n` points, attacks only the points still robust at the
previous eps (an example found at a smaller eps lies in every larger ball, so the curve is the accuracy
left after PGD-20 at each eps or any smaller one), and PGD-100 runs only on the points PGD-20 left robust.

An interrupted evaluation continues from its last saved result (`previous`): the attacks it finished are taken with
their per-sample outcomes, once its clean predictions are this run's to the bit, and only the others run. Every attack
starts from the same seed, so the continued result is the one an uninterrupted run gives.
"""
import json
import math
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from ..attacks import check_pixels
from ..models import AWNet
from .suite import PROTOCOL_EPS, AttackSpec, pgd_spec

__all__ = ['evaluate_robustness', 'answered_by', 'check_earlier_result', 'detection_auc', 'sanity_checks', 'EvaluationError', 'SANITY_EPS', 'SANITY_N']

SANITY_EPS = (2 / 255, 4 / 255, 8 / 255, 12 / 255, 16 / 255, 32 / 255, 128 / 255)
SANITY_N = 200  # points of the eps sweep and of the PGD-100 check


class EvaluationError(ValueError):
    """Inputs, a model or an attack's examples that cannot be scored, with what was expected."""


def detection_auc(p_clean_on_clean: torch.Tensor, p_clean_on_adv: torch.Tensor) -> float:
    """AUC of P(adversarial) = 1 - P(clean) separating adversarial from clean inputs (ties count 1/2)."""
    pos, neg = 1 - p_clean_on_adv.double(), 1 - p_clean_on_clean.double()
    greater = (pos[:, None] > neg[None, :]).double().mean()
    ties = (pos[:, None] == neg[None, :]).double().mean()
    return float(greater + 0.5 * ties)


def _bits(mask: torch.Tensor) -> str:
    return ''.join('1' if v else '0' for v in mask.tolist())


@torch.no_grad()
def _predict(model: nn.Module, x: torch.Tensor):
    """(logits, P(clean) or None) as scored: an AW-Net with a router in route auto."""
    if isinstance(model, AWNet) and model.router is not None:
        logits, router_out = model.forward_with_router(x, route='auto')
        return logits, router_out.p_clean
    return model(x), None


def _check_examples(name: str, x_adv: torch.Tensor, x: torch.Tensor, eps: Optional[float]) -> None:
    if x_adv.shape != x.shape:
        raise EvaluationError(f"attack '{name}' returned a batch of shape {tuple(x_adv.shape)} for inputs {tuple(x.shape)}")
    lo, hi = torch.aminmax(x_adv)
    lo, hi, dist = torch.stack([lo, hi, (x_adv - x).abs().max()]).tolist()  # one host sync per batch
    if not all(math.isfinite(v) for v in (lo, hi, dist)):
        raise EvaluationError(f"attack '{name}' returned non-finite pixels (NaN or inf); a model whose gradients are "
                              f"NaN makes them: check the model's forward on these inputs")
    if lo < 0 or hi > 1 or (eps is not None and dist > eps + 1e-5):
        raise EvaluationError(f"attack '{name}' returned examples outside the eps-ball or [0, 1] (pixels in "
                              f"[{lo:.3g}, {hi:.3g}], L-inf distance {dist:.4g}, eps {eps})")


def _run_attack(model, spec: AttackSpec, x, y, batch_size, device, seed, progress) -> Dict[str, Any]:
    """Correct-after-attack mask and P(clean) on the examples, over all of x."""
    attack = spec.build(model)
    torch.manual_seed(seed)
    correct, p_clean = [], []
    t0 = time.time()
    eps = spec.params.get('eps')
    x_adv_all = attack.perturb(x, y) if spec.whole_set else None  # once, with the attack's own batching and seed
    batches = range(0, len(x), batch_size)
    for i in tqdm(batches, desc=spec.name, leave=False, disable=not progress or spec.whole_set):
        xb, yb = x[i:i + batch_size].to(device), y[i:i + batch_size].to(device)
        x_adv = attack.perturb(xb, yb) if x_adv_all is None else x_adv_all[i:i + batch_size].to(device)
        _check_examples(spec.name, x_adv, xb, eps)
        logits, pc = _predict(model, x_adv)
        correct.append((logits.argmax(1) == yb).cpu())
        if pc is not None:
            p_clean.append(pc.float().cpu())
    return {'correct': torch.cat(correct), 'p_clean': torch.cat(p_clean) if p_clean else None,
            'seconds': time.time() - t0, 'warnings': list(getattr(attack, 'check_warnings', []))}


def _check_inputs(model: nn.Module, x: torch.Tensor, y: torch.Tensor, specs: Sequence[AttackSpec], batch_size: int,
                  sanity_n: Optional[int], device) -> None:
    names = [s.name for s in specs]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:  # per-sample outcomes are kept by name: a second attack of a name would replace the first
        raise EvaluationError(f"attack names must be unique, got {', '.join(repeated)} more than once")
    if sanity_n is not None and sanity_n < 1:
        raise EvaluationError(f'sanity_n must be at least 1 (points of the sanity checks), got {sanity_n}')
    if x.dim() != 4 or x.dtype != torch.float32:
        raise EvaluationError(f'evaluation takes float32 (N, C, H, W) pixels in [0, 1], got {tuple(x.shape)} {x.dtype}')
    check_pixels(x, 'evaluation takes')
    if len(x) != len(y) or len(x) == 0:
        raise EvaluationError(f'evaluation needs as many labels as images, at least one: got {len(x)} images, {len(y)} labels')
    if batch_size < 1:
        raise EvaluationError(f'batch size must be at least 1, got {batch_size}')
    logits, _ = _predict(model, x[:1].to(device))
    if logits.dim() != 2 or int(y.max()) >= logits.shape[1] or int(y.min()) < 0:
        raise EvaluationError(f'the model gives {logits.shape[-1]} class scores, but the labels go from {int(y.min())} to '
                              f'{int(y.max())}: evaluate a model made for this dataset\'s classes')


def _check_bits(name: str, bits: Any, n: int, accuracy: Any, within: Optional[str] = None) -> None:
    """An earlier result's per-image outcomes of `name`: n '0'/'1' characters whose share of '1' is its recorded
    accuracy (and, for an attack, '1' only where `within`, the clean outcomes, is '1'), else EvaluationError."""
    def refuse(what: str):
        raise EvaluationError(f"the earlier result's per-image outcome of '{name}' {what}: it is not what this tool "
                              f"wrote; start a new evaluation (drop --resume or give another --out)")
    if not isinstance(bits, str) or len(bits) != n or set(bits) - {'0', '1'}:
        shown = bits if isinstance(bits, str) and len(bits) <= 40 else type(bits).__name__
        refuse(f"is {shown!r}, expected a string of {n} '0'/'1' characters (one per image)")
    if isinstance(accuracy, bool) or not isinstance(accuracy, (int, float)) or abs(bits.count('1') / n - accuracy) > 0.5 / n:
        refuse(f"has {bits.count('1')} of {n} images correct, but its recorded accuracy is {accuracy!r}")
    if within is not None and any(b == '1' and c == '0' for b, c in zip(bits, within)):
        refuse("counts images robust that are misclassified when clean")


def check_earlier_result(previous: Any, n: int) -> None:
    """ The shape of an earlier result (or its record) that `previous` continues from, checked before anything is
    taken from it: a resumed evaluation takes its per-image outcomes as they are, so a hand-edited or damaged one
    would silently change the worst case (EvaluationError says what is wrong). """
    if not isinstance(previous, dict):
        raise EvaluationError(f'the earlier result must be a JSON object (a report of awnet eval), got '
                              f'{type(previous).__name__}')
    attacks, bits = previous.get('attacks', []), previous.get('per_sample')
    if not isinstance(attacks, list) or not all(isinstance(a, dict) and isinstance(a.get('name'), str)
                                                and isinstance(a.get('params'), dict) for a in attacks):
        raise EvaluationError("the earlier result's 'attacks' must be a list of attack records, each with a 'name' "
                              "and its 'params': it is not what this tool wrote; start a new evaluation")
    if not isinstance(bits, dict):
        raise EvaluationError(f"the earlier result's 'per_sample' must be an object of per-image outcomes by name, "
                              f"got {type(bits).__name__}: start a new evaluation")
    elapsed = previous.get('elapsed_seconds', 0.0)
    if isinstance(elapsed, bool) or not isinstance(elapsed, (int, float)) or not 0 <= elapsed < float('inf'):
        raise EvaluationError(f"the earlier result's 'elapsed_seconds' must be a number of seconds >= 0, got "
                              f"{elapsed!r}: start a new evaluation")
    _check_bits('clean', bits.get('clean'), n, previous.get('clean_acc'))
    for record in attacks:
        _check_bits(record['name'], bits.get(record['name']), n, record.get('robust_acc'), within=bits['clean'])


def _finished_attacks(previous: Dict[str, Any], specs: Sequence[AttackSpec],
                      clean_correct: torch.Tensor) -> Dict[str, Tuple[Dict[str, Any], torch.Tensor]]:
    """{name: (record, per-sample correct)} of the attacks an earlier run of this evaluation finished."""
    bits = previous.get('per_sample') if isinstance(previous, dict) else None
    if not isinstance(bits, dict) or bits.get('clean') != _bits(clean_correct):
        raise EvaluationError('the earlier result\'s clean predictions are not this run\'s: another model, checkpoint or '
                              'images; start a new evaluation')
    check_earlier_result(previous, len(clean_correct))
    wanted = {s.name: s for s in specs}
    finished = {}
    for record in previous.get('attacks', []):
        name = record['name']
        if name not in wanted:
            raise EvaluationError(f"the earlier result has the attack '{name}', which this run does not ask for: ask for "
                                  f"it too (its worst case counts it), or start a new evaluation")
        params = json.loads(json.dumps(wanted[name].params))  # as the record holds them
        if record['params'] != params:
            raise EvaluationError(f"the earlier result ran '{name}' with {record['params']}, this run asks for {params}: "
                                  f"start a new evaluation")
        finished[name] = (record, torch.tensor([b == '1' for b in bits[name]]))
    return finished


def answered_by(previous: Dict[str, Any], specs: Sequence[AttackSpec], n: int, sanity: bool,
                sanity_n: int = SANITY_N, random_start: str = 'uniform') -> bool:
    """Whether `previous`, a complete result (or its record) of this evaluation, already is what it would give: the same
    attacks with the same parameters and, where asked for, sanity checks on as many points with the same start."""
    if not previous.get('complete'):
        return False
    ran = [(a['name'], a['params']) for a in previous.get('attacks', [])]
    if ran != [(s.name, json.loads(json.dumps(s.params))) for s in specs] or bool(previous.get('sanity')) != sanity:
        return False
    cost = previous.get('sanity_cost') or {}
    return not sanity or (cost.get('n'), cost.get('random_start')) == (min(sanity_n, n), random_start)


def _summary(clean_correct, p_clean_clean, attacks, outcomes) -> Dict[str, Any]:
    """The result over the attacks run so far (per-sample worst case over them)."""
    clean_acc = clean_correct.float().mean().item()
    worst = clean_correct.clone()
    for correct in outcomes.values():
        worst &= correct
    robust_worst = worst.float().mean().item()
    return {
        'clean_acc': clean_acc,
        'attacks': list(attacks),  # a copy: a partial result handed over keeps the attacks run so far
        'worst_case': {'robust_acc': robust_worst, 'w_robust_acc': (clean_acc + robust_worst) / 2,
                       'attacks': list(outcomes)},
        'router': {'p_clean_clean_mean': p_clean_clean.mean().item()} if p_clean_clean is not None else None,
        # per image, '1' = still correctly classified: enough to recompute any worst case later
        'per_sample': {'clean': _bits(clean_correct), 'worst_case': _bits(worst),
                       **{name: _bits(c) for name, c in outcomes.items()}},
    }


def evaluate_robustness(
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        specs: Sequence[AttackSpec],
        batch_size: int = 256,
        device: Optional[torch.device] = None,
        seed: int = 0,
        sanity: bool = True,
        sanity_eps: Sequence[float] = SANITY_EPS,
        sanity_n: int = SANITY_N,
        random_start: str = 'uniform',
        progress: bool = True,
        on_attack: Optional[Callable[[Dict[str, Any]], None]] = None,
        previous: Optional[Dict[str, Any]] = None,
) -> Dict[str, Any]:
    """ Clean accuracy, each attack's robust and W-Robust accuracy, the worst case, router stats, sanity flags.

    `on_attack(partial_result)` is called after each attack (the result so far, `complete` False), so a
    caller can save it; `previous` is such a result (or its record) of an interrupted run of this evaluation, whose
    finished attacks are taken instead of run again; `random_start` is the sanity checks' PGD start. Raises
    EvaluationError for inputs that are not finite [0, 1] pixels, labels the model has no class for, an attack's
    invalid examples, or a `previous` of another model, image set or attack setting.
    """
    device = device or next(model.parameters()).device
    model = model.to(device).eval()
    _check_inputs(model, x, y, specs, batch_size, sanity_n if sanity else None, device)
    t_run = time.time()
    clean_pred, clean_p = [], []
    for i in range(0, len(x), batch_size):
        logits, pc = _predict(model, x[i:i + batch_size].to(device))
        clean_pred.append(logits.argmax(1).cpu())
        if pc is not None:
            clean_p.append(pc.float().cpu())
    clean_correct = torch.cat(clean_pred) == y
    p_clean_clean = torch.cat(clean_p) if clean_p else None
    clean_acc = clean_correct.float().mean().item()

    finished = _finished_attacks(previous, specs, clean_correct) if previous is not None else {}
    t_start = t_run - (previous or {}).get('elapsed_seconds', 0.0)  # checked by _finished_attacks
    attacks, outcomes = [], {}
    for spec in specs:
        if spec.name in finished:
            record, outcomes[spec.name] = finished[spec.name]
            attacks.append(record)
            continue
        out = _run_attack(model, spec, x, y, batch_size, device, seed, progress)
        correct = out['correct'] & clean_correct  # robust over all N: a clean mistake is not robust
        outcomes[spec.name] = correct
        robust = correct.float().mean().item()
        record = {'name': spec.name, 'kind': spec.kind, 'params': spec.params, 'robust_acc': robust,
                  'w_robust_acc': (clean_acc + robust) / 2, 'seconds': out['seconds'], 'router': None}
        if out['warnings']:
            record['autoattack_warnings'] = out['warnings']
        if out['p_clean'] is not None:
            record['router'] = {'p_clean_adv_mean': out['p_clean'].mean().item(),
                                'detection_auc': detection_auc(p_clean_clean, out['p_clean'])}
        attacks.append(record)
        if on_attack is not None:
            on_attack(dict(_summary(clean_correct, p_clean_clean, attacks, outcomes), complete=False,
                           elapsed_seconds=time.time() - t_start))
    result = _summary(clean_correct, p_clean_clean, attacks, outcomes)
    if sanity:
        result['sanity'], result['eps_curve'], result['sanity_cost'] = sanity_checks(
            model, x, y, clean_correct, specs, attacks, batch_size, device, seed, sanity_eps, progress,
            sanity_n=sanity_n, random_start=random_start)
    result['complete'] = True
    result['elapsed_seconds'] = time.time() - t_start
    return result


def sanity_checks(model, x, y, clean_correct, specs, attacks, batch_size, device, seed,
                  sanity_eps: Sequence[float] = SANITY_EPS, progress: bool = True, sanity_n: int = SANITY_N,
                  random_start: str = 'uniform'):
    """ (checks, eps curve, cost): each check is {'check', 'passed', 'detail'}; the curve is the accuracy left by
    PGD-20 at each eps (or a smaller one) on the first `sanity_n` points; cost says what each part took. """
    kinds = {s.name: s for s in specs}
    by_name = {a['name']: a for a in attacks}
    eps = next((s.params['eps'] for s in specs if 'eps' in s.params), PROTOCOL_EPS)
    m = min(sanity_n, len(x))
    xs, ys = x[:m], y[:m]
    tol = 1.0 / len(x) + 1e-9  # one sample of slack against attack randomness

    def pgd(name, e, steps, robust):
        """PGD on the points of the subset still robust; returns the new robust mask, points attacked, seconds."""
        idx = robust.nonzero().squeeze(1)
        if len(idx) == 0:
            return robust, 0, 0.0
        spec = pgd_spec(name, e, max(e / 4, 0.5 / 255), steps, 'ce', random_start)
        out = _run_attack(model, spec, xs[idx], ys[idx], batch_size, device, seed, progress)
        robust = robust.clone()
        robust[idx] = out['correct']
        return robust, len(idx), out['seconds']

    robust, curve, at_eps, sweep_seconds = clean_correct[:m].clone(), [], None, 0.0  # a clean mistake is broken at every eps
    for e in sorted(set(sanity_eps) | {eps}):
        robust, attacked, seconds = pgd(f'sweep_{e * 255:.3g}', e, 20, robust)
        curve.append({'eps': e, 'robust_acc': robust.float().mean().item(), 'attacked': attacked})
        sweep_seconds += seconds
        if e == eps:
            at_eps = robust
    checks: List[Dict[str, Any]] = []
    largest = curve[-1]
    checks.append({'check': 'accuracy reaches ~0 at a large eps', 'passed': largest['robust_acc'] <= 0.02,
                   'detail': f"PGD-20 at eps {largest['eps'] * 255:.0f}/255: {largest['robust_acc']:.3f} (expected <= 0.02); "
                             'per eps: ' + ', '.join(f"{c['eps'] * 255:.3g}/255: {c['robust_acc']:.3f}" for c in curve)})
    long, attacked_100, seconds_100 = pgd('steps_100', eps, 100, at_eps)
    short_acc, long_acc = at_eps.float().mean().item(), long.float().mean().item()
    slack = max(1.0 / m, 0.02) + 1e-9
    checks.append({'check': 'PGD-20 has converged (PGD-100 breaks few more points)', 'passed': long_acc >= short_acc - slack,
                   'detail': f'on {m} points: PGD-20 {short_acc:.3f}, '
                             f'PGD-100 on the {attacked_100} it left robust {long_acc:.3f} '
                             f'(step {max(eps / 4, 0.5 / 255) * 255:.3g}/255; expected a drop <= {slack:.3f})'})
    cost = {'n': m, 'random_start': random_start, 'eps_sweep_seconds': sweep_seconds,
            'eps_sweep_attacked': sum(c['attacked'] for c in curve), 'pgd100_attacked': attacked_100,
            'pgd100_seconds': seconds_100}
    cost['seconds'] = cost['eps_sweep_seconds'] + seconds_100
    white = [a for a in attacks if kinds[a['name']].kind in ('white-box', 'router') and kinds[a['name']].iterative]
    best_white = min(white, key=lambda a: a['robust_acc']) if white else None
    for a in attacks:
        spec = kinds[a['name']]
        if spec.kind in ('black-box', 'transfer') and best_white is not None:
            checks.append({'check': f"{a['name']} ({spec.kind}) does not beat white-box attacks",
                           'passed': a['robust_acc'] >= best_white['robust_acc'] - tol,
                           'detail': f"{a['name']} {a['robust_acc']:.3f} vs best white-box {best_white['name']} {best_white['robust_acc']:.3f}"})
        if not spec.iterative and best_white is not None:
            checks.append({'check': f"{a['name']} (single-step) does not beat iterative attacks",
                           'passed': a['robust_acc'] >= best_white['robust_acc'] - tol,
                           'detail': f"{a['name']} {a['robust_acc']:.3f} vs {best_white['name']} {best_white['robust_acc']:.3f}"})
    if 'autoattack' in by_name and by_name['autoattack'].get('autoattack_warnings'):
        checks.append({'check': "AutoAttack's own checks", 'passed': False,
                       'detail': ' | '.join(by_name['autoattack']['autoattack_warnings'])})
    return checks, curve, cost
