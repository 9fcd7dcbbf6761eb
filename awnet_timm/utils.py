"""Small helpers shared by training, evaluation, Hub export and the CLI: atomic files, hashes, eps as text."""
import argparse
import hashlib
import os
import tempfile
from typing import Callable

__all__ = ['atomic_write', 'atomic_write_text', 'sha256_file', 'eps_string', 'number_arg']


def atomic_write(path: str, write: Callable[[str], None]) -> None:
    """Call write(tmp) on a temporary file beside `path`, then rename it over `path` (never half-written)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f'.{os.path.basename(path)}.', suffix='.tmp')
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes the file private; give it the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write_text(path: str, text: str) -> None:
    def write(tmp):
        with open(tmp, 'w') as f:
            f.write(text)
    atomic_write(path, write)


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
