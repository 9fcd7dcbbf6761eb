#!/usr/bin/env bash
# The release evaluation of exported Hub folders on a bare GPU machine in one call: offline install, data check, then
# for each folder `awnet eval` on the first N exact test images (the paper's attacks, the router attacks for an AW-Net,
# AutoAttack standard last, then the sanity checks) and clean accuracy on the 10,000 JPEG test images. scripts/README.md
# says how to run it on a GPU machine.
#
#   bash scripts/eval_on_gpu.sh RELEASE_DIR [RELEASE_DIR ...]     (a folder of `awnet export`: config.json, model.safetensors)
#
# Environment: DATA_DIR (.data/cifar10; the two test npz files suffice), N (1000), DEVICE (cuda; cpu runs the same
# steps here), RECORDS (where the records go: $OUT on the device machine), PYTHON (python3), CALL_SECONDS (300: every
# evaluation still running then gets Ctrl-C; the record written after its last finished attack stays, `complete` false).
# Records: RECORDS/<folder>.test-exact.json (and .md, -eps.png) and RECORDS/<folder>.test-jpeg.json.
# Exit: 0 all complete; 2 an evaluation failed or was cut; 3 no torch/CUDA; 4 the offline install failed; 5 bad data.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
[ $# -gt 0 ] || { echo "usage: eval_on_gpu.sh RELEASE_DIR [RELEASE_DIR ...]"; exit 2; }
DATA_DIR=${DATA_DIR:-$REPO/.data/cifar10}
N=${N:-1000}
DEVICE=${DEVICE:-cuda}
RECORDS=${RECORDS:-${OUT:-$REPO/output/gpu-eval}}
PY=${PYTHON:-python3}
CALL_SECONDS=${CALL_SECONDS:-300}
SITE=${SITE:-$REPO/output/gpu-site}
T0=$(date +%s)
say() { echo "[eval_on_gpu +$(( $(date +%s) - T0 ))s] $*"; }
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
dirs=()
for d in "$@"; do
  d=$(cd "$d" 2>/dev/null && pwd) && [ -f "$d/config.json" ] && [ -f "$d/model.safetensors" ] \
    || { echo "eval_on_gpu: $1 is not an exported Hub folder (config.json and model.safetensors expected)"; exit 2; }
  dirs+=("$d")
done
mkdir -p "$RECORDS" && RECORDS=$(cd "$RECORDS" && pwd)

# shellcheck source=scripts/gpu_setup.sh
source "$REPO/scripts/gpu_setup.sh"
say "1/4 the machine: python, packages, device"
check_machine || exit 3
say "2/4 offline install"
offline_install || exit 4
say "3/4 data: $DATA_DIR"
check_data "$DATA_DIR" cifar10-test-jpeg.npz cifar10-test-exact.npz || { say "the data in $DATA_DIR is not the offline CIFAR-10 copy"; exit 5; }

rc=0
for d in "${dirs[@]}"; do
  name=$(basename "$d")
  # the architecture and its arguments from config.json, so the records name the model as timm does
  read -r arch kwargs < <("$PY" -c "import json, sys; c = json.load(open(sys.argv[1])); print(c['architecture'], json.dumps(c.get('model_args', {}), separators=(',', ':')))" "$d/config.json") || exit 2
  left=$(( T0 + CALL_SECONDS - $(date +%s) ))
  [ "$left" -gt 30 ] || { say "no time left for $name"; rc=2; continue; }
  say "4/4 $name ($arch): clean on the 10,000 JPEG test images, then N=$N exact images, $left s left"
  common=(--model "$arch" --model-kwargs "$kwargs" --checkpoint "$d/model.safetensors" --data-dir "$DATA_DIR" --device "$DEVICE" --no-progress)
  timeout --signal=INT --kill-after=10 "$left" "$PY" -m awnet_timm.cli eval "${common[@]}" --split test --n 10000 \
      --attacks fgsm --no-sanity --out "$RECORDS/$name.test-jpeg.json" || rc=2
  left=$(( T0 + CALL_SECONDS - $(date +%s) ))
  # AutoAttack last: an evaluation cut by the time limit keeps every attack before it
  timeout --signal=INT --kill-after=10 "$left" "$PY" -m awnet_timm.cli eval "${common[@]}" --split test-exact --n "$N" \
      --attacks fgsm pgd_sat pgd_trades cw_inf router autoattack --out "$RECORDS/$name.test-exact.json" || rc=2
done
say "done (exit code $rc)"
exit $rc
