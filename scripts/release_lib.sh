# Sourced by the scripts that release a zoo's models into hub/releases/ (release_cpu_campaign.sh, release_gpu_zoo.sh):
# the names a plan releases its stages as, the zoo manifest, the teachers' release and the weights commit.
# Needs ZOO (the zoo folder), N_TEACHER and COMMIT; reads PYTHON, DATA_DIR, RELEASES (default hub/releases; another
# folder for a rehearsal, with --no-commit), EVAL_DIR (the evaluation records, default ZOO/release-eval) and N_JPEG
# (default 10000); collects the folders in `released`.
PYTHON=${PYTHON:-.venv/bin/python}
DATA_DIR=${DATA_DIR:-../shared/data/cifar10}
RELEASES=${RELEASES:-hub/releases}
N_JPEG=${N_JPEG:-10000}
EVAL_DIR=${EVAL_DIR:-$ZOO/release-eval}
AWNET=("$PYTHON" -m awnet_timm.cli)
released=()

field() {  # a field of the zoo manifest: field STAGE KEY ('' when absent); field plan_name
    "$PYTHON" -c "import json,sys; m=json.load(open(sys.argv[1])); print(m[sys.argv[2]] if len(sys.argv) == 3 else m['stages'].get(sys.argv[2], {}).get(sys.argv[3], ''))" \
        "$ZOO/manifest.json" "$@"
}

release_of() {  # the name.tag the zoo's plan releases a stage as: release_of STAGE -> "NAME TAG"
    "$PYTHON" -c "from awnet_timm.zoo import load_plan; r = load_plan('$(field plan_name)').stage('$1').release; print(*r.split('.', 1))"
}

append_to_card() {  # CARD FILE: append FILE to the card (whole or not at all), then remove FILE
    cat "$1" "$2" > "$1.tmp" && mv "$1.tmp" "$1" && rm "$2"
}

provenance() {  # STAGE CARD: append how the zoo trained the stage (`awnet zoo report --provenance`)
    "${AWNET[@]}" zoo report "$ZOO" --provenance "$1" > "$2.provenance"
    append_to_card "$2" "$2.provenance"
}

jpeg_clean() {  # NAME TAG FOLDER: clean accuracy of FOLDER's weights on the first N_JPEG (all 10,000) JPEG test images
    # (`awnet eval` runs one attack at least: FGSM rides along), its record kept in the folder, its table in the card
    local record=$EVAL_DIR/$1.$2.test-jpeg.json
    "${AWNET[@]}" eval --model "$1" --checkpoint "$3/model.safetensors" --data-dir "$DATA_DIR" --split test --n "$N_JPEG" \
        --attacks fgsm --no-sanity --device cpu --no-progress --resume --out "$record"
    cp "$record" "$3/awnet_eval_test-jpeg.json"
    local which="the first $N_JPEG"; [ "$N_JPEG" = 10000 ] && which='the 10,000'
    { printf '\n## Clean accuracy on %s JPEG test images\n\n' "$which"
      printf 'The JPEG copy of the CIFAR-10 test set (not bit-exact; the robustness above is on exact pixels), by `awnet eval` on this file; record `awnet_eval_test-jpeg.json` in this folder.\n\n'
      cat "${record%.json}.md"; } > "$3/README.md.jpeg"
    append_to_card "$3/README.md" "$3/README.md.jpeg"
}

release_teacher() {  # STAGE: export fp16, `awnet eval` of the exported file (first N_TEACHER exact test images: FGSM,
    # PGD-20, CW-inf, sanity checks), export again with that record, the zoo's provenance appended; only once done,
    # and not when the zoo took the stage from its release (`--warm-start`)
    local stage=$1 name tag status run out
    read -r name tag <<< "$(release_of "$stage")"
    status=$(field "$stage" status)
    if [ "$status" != "done" ] && [ "$status" != "shortened" ]; then
        echo "$stage: status '$status', not released (it trains to its planned total first)"; return
    fi
    if [ -n "$(field "$stage" warm_start)" ]; then
        echo "$stage: taken from the release $name.$tag (a warm start), not trained here: nothing new to release"; return
    fi
    run=$ZOO/$(field "$stage" run_dir)
    out=$RELEASES/$name.$tag
    mkdir -p "$EVAL_DIR"
    "${AWNET[@]}" export "$run" --dtype fp16 --tag "$tag" --out "$out" --overwrite
    "${AWNET[@]}" eval --model "$name" --checkpoint "$out/model.safetensors" --data-dir "$DATA_DIR" --n "$N_TEACHER" \
        --attacks fgsm pgd_sat cw_inf --device cpu --no-progress --resume --out "$EVAL_DIR/$name.$tag.json"
    "${AWNET[@]}" export "$run" --dtype fp16 --tag "$tag" --out "$out" --eval "$EVAL_DIR/$name.$tag.json" --overwrite
    provenance "$stage" "$out/README.md"
    jpeg_clean "$name" "$tag" "$out"
    released+=("$out")
}

commit_released() {  # the weights of every released folder through one commit (scripts/release_weights.py)
    [ ${#released[@]} -eq 0 ] && { echo "nothing to release"; return; }
    echo "exported: ${released[*]}"
    if [ "$COMMIT" = 1 ]; then
        "$PYTHON" scripts/release_weights.py commit "${released[@]}"
    fi
}
