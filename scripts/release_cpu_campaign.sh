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
# student's record beside it in the card (`awnet export --compare`). Every released folder gets its clean accuracy on
# the 10,000 JPEG test images too (record awnet_eval_test-jpeg.json, table appended to the card). AutoAttack
# makes this long on 2 cores (benchmarks/bench_autoattack.py; the README's Speed section): pause the campaign for it.
# The evaluations run with `awnet eval --resume`: run the script again after an interruption (a session's end) and
# each continues its report in $EVAL_DIR from the last finished attack (same exported file, images, seed).
# Environment: PYTHON (default .venv/bin/python), DATA_DIR (default ../shared/data/cifar10), N_TEACHER, N_STUDENT,
# N_JPEG, RELEASES (default hub/releases), EVAL_DIR (default ZOO/release-eval). A rehearsal on a few images, with
# nothing committed and neither hub/releases nor the zoo folder touched:
#   N_TEACHER=8 N_STUDENT=8 N_JPEG=64 RELEASES=output/rehearsal EVAL_DIR=output/rehearsal/eval \
#       bash scripts/release_cpu_campaign.sh ZOO all --no-commit
set -euo pipefail
cd "$(dirname "$0")/.."
ZOO=${1:?usage: release_cpu_campaign.sh ZOO_DIR [teachers|students|all] [--no-commit]}
WHAT=${2:-all}
COMMIT=1; [ "${3:-}" = "--no-commit" ] && COMMIT=0
N_TEACHER=${N_TEACHER:-500}
N_STUDENT=${N_STUDENT:-500}
# shellcheck source=scripts/release_lib.sh
source scripts/release_lib.sh
mkdir -p "$EVAL_DIR"

evaluate_student() {  # STAGE: export, then the release evaluation of the exported file
    local stage=$1 name tag run out
    read -r name tag <<< "$(release_of "$stage")"
    if [ -z "$(field "$stage" run_dir)" ]; then echo "$stage: not trained yet, not released"; return; fi
    run=$ZOO/$(field "$stage" run_dir)
    out=$RELEASES/$name.$tag
    "${AWNET[@]}" export "$run" --dtype fp16 --tag "$tag" --out "$out" --overwrite
    "${AWNET[@]}" eval --model "$name" --checkpoint "$out/model.safetensors" --data-dir "$DATA_DIR" --n "$N_STUDENT" \
        --attacks paper router --device cpu --no-progress --resume --out "$EVAL_DIR/$name.$tag.json"
}

release_student() {  # STAGE OTHER: export with the record, the other student's record beside it in the card
    local stage=$1 other=$2 name tag oname otag run out compare=()
    read -r name tag <<< "$(release_of "$stage")"
    read -r oname otag <<< "$(release_of "$other")"
    [ -f "$EVAL_DIR/$name.$tag.json" ] || return 0
    [ -f "$EVAL_DIR/$oname.$otag.json" ] && compare=(--compare "$other ($oname.$otag), same teachers, seed and epochs=$EVAL_DIR/$oname.$otag.json")
    run=$ZOO/$(field "$stage" run_dir)
    out=$RELEASES/$name.$tag
    "${AWNET[@]}" export "$run" --dtype fp16 --tag "$tag" --out "$out" --eval "$EVAL_DIR/$name.$tag.json" --overwrite "${compare[@]}"
    provenance "$stage" "$out/README.md"
    jpeg_clean "$name" "$tag" "$out"
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
commit_released
