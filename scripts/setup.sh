#!/usr/bin/env bash
# Installs moderncnn with its test tools, and, where apt is available, Debian's packages the
# quickstart and tests use: `dataset-fashion-mnist` (the real Fashion-MNIST files, read offline)
# and `chromium` + `chromium-driver` (the run report's browser test; nothing downloads a browser).
set -euo pipefail
cd "$(dirname "$0")/.."
packages=()
[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || packages+=(dataset-fashion-mnist)
command -v chromium >/dev/null 2>&1 || packages+=(chromium)
command -v chromedriver >/dev/null 2>&1 || packages+=(chromium-driver)
if [ ${#packages[@]} -gt 0 ] && command -v apt-get >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq "${packages[@]}"
fi
python -m pip install -q -e ".[test]"
# The notebooks' kernel, registered for this Python so the tests run them offline.
python -m ipykernel install --user --name python3 >/dev/null
