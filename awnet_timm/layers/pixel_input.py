""" The input contract of the models here: a (B, C, H, W) floating-point batch of pixels in [0, 1]

The models normalize their inputs themselves (so attacks take eps in pixel units), unlike most timm
models. An input already normalized (ImageNet/CIFAR mean and std) or in 0-255 would give garbage
silently, so its values are checked in eager mode, without a host sync per call:
`input_check='warn'` (the default) checks the first batch a model sees (one sync, once) and warns
with a `PixelRangeWarning` if it is not pixels in [0, 1]; `'error'` checks batches until one passes
and raises a ValueError for one that does not; `'always'` checks every batch (one sync each) and
raises; `'off'` never checks. The default only warns because timm's own tools feed other values on
purpose (random normal batches in its tests and benchmark.py, normal noise from random erasing).
Traced, scripted and compiled graphs, and meta tensors, skip the value check; the shape and dtype
checks cost nothing and always run.
"""
import warnings
from typing import Any, Optional

import torch
import torch.nn as nn
from timm.layers import register_notrace_function
from torch.fx import _symbolic_trace

# torch >= 2.10 warns on is_fx_tracing (it is also true under torch.export); the symbolic-tracing test is what we mean
is_fx_tracing = getattr(_symbolic_trace, 'is_fx_symbolic_tracing', _symbolic_trace.is_fx_tracing)

__all__ = ['INPUT_CHECKS', 'PixelRangeWarning', 'check_pixel_batch', 'check_pixel_values', 'input_check_mode']

INPUT_CHECKS = ('warn', 'error', 'always', 'off')
_TOLERANCE = 1. / 255  # one grey level: resampling may overshoot [0, 1] slightly


class PixelRangeWarning(UserWarning):
    """A model was given a batch that is not pixels in [0, 1] (under `input_check='warn'`)."""


def input_check_mode(mode: str) -> str:
    if mode == 'first':  # the default of awnet-timm <= 0.1's: refuse a bad first batch, which 'error' does
        return 'error'
    if mode not in INPUT_CHECKS:
        raise ValueError(f"unknown input_check '{mode}': expected one of {', '.join(INPUT_CHECKS)}")
    return mode


@register_notrace_function
def check_pixel_batch(x: torch.Tensor, in_chans: int) -> None:
    if x.dim() != 4 or x.shape[1] != in_chans:
        raise ValueError(
            f'the model expects a (B, {in_chans}, H, W) batch of pixels in [0, 1], got shape {list(x.shape)}')
    if not x.is_floating_point():
        raise TypeError(
            f'the model expects floating-point pixels in [0, 1], got dtype {x.dtype} (for uint8 images use x.float() / 255)')


def _value_problem(finite: bool, lo: float, hi: float) -> Optional[str]:
    """What is wrong with a batch whose finite values span [lo, hi], or None for pixels in [0, 1]."""
    if not finite:
        return 'the input holds NaN or inf values: the model expects finite pixels in [0, 1]'
    if hi > 1. + _TOLERANCE and hi <= 255. and lo >= 0.:
        return f'the input holds values up to {hi:g}: the model expects pixels in [0, 1], not 0-255 (divide by 255)'
    if lo < -_TOLERANCE or hi > 1. + _TOLERANCE:
        return (f'the input holds values in [{lo:.3g}, {hi:.3g}]: the model expects pixels in [0, 1] and normalizes '
                f'them itself, so do not apply mean/std normalization (its pretrained_cfg says mean=0, std=1, so '
                f'timm\'s transforms already give [0, 1])')
    return None


@torch.jit.unused
def check_pixel_values(model: nn.Module, x: Any, in_chans: int, weight_dtype: torch.dtype) -> None:
    """Eager checks of `x` for `model` (its `input_check` attribute says how often the values are checked)."""
    if torch.compiler.is_compiling() or is_fx_tracing():
        return
    if not isinstance(x, torch.Tensor):
        raise TypeError(
            f'the model expects a torch.Tensor of pixels in [0, 1] with shape (B, {in_chans}, H, W), got '
            f'{type(x).__module__}.{type(x).__name__} (for a uint8 NHWC numpy array use '
            f'torch.from_numpy(a).permute(0, 3, 1, 2).float() / 255)')
    check_pixel_batch(x, in_chans)
    if x.dtype != weight_dtype and not torch.is_autocast_enabled(x.device.type):
        raise TypeError(f'the model\'s weights are {weight_dtype} but the input is {x.dtype}: convert one of them '
                        f'(x.to({weight_dtype}) or model.to({x.dtype})), or run under torch.autocast')
    mode = model.input_check
    if mode == 'off' or (mode != 'always' and model.input_checked) or x.device.type == 'meta':
        return  # a meta tensor has no values (timm's cfg tests run models on the meta device)
    with torch.no_grad():
        x = x.detach()
        finite = torch.isfinite(x).all()
        lo, hi = torch.aminmax(torch.where(torch.isfinite(x), x, torch.zeros((), dtype=x.dtype, device=x.device)))
        finite, lo, hi = torch.stack([finite.to(torch.float32), lo.to(torch.float32), hi.to(torch.float32)]).tolist()
    problem = _value_problem(bool(finite), lo, hi)
    if problem is not None and mode != 'warn':
        raise ValueError(f"{problem}; model.set_input_check('warn') only warns, 'off' turns the check off")
    model.input_checked = True  # 'warn' checks one batch per model, good or bad
    if problem is not None:
        warnings.warn(f"{problem}. This model warns once; model.set_input_check('error') refuses such batches, "
                      f"'off' silences the check (random test or benchmark inputs are expected to trigger it)",
                      PixelRangeWarning, stacklevel=2)
