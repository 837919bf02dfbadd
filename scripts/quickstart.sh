#!/usr/bin/env bash
# Install, then the main job: train a small ResNet on Fashion-MNIST from configs/quickstart.yaml,
# test it, and write the learning curves and confusion matrix into lightning_logs/version_N/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
start=$(date +%s)
moderncnn fit -c configs/quickstart.yaml
echo "quickstart: fit + test took $(( $(date +%s) - start )) s; outputs in $(ls -td lightning_logs/version_* | head -1)"
