#!/usr/bin/env bash
# Installs moderncnn and the Debian packages its job uses, where apt is available.
#   bash scripts/setup.sh         the quickstart's needs: moderncnn itself and Debian's
#                                 `dataset-fashion-mnist` (the real Fashion-MNIST files, read offline)
#   bash scripts/setup.sh --test  also the test tools (".[test]"), the notebooks' kernel, and
#                                 `chromium` + `chromium-driver` (the browser tests only; nothing
#                                 downloads a browser)
set -euo pipefail
cd "$(dirname "$0")/.."
tests=false
[ "${1:-}" = "--test" ] && tests=true
packages=()
[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || packages+=(dataset-fashion-mnist)
if $tests; then
  command -v chromium >/dev/null 2>&1 || packages+=(chromium)
  command -v chromedriver >/dev/null 2>&1 || packages+=(chromium-driver)
fi
if [ ${#packages[@]} -gt 0 ] && command -v apt-get >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq "${packages[@]}"
fi
if $tests; then
  python -m pip install -q -e ".[test]"
  # The notebooks' kernel, registered for this Python so the tests run them offline.
  python -m ipykernel install --user --name python3 >/dev/null
else
  python -m pip install -q -e .
fi
