#!/usr/bin/env bash
# Run HERE (network and the offline data at hand), before a GPU call: fills the git-ignored folders the call carries.
#   .data/cifar10/  the three npz files of the offline CIFAR-10 copy (21.3 MB)
#   .whl/           wheels the GPU machine lacks: pyautoattack (slimmed: its 44 MB pickled example model removed)
#                   and timm (installed there only if the machine's timm is outside >=1.0.31,<1.1)
# Usage: bash scripts/prepare_gpu_carry.sh [CIFAR10_DIR]    (default ../shared/data/cifar10; PYTHON picks the pip)
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=${1:-../shared/data/cifar10}
PY=${PYTHON:-python3}
mkdir -p .data/cifar10 .whl
cp "$SRC"/cifar10-train-jpeg.npz "$SRC"/cifar10-test-jpeg.npz "$SRC"/cifar10-test-exact.npz .data/cifar10/
# the GPU machine runs CPython 3.12 on x86-64 (device README); both wheels are pure Python
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform any -d .whl \
    pyautoattack==0.2.0 timm==1.0.31
"$PY" - .whl/pyautoattack-0.2.0-py3-none-any.whl <<'PYEOF'
"""Drop pyautoattack/examples/ (a pickled 44 MB test model and TF weights) from the wheel, RECORD included."""
import os, sys, zipfile
path = sys.argv[1]
drop = lambda name: name.startswith('pyautoattack/examples/')  # noqa: E731
with zipfile.ZipFile(path) as src:
    if not any(drop(n) for n in src.namelist()):
        sys.exit(0)  # already slim
    tmp = path + '.tmp'
    with zipfile.ZipFile(tmp, 'w', zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            if drop(info.filename):
                continue
            data = src.read(info)
            if info.filename.endswith('.dist-info/RECORD'):
                data = b''.join(l for l in data.splitlines(True) if not drop(l.decode()))
            dst.writestr(info, data)
os.replace(tmp, path)
PYEOF
sha256sum .data/cifar10/*.npz
du -sh .data .whl
