#!/usr/bin/env bash
# Test-only tools that pip cannot install together with the package, set up after `pip install -e ".[test]"`:
# - olah, the offline Hub mirror that tests/test_hub_loading.py starts, in its own virtualenv (never the project's);
# - torchattacks, the independent attacks tests/test_attack_references.py compares ours with, installed into the
#   test environment (VENV, default .venv) without its dependencies: it pins requests 2.25, whose idna<3 conflicts
#   with huggingface_hub's httpx, and needs only torch, torchvision, numpy, scipy and tqdm, which are already there.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
if [ ! -x .venv-olah/bin/olah-cli ]; then
    python3 -m venv .venv-olah
    .venv-olah/bin/pip install --quiet --disable-pip-version-check olah==0.5.4
fi
if ! "$VENV/bin/python" -c 'import torchattacks' 2>/dev/null; then
    "$VENV/bin/pip" install --quiet --disable-pip-version-check --no-deps torchattacks==3.5.1
fi
"$VENV/bin/python" -c 'import scipy, torchattacks'  # its real dependencies are present
