#!/usr/bin/env bash
# The README's sample evaluation report: a small AW-Net trained for a few CPU minutes on the offline
# CIFAR-10 copy (JPEG train split), then `awnet eval` on the first 200 exact test images. It shows the
# report's format and the harness at work; its numbers say nothing about AW-Net at full size and schedule.
#   bash examples/sample_report.sh [path/to/cifar10]   (default ../shared/data/cifar10)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data/cifar10}
SMALL='{"layers": [1, 1, 1, 1], "channels": [16, 32, 64, 128], "router_layers": [1, 1, 1, 1], "router_channels": [16, 16, 32, 32]}'
awnet train --recipe pgd_at --model awnet_r18 --model-kwargs "$SMALL" --data-dir "$DATA" \
    --train-size 5000 --val-size 200 --batch-size 128 --epochs 3 --decay-milestones 3 \
    --attack-steps 3 --attack-step 3/255 --output output --run-name sample-awnet --resume auto --no-progress
awnet eval --model awnet_r18 --checkpoint output/sample-awnet --data-dir "$DATA" --n 200 \
    --attacks paper router blackbox --out output/eval/sample-awnet.json --no-progress
