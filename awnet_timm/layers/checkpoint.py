""" Gradient checkpointing that moves BatchNorm running statistics once per step, not twice

torch.utils.checkpoint runs a segment's forward again in backward; in training mode that recompute
would update every BatchNorm's running mean and variance (and num_batches_tracked) a second time
with the same batch. `checkpoint_module` restores the segment's buffers after the recompute, so the
statistics end as one forward left them.
"""
from contextlib import contextmanager, nullcontext
from typing import Any, Iterator, Tuple

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

__all__ = ['checkpoint_module']


@contextmanager
def _buffers_restored(module: nn.Module) -> Iterator[None]:
    saved = [(b, b.clone()) for b in module.buffers()] if module.training else []
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


def checkpoint_module(module: nn.Module, *args: Any) -> Any:
    """`module(*args)` under non-reentrant checkpointing, its buffers left as the first forward set them."""
    def contexts() -> Tuple[Any, Any]:
        return nullcontext(), _buffers_restored(module)
    return checkpoint(module, *args, use_reentrant=False, context_fn=contexts)
