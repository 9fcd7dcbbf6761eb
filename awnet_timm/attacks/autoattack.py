""" AutoAttack (Croce and Hein, ICML 2020) through the `pyautoattack` package, as one more attack class

A thin adapter: pyautoattack's constructor is keyword-only, defaults to device 'cpu', logs through the
'auto-attack' logger (silent unless configured) and returns (x_adv, y_adv). This class runs AutoAttack
on the model's device (the images may stay on the host: AutoAttack moves each of its batches), runs the
model in eval mode as a logits-only module, collects the warnings of AutoAttack's own checks
(randomness, zero gradients, ...) in `check_warnings`, shows its stages and the points still robust as a
progress bar (read from its log), and returns x_adv.

AutoAttack is meant to see the whole evaluation set in one call: it batches by itself (`batch_size`)
and seeds once, so its result does not depend on how a caller would have split the set.
"""
import logging
import re
from typing import List, Optional, Sequence

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from .pgd import eval_mode

__all__ = ['AutoAttack']


class _Logits(nn.Module):
    """The model as AutoAttack sees it: [0, 1] pixels -> logits, nothing else."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: List[str] = []

    def emit(self, record: logging.LogRecord):
        self.messages.append(record.getMessage())


class _Progress(logging.Handler):
    """AutoAttack's log lines as a progress bar: one step per stage, the points still robust as postfix."""

    def __init__(self, stages: Sequence[str], n: int, enabled: bool):
        super().__init__(logging.DEBUG)
        self.n, self.robust, self.stage = n, n, ''
        self.bar = tqdm(total=len(stages), desc='autoattack', unit='stage', leave=False, disable=not enabled)

    def emit(self, record: logging.LogRecord):
        text = record.getMessage()
        if m := re.match(r'initial (?:clean )?accuracy: ([\d.]+)%', text):
            self.robust = round(float(m.group(1)) * self.n / 100)
        elif m := re.match(r'running (\S+)', text):
            self.stage = m.group(1)
        elif m := re.match(r'\S+ - (\d+)/(\d+) - (\d+) out of \d+ successfully perturbed', text):
            self.robust -= int(m.group(3))
            self.bar.set_postfix_str(f'{self.stage} batch {m.group(1)}/{m.group(2)}, {self.robust}/{self.n} points left')
        elif text.startswith('robust accuracy after'):
            self.bar.update(1)
        elif text.startswith('no robust datapoints left'):
            self.bar.update(self.bar.total - self.bar.n)

    def close(self):
        self.bar.close()
        super().close()


class AutoAttack:
    """ AutoAttack: 'standard' (APGD-CE, APGD-T, FAB-T, Square), 'plus', or a custom list of its attacks.

    Args:
        model: Any module mapping [0, 1] pixels to logits.
        eps: Radius in pixel units.
        norm: 'Linf', 'L2' or 'L1'.
        version: 'standard', 'plus', 'rand' or 'custom' (then `attacks` names them, e.g. ['square']).
        attacks: For version 'custom': a subset of 'apgd-ce', 'apgd-t', 'fab-t', 'square', 'apgd-dlr', 'fab'.
        seed: AutoAttack's seed.
        batch_size: Images per AutoAttack batch.
        square_queries: Override Square's query budget (5,000 in 'standard').
        verbose: Let AutoAttack's log through to the logging system.
        progress: A progress bar over AutoAttack's stages with the points still robust.
    """

    def __init__(
            self,
            model: nn.Module,
            eps: float = 8 / 255,
            norm: str = 'Linf',
            version: str = 'standard',
            attacks: Optional[Sequence[str]] = None,
            seed: int = 0,
            batch_size: int = 500,
            square_queries: Optional[int] = None,
            verbose: bool = False,
            progress: bool = False,
    ):
        if version == 'custom' and not attacks:
            raise ValueError("AutoAttack version 'custom' needs attacks=[...], e.g. ['apgd-ce', 'square']")
        if version != 'custom' and attacks:
            raise ValueError(f"attacks={list(attacks)} needs version='custom' (version '{version}' fixes its own)")
        self.model = model
        self.eps, self.norm, self.version = eps, norm, version
        self.attacks = list(attacks) if attacks else None
        self.seed, self.batch_size = seed, batch_size
        self.square_queries = square_queries
        self.verbose, self.progress = verbose, progress
        self.check_warnings: List[str] = []

    def perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Adversarial examples for all of (x, y), on x's device; AutoAttack runs on the model's device."""
        from pyautoattack import AutoAttack as _AutoAttack
        device = next(self.model.parameters(), x).device
        logger = logging.getLogger('auto-attack')
        level, propagate = logger.level, logger.propagate
        collect = _Collect()
        try:
            with eval_mode(self.model):
                aa = _AutoAttack(_Logits(self.model), attacks=self.attacks, device=device, eps=self.eps,
                                 norm=self.norm, seed=self.seed, version=self.version)
                if self.square_queries is not None:
                    aa.square.n_queries = self.square_queries
                progress = _Progress(aa.attacks_to_run, len(x), self.progress)
                logger.setLevel(logging.DEBUG)  # the progress bar reads AutoAttack's debug lines
                logger.propagate = self.verbose
                logger.addHandler(collect)
                logger.addHandler(progress)
                try:
                    x_adv, _ = aa.run_standard_evaluation(x.detach(), y.to(x.device), batch_size=self.batch_size)
                finally:
                    logger.removeHandler(progress)
                    progress.close()
        finally:
            logger.removeHandler(collect)
            logger.setLevel(level)
            logger.propagate = propagate
        self.check_warnings += collect.messages
        return x_adv.detach()
