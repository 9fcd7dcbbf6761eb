#!/usr/bin/env bash
# `awnet zoo` on a bare GPU machine in one call: offline install, data check, the smoke plan on the GPU and, only if
# it passed, the real plan, then the results packed for the trip back. scripts/README.md says how to run it.
#
#   bash scripts/zoo_on_gpu.sh [BUDGET_MINUTES]          (default 6.5: the real plan's budget)
#
# Environment: PLAN (cifar10), DEVICE (cuda; cpu runs the same steps here), DATA_DIR (.data/cifar10, filled by
# scripts/prepare_gpu_carry.sh), ZOO_DIR (output/gpu-zoo: git-ignored, so a warm machine keeps it between
# calls and no call carries it), PARTS_DIR (trip 1 of the packed results: $OUT on the device machine), PYTHON (python3), SMOKE_MINUTES (4),
# INCLUDE (optional stages of the real plan, space-separated, e.g. student_arat; none by default: the window is for AW-Net),
# CALL_SECONDS (530: the whole script ends by then, packed; the budget shrinks to fit).
# Exit: 0 all done; 1 the smoke plan failed (its records are packed to PARTS_DIR); 2 the real plan had a failed
# stage (what finished is packed); 3 the machine lacks torch/CUDA; 4 the offline install failed; 5 bad data.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
BUDGET=${1:-6.5}
PLAN=${PLAN:-cifar10}
DEVICE=${DEVICE:-cuda}
DATA_DIR=${DATA_DIR:-$REPO/.data/cifar10}
ZOO_DIR=${ZOO_DIR:-$REPO/output/gpu-zoo}
PARTS_DIR=${PARTS_DIR:-${OUT:-$ZOO_DIR-parts}}
PY=${PYTHON:-python3}
SMOKE_MINUTES=${SMOKE_MINUTES:-4}
INCLUDE=${INCLUDE:-}
CALL_SECONDS=${CALL_SECONDS:-530}
SITE=${SITE:-$REPO/output/gpu-site}  # the offline install, git-ignored like ZOO_DIR
T0=$(date +%s)
say() { echo "[zoo_on_gpu +$(( $(date +%s) - T0 ))s] $*"; }
awnet() { "$PY" -m awnet_timm.cli "$@"; }
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1

# shellcheck source=scripts/gpu_setup.sh
source "$REPO/scripts/gpu_setup.sh"

say "1/6 the machine: python, packages, device"
check_machine || exit 3

say "2/6 offline install: carried wheels, then the package itself (non-editable, its plans as package data)"
offline_install || exit 4

say "3/6 data: $DATA_DIR"
check_data "$DATA_DIR" cifar10-train-jpeg.npz cifar10-test-jpeg.npz cifar10-test-exact.npz || { say "the data in $DATA_DIR is not the offline CIFAR-10 copy"; exit 5; }

say "4/6 the smoke plan on $DEVICE"
rm -rf "$ZOO_DIR-smoke"
# every smoke stage must have run: a skipped one (no time) would leave a code path untried on this machine
if ! awnet zoo run --plan smoke --device "$DEVICE" --data-dir "$DATA_DIR" --out "$ZOO_DIR-smoke" --no-progress \
       --budget-minutes "$SMOKE_MINUTES" \
   || ! "$PY" -c "import json, sys; s = json.load(open(sys.argv[1]))['stages']; bad = [k for k, v in s.items() if v['status'] != 'done']; sys.exit(f'smoke stages not done: {bad}' if bad else 0)" "$ZOO_DIR-smoke/manifest.json"; then
  say "the smoke plan FAILED: the real plan does not start; packing the smoke records to $PARTS_DIR"
  awnet zoo pack "$ZOO_DIR-smoke" "$PARTS_DIR" --max-file-mb 15 --max-total-mb 62 --rest "$ZOO_DIR-smoke/pack-rest"
  exit 1
fi

# the call must end by T0 + CALL_SECONDS with the results packed: the budget shrinks to what is left after the
# smoke plan, less 60 s for the pack and 90 s for evaluation running past its deadline (it never stops below n_min)
left=$(( T0 + CALL_SECONDS - $(date +%s) ))
read -r budget limit < <("$PY" -c "b, left = float('$BUDGET'), $left; print(round(min(b, (left - 150) / 60), 2), int(min(b * 60 + 90, left - 60)))")
if [ "$limit" -lt 120 ]; then
  say "only $left s left of the call: not starting plan $PLAN"; exit 2
fi
say "5/6 plan $PLAN, budget $budget minutes (asked $BUDGET), hard stop after $limit s, into $ZOO_DIR"
rm -rf "$ZOO_DIR"
# past the hard stop the run gets Ctrl-C: the manifest is written after every stage, so only the stage running is lost
timeout --signal=INT --kill-after=20 "$limit" "$PY" -m awnet_timm.cli zoo run --plan "$PLAN" --budget-minutes "$budget" \
    --device "$DEVICE" --data-dir "$DATA_DIR" --out "$ZOO_DIR" --no-progress $(for s in $INCLUDE; do echo --include "$s"; done)
run_rc=$?

say "6/6 packing for the trip back: trip 1 -> $PARTS_DIR, later trips -> $ZOO_DIR/pack-rest/trip-N"
awnet zoo pack "$ZOO_DIR" "$PARTS_DIR" --max-file-mb 15 --max-total-mb 62 --max-files 6 --rest "$ZOO_DIR/pack-rest" || exit 2
cp "$ZOO_DIR/manifest.json" "$PARTS_DIR/zoo-manifest.json"  # readable at once, before unpacking
say "done (zoo run exit code $run_rc)"
[ "$run_rc" -eq 0 ] || exit 2
