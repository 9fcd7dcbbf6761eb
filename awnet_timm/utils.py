"""Small helpers shared by training, evaluation, Hub export and the CLI: atomic files, hashes, eps as text, devices."""
import argparse
import hashlib
import json
import os
import tempfile
from typing import Any, Callable, Type

import torch

__all__ = ['native_bf16', 'atomic_write', 'atomic_write_text', 'read_json', 'sha256_file', 'eps_string', 'number_arg', 'resolve_device', 'DeviceError',
           'check_output_path', 'usual_mode']


class DeviceError(ValueError):
    """A device that does not exist on this machine, or a device name torch does not know."""


def resolve_device(name: str = 'auto') -> torch.device:
    """ The torch.device for a --device value: 'auto' (cuda when present, else cpu), 'cpu', 'cuda', 'cuda:N', 'mps'.

    Raises DeviceError (a ValueError) for an unknown name or a device this machine does not have.
    """
    if name == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DeviceError(f"unknown device '{name}': expected 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'") from None
    if device.type == 'cuda':
        if not torch.cuda.is_available():
            raise DeviceError(f"device '{name}' was asked for, but torch sees no CUDA GPU here "
                              f"(torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'}): use --device cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(f"device '{name}' does not exist: this machine has {torch.cuda.device_count()} CUDA "
                              f"device(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    elif device.type == 'mps' and not torch.backends.mps.is_available():
        raise DeviceError(f"device '{name}' was asked for, but MPS is not available here: use --device cpu or auto")
    elif device.type not in ('cpu', 'cuda', 'mps'):
        raise DeviceError(f"device '{name}' is not supported: expected 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")
    return device


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bf16 matmuls and convs natively: a CUDA GPU with bf16, or a CPU with AMX-BF16 tiles
    (Intel Sapphire Rapids and later; oneDNN runs bf16 there at several times its fp32 rate). A CPU without them
    (AVX2, AVX-512 without AMX) emulates bf16, which is slower than fp32."""
    if device.type == 'cuda':
        return torch.cuda.is_bf16_supported()
    if device.type == 'cpu':
        amx = getattr(torch.cpu, '_is_amx_tile_supported', None)  # torch >= 2.3
        return bool(amx is not None and amx() and torch.backends.mkldnn.is_available())
    return False


def usual_mode(directory: bool = False) -> int:
    """The permissions open()/mkdir give under the current umask (mkstemp, mkdtemp and safetensors make files private)."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


def atomic_write(path: str, write: Callable[[str], None]) -> None:
    """Call write(tmp) on a temporary file beside `path`, then rename it over `path` (never half-written)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f'.{os.path.basename(path)}.', suffix='.tmp')
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, usual_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def check_output_path(path: str) -> None:
    """ Refuse, before any work is done, a file path that cannot be written (ValueError saying why).

    Catches a path that is a folder, a path under a regular file, and a folder this process may not write to
    (by creating and removing a temporary file there; the missing folders are created, as the writer would).
    """
    target = os.path.abspath(path)
    if os.path.isdir(target):
        raise ValueError(f"cannot write '{path}': it is a folder; give a file path")
    folder = os.path.dirname(target)
    existing = folder
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ValueError(f"cannot write '{path}': '{existing}' is a file, not a folder")
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f'.{os.path.basename(target)}.', suffix='.tmp')
        os.close(fd)
        os.remove(tmp)
    except OSError as e:
        raise ValueError(f"cannot write '{path}': {e.strerror or e}") from None


def atomic_write_text(path: str, text: str) -> None:
    def write(tmp):
        with open(tmp, 'w') as f:
            f.write(text)
    atomic_write(path, write)


def read_json(path: str, error: Type[Exception] = ValueError, what: str = '') -> Any:
    """The JSON value in `path`; a file that is not valid UTF-8 JSON raises `error` naming it (`what`: e.g. 'plan')."""
    try:
        with open(path, encoding='utf-8') as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise error(f"{what + ' ' if what else ''}'{path}' is not valid JSON: {e}") from None


def sha256_file(path: str) -> str:
    """Hex sha256 of a file's bytes (what model cards and evaluation records pin)."""
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            h.update(block)
    return h.hexdigest()


def eps_string(eps: float) -> str:
    """8/255 for multiples of 1/255, else the number."""
    k = eps * 255
    return f'{round(k)}/255' if abs(k - round(k)) < 1e-6 else f'{eps:g}'


def number_arg(text: str) -> float:
    """argparse type: a float, also written as a fraction (--eps 8/255)."""
    try:
        num, _, den = text.partition('/')
        return float(num) / float(den) if den else float(num)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f'expected a number such as 0.03 or 8/255, got {text!r}')
