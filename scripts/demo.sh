#!/usr/bin/env bash
# The main job: set up from nothing, compile the bundled Tiled Bit Network (the paper authors'
# MNIST MLP) for a Cortex-M4, run it on QEMU over the MNIST test images, and print accuracy,
# flash/RAM and instructions per inference.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/tbn-tvm demo "$@"
