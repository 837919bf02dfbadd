#!/usr/bin/env bash
# Installs moderncnn with its test tools, and the Fashion-MNIST files from Debian's
# `dataset-fashion-mnist` package where apt is available (the quickstart and tests use them).
set -euo pipefail
cd "$(dirname "$0")/.."
FMNIST=/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
if [ ! -f "$FMNIST" ] && command -v apt-get >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq dataset-fashion-mnist
fi
python -m pip install -q -e ".[test]"
# The notebooks' kernel, registered for this Python so the tests run them offline.
python -m ipykernel install --user --name python3 >/dev/null
