#!/usr/bin/env bash
# Release a GPU window's zoo (plan cifar10, brought back by `awnet zoo unpack`) into hub/releases/, finishing on this
# machine's CPU what the window left, then the weights through one commit (scripts/release_weights.py).
#
#   bash scripts/release_gpu_zoo.sh ZOO_DIR [teachers|students|all] [--no-commit]
#
# Each stage goes out under the name.tag its plan gives it (`release` in awnet_timm/zoo/plans/cifar10.json).
# Students: the zoo's own fp16 export (releases/<name.tag>: weights, card, and the window's evaluation record with
# AutoAttack and the router attacks) is copied as it is; then, on the copied file, clean accuracy on the 10,000 JPEG
# test images and FGSM, PGD-20 and CW-inf on the first N_STUDENT exact test images (default 1000), each record kept in
# the folder (awnet_eval_test-jpeg.json, awnet_eval_test-exact-N.json, with their .md) and its table appended to the card.
# Teachers (the zoo's best.safetensors): exported fp16, `awnet eval` on the exported file (first N_TEACHER exact test
# images, default 500: FGSM, PGD-20, CW-inf, sanity checks), exported again with that record, and the zoo's account of
# how it was trained appended (`awnet zoo report --provenance`).
# Environment: PYTHON (default .venv/bin/python), DATA_DIR (default ../shared/data/cifar10), N_STUDENT, N_TEACHER.
set -euo pipefail
cd "$(dirname "$0")/.."
ZOO=${1:?usage: release_gpu_zoo.sh ZOO_DIR [teachers|students|all] [--no-commit]}
WHAT=${2:-all}
COMMIT=1; [ "${3:-}" = "--no-commit" ] && COMMIT=0
N_STUDENT=${N_STUDENT:-1000}
N_TEACHER=${N_TEACHER:-500}
# shellcheck source=scripts/release_lib.sh
source scripts/release_lib.sh

release_student() {  # STAGE
    local stage=$1 name tag src out common
    read -r name tag <<< "$(release_of "$stage")"
    src=$ZOO/releases/$name.$tag
    if [ ! -f "$src/model.safetensors" ]; then echo "$stage: no export in $src, not released"; return; fi
    out=$RELEASES/$name.$tag
    rm -rf "$out.tmp" && cp -r "$src" "$out.tmp" && rm -rf "$out" && mv "$out.tmp" "$out"
    common=(--model "$name" --checkpoint "$out/model.safetensors" --data-dir "$DATA_DIR" --device cpu --no-progress)
    "${AWNET[@]}" eval "${common[@]}" --split test --n 10000 --attacks fgsm --no-sanity --out "$out/awnet_eval_test-jpeg.json"
    "${AWNET[@]}" eval "${common[@]}" --split test-exact --n "$N_STUDENT" --attacks fgsm pgd_sat cw_inf --no-sanity \
        --out "$out/awnet_eval_test-exact-$N_STUDENT.json"
    { printf '\n## Measured after the window, on CPU\n\n'
      printf 'The same file, evaluated by `awnet eval` on this repository'"'"'s CPU (`scripts/release_gpu_zoo.sh`); records `awnet_eval_test-jpeg.json` and `awnet_eval_test-exact-%s.json` in this folder.\n\n' "$N_STUDENT"
      cat "$out/awnet_eval_test-jpeg.md"; echo; cat "$out/awnet_eval_test-exact-$N_STUDENT.md"; } > "$out/README.md.more"
    append_to_card "$out/README.md" "$out/README.md.more"
    released+=("$out")
}

if [ "$WHAT" = students ] || [ "$WHAT" = all ]; then
    release_student student_awnet_r18
    release_student student_cifar_resnet18
fi
if [ "$WHAT" = teachers ] || [ "$WHAT" = all ]; then
    release_teacher teacher_clean
    release_teacher teacher_robust
fi
commit_released
