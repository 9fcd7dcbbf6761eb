#!/usr/bin/env bash
# timm's own pretrained tests (test_model_load_pretrained, test_model_features_pretrained) over the released tags,
# downloaded as a user downloads them: the weights restored from their release commits, served by `awnet mirror
# hub/releases` (an offline Hub mirror), into an empty Hugging Face cache. Tags without released weights are skipped
# with the reason. Needs `bash tests/setup_tools.sh` (olah, timm's tests) first.
#
#   bash scripts/test_pretrained_through_mirror.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
"$PYTHON" scripts/release_weights.py restore
port=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cache=$(mktemp -d)
"$PYTHON" -m awnet_timm.cli mirror hub/releases --port "$port" > "$cache/mirror.log" 2>&1 &
mirror=$!
trap 'kill $mirror 2>/dev/null; wait $mirror 2>/dev/null; rm -rf "$cache"' EXIT
for _ in $(seq 60); do grep -q HF_ENDPOINT "$cache/mirror.log" && break; sleep 0.5; done
HF_HOME=$cache/hf HF_HUB_OFFLINE=0 HF_ENDPOINT=http://127.0.0.1:$port \
    "$PYTHON" -m pytest -q -rs tests/test_timm_upstream.py -k pretrained
