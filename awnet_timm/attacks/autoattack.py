""" AutoAttack (Croce and Hein, ICML 2020) through the `pyautoattack` package, as one more attack class

A thin adapter: pyautoattack's constructor is keyword-only, defaults to device 'cpu', logs through the
'auto-attack' logger (silent unless configured) and returns (x_adv, y_adv). This class passes the
device of the batch, runs the model in eval mode as a logits-only module, collects the warnings of
AutoAttack's own checks (randomness, zero gradients, ...) in `check_warnings`, and returns x_adv.
"""
import logging
from typing import List, Optional, Sequence

import torch
import torch.nn as nn

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
        verbose: Let AutoAttack's progress log through.
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
        self.verbose = verbose
        self.check_warnings: List[str] = []

    def perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        from pyautoattack import AutoAttack as _AutoAttack
        logger = logging.getLogger('auto-attack')
        level, collect = logger.level, _Collect()
        logger.setLevel(logging.DEBUG if self.verbose else logging.WARNING)
        logger.addHandler(collect)
        try:
            with eval_mode(self.model):
                aa = _AutoAttack(_Logits(self.model), attacks=self.attacks, device=x.device, eps=self.eps,
                                 norm=self.norm, seed=self.seed, version=self.version)
                if self.square_queries is not None:
                    aa.square.n_queries = self.square_queries
                x_adv, _ = aa.run_standard_evaluation(x.detach(), y, batch_size=self.batch_size)
        finally:
            logger.removeHandler(collect)
            logger.setLevel(level)
        self.check_warnings += collect.messages
        return x_adv.detach()
