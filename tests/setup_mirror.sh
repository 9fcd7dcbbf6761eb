#!/usr/bin/env bash
# olah, the offline Hub mirror that tests/test_hub_loading.py starts, in its own virtualenv (never the project's).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv-olah/bin/olah-cli ]; then
    python3 -m venv .venv-olah
    .venv-olah/bin/pip install --quiet --disable-pip-version-check olah==0.5.4
fi
