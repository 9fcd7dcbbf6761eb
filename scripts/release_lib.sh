# Sourced by the scripts that release a zoo's models into hub/releases/ (release_cpu_campaign.sh, release_gpu_zoo.sh):
# the names a plan releases its stages as, the zoo manifest, the teachers' release and the weights commit.
# Needs ZOO (the zoo folder), N_TEACHER and COMMIT; reads PYTHON and DATA_DIR; collects the folders in `released`.
PYTHON=${PYTHON:-.venv/bin/python}
DATA_DIR=${DATA_DIR:-../shared/data/cifar10}
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

release_teacher() {  # STAGE: export fp16, `awnet eval` of the exported file (first N_TEACHER exact test images: FGSM,
    # PGD-20, CW-inf, sanity checks), export again with that record, the zoo's provenance appended; only once done
    local stage=$1 name tag status run out
    read -r name tag <<< "$(release_of "$stage")"
    status=$(field "$stage" status)
    if [ "$status" != "done" ] && [ "$status" != "shortened" ]; then
        echo "$stage: status '$status', not released (it trains to its planned total first)"; return
    fi
    run=$ZOO/$(field "$stage" run_dir)
    out=hub/releases/$name.$tag
    mkdir -p "$ZOO/release-eval"
    "${AWNET[@]}" export "$run" --dtype fp16 --tag "$tag" --out "$out" --overwrite
    "${AWNET[@]}" eval --model "$name" --checkpoint "$out/model.safetensors" --data-dir "$DATA_DIR" --n "$N_TEACHER" \
        --attacks fgsm pgd_sat cw_inf --device cpu --no-progress --resume --out "$ZOO/release-eval/$name.$tag.json"
    "${AWNET[@]}" export "$run" --dtype fp16 --tag "$tag" --out "$out" --eval "$ZOO/release-eval/$name.$tag.json" --overwrite
    provenance "$stage" "$out/README.md"
    released+=("$out")
}

commit_released() {  # the weights of every released folder through one commit (scripts/release_weights.py)
    [ ${#released[@]} -eq 0 ] && { echo "nothing to release"; return; }
    echo "exported: ${released[*]}"
    if [ "$COMMIT" = 1 ]; then
        "$PYTHON" scripts/release_weights.py commit "${released[@]}"
    fi
}
