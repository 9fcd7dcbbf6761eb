#!/usr/bin/env bash
# Release the CPU campaign's models (plan cifar10-cpu) into hub/releases/: each as an fp16 Hub folder under its
# registered name, evaluated on that very file, then the weights through one commit (scripts/release_weights.py).
#
#   bash scripts/release_cpu_campaign.sh output/campaign/zoo [teachers|students|all] [--no-commit]
#
# Each stage is released under the name.tag the plan gives it (`release` in awnet_timm/zoo/plans/cifar10-cpu.json).
# Teachers (teacher_clean, teacher_robust; only once done): exported, then `awnet eval` on the exported file (the first
# N_TEACHER exact test images, default 500: FGSM, PGD-20, CW-inf; sanity checks on), then exported again with that
# record. Students (student_awnet_r18_025, student_cifar_resnet18_025): exported, then `awnet eval` on the exported file
# with the release evaluation of issue 17: the paper's attacks with AutoAttack standard and (AW-Net) the router
# attacks on the first N_STUDENT exact test images (default 500), then exported again with that record and the other
# student's record beside it in the card (`awnet export --compare`). AutoAttack
# makes this long on 2 cores (benchmarks/bench_autoattack.py; the README's Speed section): pause the campaign for it.
# Environment: PYTHON (default .venv/bin/python), DATA_DIR (default ../shared/data/cifar10), N_TEACHER, N_STUDENT.
set -euo pipefail
cd "$(dirname "$0")/.."
ZOO=${1:?usage: release_cpu_campaign.sh ZOO_DIR [teachers|students|all] [--no-commit]}
WHAT=${2:-all}
COMMIT=1; [ "${3:-}" = "--no-commit" ] && COMMIT=0
PYTHON=${PYTHON:-.venv/bin/python}
DATA_DIR=${DATA_DIR:-../shared/data/cifar10}
N_TEACHER=${N_TEACHER:-500}
N_STUDENT=${N_STUDENT:-500}
AWNET=("$PYTHON" -m awnet_timm.cli)
EVAL_DIR=$ZOO/release-eval
mkdir -p "$EVAL_DIR"
released=()

release_of() {  # the name.tag the plan releases a stage as: release_of STAGE -> "NAME TAG"
    "$PYTHON" -c "from awnet_timm.zoo import load_plan; r = load_plan('cifar10-cpu').stage('$1').release; print(*r.split('.', 1))"
}

manifest() {  # a field of the zoo manifest: manifest STAGE KEY
    "$PYTHON" -c "import json,sys; m=json.load(open(sys.argv[1])); print(m['stages'].get(sys.argv[2], {}).get(sys.argv[3], ''))" \
        "$ZOO/manifest.json" "$1" "$2"
}

release_teacher() {  # STAGE
    local stage=$1 name tag status run out
    read -r name tag <<< "$(release_of "$stage")"
    status=$(manifest "$stage" status)
    if [ "$status" != "done" ]; then echo "$stage: status '$status', not released (it trains to its planned total first)"; return; fi
    run=$ZOO/$(manifest "$stage" run_dir)
    out=hub/releases/$name.$tag
    "${AWNET[@]}" export "$run" --dtype fp16 --tag "$tag" --out "$out" --overwrite
    "${AWNET[@]}" eval --model "$name" --checkpoint "$out/model.safetensors" --data-dir "$DATA_DIR" --n "$N_TEACHER" \
        --attacks fgsm pgd_sat cw_inf --device cpu --no-progress --out "$EVAL_DIR/$name.$tag.json"
    "${AWNET[@]}" export "$run" --dtype fp16 --tag "$tag" --out "$out" --eval "$EVAL_DIR/$name.$tag.json" --overwrite
    provenance "$stage" "$out/README.md"
    released+=("$out")
}

provenance() {  # STAGE CARD: append how the campaign trained a stage (slices, epochs, CPU time, holdout)
    "$PYTHON" - "$ZOO/manifest.json" "$1" "$2" <<'PY'
import json, os, statistics, sys
m, stage, card = json.load(open(sys.argv[1])), sys.argv[2], sys.argv[3]
s = m['stages'][stage]
slices = [x for x in m['slices'] if x['stages'].get(stage, {}).get('epochs_trained')]
epochs = [e for x in slices for e in x['stages'][stage]['epoch_seconds']]
text = (f"\n## Trained by `awnet zoo` (plan `{m['plan_name']}`, stage `{stage}`)\n\n"
        f"{s['epochs_done']} epoch(s) of a planned {s['epochs_planned']} over {s['images_per_epoch']} training images "
        f"(1000 more held out for selection) in {len(slices)} slice(s), on {s['device']} ({s['precision']}): "
        f"{s['cpu_seconds'] / 60:.0f} CPU-minutes (process time, both threads), a median epoch of "
        f"{statistics.median(epochs):.0f} s ({s['images_per_epoch'] / statistics.median(epochs):.0f} training images/s). "
        f"Holdout at the chosen epoch {s['best']['epoch']}: {100 * s['best']['val_clean_acc']:.1f}% clean, "
        f"{100 * s['best']['val_pgd_acc']:.1f}% PGD-10.\n")
with open(card) as f:
    text = f.read() + text
with open(card + '.tmp', 'w') as f:  # atomic: the card is whole or as it was
    f.write(text)
os.replace(card + '.tmp', card)
PY
}

evaluate_student() {  # STAGE: export, then the release evaluation of the exported file
    local stage=$1 name tag run out
    read -r name tag <<< "$(release_of "$stage")"
    if [ -z "$(manifest "$stage" run_dir)" ]; then echo "$stage: not trained yet, not released"; return; fi
    run=$ZOO/$(manifest "$stage" run_dir)
    out=hub/releases/$name.$tag
    "${AWNET[@]}" export "$run" --dtype fp16 --tag "$tag" --out "$out" --overwrite
    "${AWNET[@]}" eval --model "$name" --checkpoint "$out/model.safetensors" --data-dir "$DATA_DIR" --n "$N_STUDENT" \
        --attacks paper router --device cpu --no-progress --out "$EVAL_DIR/$name.$tag.json"
}

release_student() {  # STAGE OTHER: export with the record, the other student's record beside it in the card
    local stage=$1 other=$2 name tag oname otag run out compare=()
    read -r name tag <<< "$(release_of "$stage")"
    read -r oname otag <<< "$(release_of "$other")"
    [ -f "$EVAL_DIR/$name.$tag.json" ] || return 0
    [ -f "$EVAL_DIR/$oname.$otag.json" ] && compare=(--compare "$other ($oname.$otag), same teachers, seed and epochs=$EVAL_DIR/$oname.$otag.json")
    run=$ZOO/$(manifest "$stage" run_dir)
    out=hub/releases/$name.$tag
    "${AWNET[@]}" export "$run" --dtype fp16 --tag "$tag" --out "$out" --eval "$EVAL_DIR/$name.$tag.json" --overwrite "${compare[@]}"
    provenance "$stage" "$out/README.md"
    released+=("$out")
}

if [ "$WHAT" = teachers ] || [ "$WHAT" = all ]; then
    release_teacher teacher_clean
    release_teacher teacher_robust
fi
if [ "$WHAT" = students ] || [ "$WHAT" = all ]; then
    evaluate_student student_awnet_r18_025
    evaluate_student student_cifar_resnet18_025
    release_student student_awnet_r18_025 student_cifar_resnet18_025
    release_student student_cifar_resnet18_025 student_awnet_r18_025
fi
[ ${#released[@]} -eq 0 ] && { echo "nothing to release"; exit 0; }
echo "exported: ${released[*]}"
if [ $COMMIT = 1 ]; then
    "$PYTHON" scripts/release_weights.py commit "${released[@]}"
fi
