#!/usr/bin/env bash
# Test-only tools that pip cannot install together with the package, set up after `pip install -e ".[test]"`:
# - olah, the offline Hub mirror that tests/test_hub_loading.py starts, in its own virtualenv (never the project's);
# - torchattacks, the independent attacks tests/test_attack_references.py compares ours with, installed into the
#   test environment (VENV, default .venv) without its dependencies: it pins requests 2.25, whose idna<3 conflicts
#   with huggingface_hub's httpx, and needs only torch, torchvision, numpy, scipy and tqdm, which are already there;
# - timm's own tests (tests/test_models.py and its LICENSE, Apache-2.0) from the sdist of the installed timm version,
#   unpacked into the git-ignored .timm-tests/timm-<version>/ that tests/test_timm_upstream.py runs over our models.
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
TIMM_VERSION=$("$VENV/bin/python" -c 'import timm; print(timm.__version__)')
TIMM_TESTS=.timm-tests/timm-$TIMM_VERSION
if [ ! -f "$TIMM_TESTS/tests/test_models.py" ]; then
    mkdir -p .timm-tests
    sdist=$(mktemp -d .timm-tests/.download.XXXXXX)
    trap 'rm -rf "$sdist"' EXIT
    "$VENV/bin/pip" download --quiet --disable-pip-version-check --no-deps --no-binary :all: -d "$sdist" "timm==$TIMM_VERSION" \
        || { echo "tests/setup_tools.sh: could not download the sdist of timm $TIMM_VERSION from PyPI; for a timm not on PyPI" \
                  "point AWNET_TIMM_TESTS at a pytorch-image-models checkout of that version" >&2; exit 1; }
    tar -xzf "$sdist/timm-$TIMM_VERSION.tar.gz" -C "$sdist" "timm-$TIMM_VERSION/tests" "timm-$TIMM_VERSION/LICENSE" "timm-$TIMM_VERSION/PKG-INFO"
    rm -rf "$TIMM_TESTS" && mv "$sdist/timm-$TIMM_VERSION" "$TIMM_TESTS"
fi
