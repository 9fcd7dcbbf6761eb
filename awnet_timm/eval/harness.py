""" Robustness evaluation: every attack scored on the real model, per-sample worst case, router statistics

Conventions (RobustBench / AutoAttack, ROBUST_EVAL.md section 1): the model is in eval mode and, for an
AW-Net, in route auto for every score; inputs are [0, 1] pixels and eps is in pixel units; robust
accuracy is over all N points (a point misclassified when clean is not robust); fp32.
W-Robust accuracy = (clean + robust) / 2 (the paper's Eq. 23), for each attack and for the worst case.
The evaluator knows nothing about gradients: attacks come from `suite.py` as objects with `perturb`.

Sanity checks (Carlini et al. 2019) run with the evaluation and flag gradient masking:
accuracy falls as eps grows and is ~0 at a large eps; more PGD steps never raise accuracy; a black-box
attack never beats the best white-box one; a single-step attack never beats an iterative one.
"""
import time
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from ..models import AWNet
from .suite import AttackSpec, pgd_spec

__all__ = ['evaluate_robustness', 'detection_auc', 'sanity_checks', 'SANITY_EPS']

SANITY_EPS = (2 / 255, 4 / 255, 8 / 255, 12 / 255, 16 / 255, 32 / 255, 128 / 255)


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
    if isinstance(model, AWNet) and model.router is not None:
        logits, router_out = model.forward_with_router(x, route='auto')
        return logits.argmax(1), router_out.p_clean
    return model(x).argmax(1), None


def _run_attack(model, spec: AttackSpec, x, y, batch_size, device, seed, progress) -> Dict[str, Any]:
    """Correct-after-attack mask and P(clean) on the examples, over all of x."""
    attack = spec.build(model)
    torch.manual_seed(seed)
    correct, p_clean = [], []
    t0 = time.time()
    eps = spec.params.get('eps')
    batches = range(0, len(x), batch_size)
    for i in tqdm(batches, desc=spec.name, leave=False, disable=not progress):
        xb, yb = x[i:i + batch_size].to(device), y[i:i + batch_size].to(device)
        x_adv = attack.perturb(xb, yb)
        lo, hi = torch.aminmax(x_adv)
        outside = (lo < 0) | (hi > 1)
        if eps is not None and x_adv.shape == xb.shape:
            outside |= (x_adv - xb).abs().max() > eps + 1e-5
        if x_adv.shape != xb.shape or outside.item():  # one host sync per batch
            raise RuntimeError(f"attack '{spec.name}' returned examples outside the eps-ball or [0, 1]")
        pred, pc = _predict(model, x_adv)
        correct.append((pred == yb).cpu())
        if pc is not None:
            p_clean.append(pc.float().cpu())
    return {'correct': torch.cat(correct), 'p_clean': torch.cat(p_clean) if p_clean else None,
            'seconds': time.time() - t0, 'warnings': list(getattr(attack, 'check_warnings', []))}


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
        progress: bool = True,
) -> Dict[str, Any]:
    """Clean accuracy, each attack's robust and W-Robust accuracy, the worst case, router stats, sanity flags."""
    if x.dim() != 4 or x.dtype != torch.float32 or x.min() < 0 or x.max() > 1:
        raise ValueError(f'evaluation takes float32 (N, C, H, W) pixels in [0, 1], got {tuple(x.shape)} {x.dtype}')
    if len(x) != len(y):
        raise ValueError(f'{len(x)} images but {len(y)} labels')
    device = device or next(model.parameters()).device
    model = model.to(device).eval()
    t_start = time.time()
    clean_pred, clean_p = [], []
    for i in range(0, len(x), batch_size):
        pred, pc = _predict(model, x[i:i + batch_size].to(device))
        clean_pred.append(pred.cpu())
        if pc is not None:
            clean_p.append(pc.float().cpu())
    clean_correct = torch.cat(clean_pred) == y
    p_clean_clean = torch.cat(clean_p) if clean_p else None
    clean_acc = clean_correct.float().mean().item()

    attacks, worst = [], clean_correct.clone()
    outcomes = {}
    for spec in specs:
        out = _run_attack(model, spec, x, y, batch_size, device, seed, progress)
        correct = out['correct'] & clean_correct  # robust over all N: a clean mistake is not robust
        outcomes[spec.name] = correct
        worst &= correct
        robust = correct.float().mean().item()
        record = {'name': spec.name, 'kind': spec.kind, 'params': spec.params, 'robust_acc': robust,
                  'w_robust_acc': (clean_acc + robust) / 2, 'seconds': out['seconds'], 'router': None}
        if out['warnings']:
            record['autoattack_warnings'] = out['warnings']
        if out['p_clean'] is not None:
            record['router'] = {'p_clean_adv_mean': out['p_clean'].mean().item(),
                                'detection_auc': detection_auc(p_clean_clean, out['p_clean'])}
        attacks.append(record)
    robust_worst = worst.float().mean().item()
    result = {
        'clean_acc': clean_acc,
        'attacks': attacks,
        'worst_case': {'robust_acc': robust_worst, 'w_robust_acc': (clean_acc + robust_worst) / 2,
                       'attacks': [s.name for s in specs]},
        'router': {'p_clean_clean_mean': p_clean_clean.mean().item()} if p_clean_clean is not None else None,
        # per image, '1' = still correctly classified: enough to recompute any worst case later
        'per_sample': {'clean': _bits(clean_correct), 'worst_case': _bits(worst),
                       **{name: _bits(c) for name, c in outcomes.items()}},
    }
    if sanity:
        result['sanity'], result['eps_curve'] = sanity_checks(model, x, y, clean_correct, specs, attacks, batch_size,
                                                              device, seed, sanity_eps, progress)
    result['elapsed_seconds'] = time.time() - t_start
    return result


def sanity_checks(model, x, y, clean_correct, specs, attacks, batch_size, device, seed,
                  sanity_eps: Sequence[float] = SANITY_EPS, progress: bool = True):
    """(checks, eps curve): each check is {'check', 'passed', 'detail'}; the curve is PGD-20 accuracy per eps."""
    n = len(x)
    tol = 1.0 / n + 1e-9  # one sample of slack against attack randomness
    by_name = {a['name']: a for a in attacks}
    kinds = {s.name: s for s in specs}

    def acc(spec):
        return (_run_attack(model, spec, x, y, batch_size, device, seed, progress)['correct'] & clean_correct).float().mean().item()

    checks: List[Dict[str, Any]] = []
    curve = [{'eps': e, 'robust_acc': acc(pgd_spec(f'sweep_{e:.4f}', e, max(e / 4, 0.5 / 255), 20))} for e in sanity_eps]
    rising = [(a['eps'], b['eps']) for a, b in zip(curve, curve[1:]) if b['robust_acc'] > a['robust_acc'] + tol]
    checks.append({'check': 'accuracy falls as eps grows', 'passed': not rising,
                   'detail': 'PGD-20 accuracy per eps: ' + ', '.join(f"{c['eps'] * 255:.0f}/255: {c['robust_acc']:.3f}" for c in curve)
                   + (f'; rises between {rising}' if rising else '')})
    largest = curve[-1]
    checks.append({'check': 'accuracy reaches ~0 at a large eps', 'passed': largest['robust_acc'] <= 0.02,
                   'detail': f"PGD-20 at eps {largest['eps'] * 255:.0f}/255: {largest['robust_acc']:.3f} (expected <= 0.02)"})
    eps = next((s.params['eps'] for s in specs if 'eps' in s.params), 8 / 255)
    short, long = acc(pgd_spec('steps_20', eps, 2 / 255, 20)), acc(pgd_spec('steps_100', eps, 2 / 255, 100))
    checks.append({'check': 'more steps never raise accuracy', 'passed': long <= short + tol,
                   'detail': f'PGD-20 {short:.3f}, PGD-100 {long:.3f} (step 2/255)'})
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
    return checks, curve
