# Sourced by the scripts that run on a bare GPU machine (zoo_on_gpu.sh, eval_on_gpu.sh): what the machine has, and
# the offline install of the carried wheels and this package. Needs REPO, PY, SITE, DEVICE and a `say` function.

check_machine() {  # python, packages and device; returns 3 where DEVICE is cuda and there is none
"$PY" - "$DEVICE" <<'EOF' || return 3
import importlib.metadata as md, platform, sys
import torch
print('python', platform.python_version())
for name in ('torch', 'timm', 'huggingface_hub', 'safetensors', 'numpy', 'pyautoattack'):
    try:
        print(f'  {name} {md.version(name)}')
    except md.PackageNotFoundError:
        print(f'  {name} not installed')
if sys.argv[1].startswith('cuda'):
    if not torch.cuda.is_available():
        sys.exit('no CUDA device: run with DEVICE=cpu to try the steps on a CPU')
    print('  device', torch.cuda.get_device_name(), torch.version.cuda)
EOF
}

offline_install() {  # the carried wheels, then the package itself (non-editable, its plans as package data); returns 4 on failure
  wheels=()
  for w in "$REPO"/.whl/*.whl; do
    [ -e "$w" ] || continue
    case "$(basename "$w")" in  # the machine's timm is kept when the package accepts it (>=1.0.31,<1.1)
      timm-*) "$PY" -c "import sys, timm; v = tuple(int(p) for p in timm.__version__.split('.')[:3]); sys.exit(0 if (1, 0, 31) <= v < (1, 1) else 1)" 2>/dev/null && continue ;;
    esac
    wheels+=("$w")
  done
  rm -rf "$SITE"
  if [ ${#wheels[@]} -gt 0 ]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "${wheels[@]}" || return 4
  fi
  "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --no-cache-dir --target "$SITE" "$REPO" || return 4
  export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
  cd /tmp  # from here on the installed package runs, not the source tree
  "$PY" -c "import awnet_timm, timm, pyautoattack; print('  awnet_timm from', awnet_timm.__file__, '| timm', timm.__version__)" || return 4
}

check_data() {  # DIR FILE...: the named npz files of the offline CIFAR-10 copy are there, sha256-checked; returns 5 if not
  local dir=$1 f; shift
  for f in "$@"; do
    grep "  $f\$" <<'EOF' | (cd "$dir" && sha256sum -c --quiet) || return 5
68b1d587c3baa1175e411ec1a08d5d513342cc75a89c6fe7f76c81b8d3a43bfe  cifar10-train-jpeg.npz
47037abff69e9525b495f37496bfb83f93745b799d4efc3433c8441638d9ba6a  cifar10-test-jpeg.npz
1aae97cb67c59cc080dd0b39e3a6b852ee551366eb5cdb734773ec1236d2544a  cifar10-test-exact.npz
EOF
  done
}
