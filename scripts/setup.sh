#!/usr/bin/env bash
# Set up everything tbn-tvm needs, from nothing: a Python venv with the package and its test,
# tuning and torch extras, and (for Cortex-M) the Arm toolchain and QEMU from Debian.
# Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv" >&2
  "$PY" -m venv .venv
fi
stamp=.venv/.tbn-tvm-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setup: installing tbn-tvm and its dependencies into .venv (first time: a few minutes)" >&2
  # torch==2.13.0 is pinned in the [torch] extra: pip takes the CPU wheel, never the CUDA build.
  .venv/bin/pip install -q --disable-pip-version-check -e ".[test,tune,torch]"
  touch "$stamp"
fi

need_apt=()
command -v arm-none-eabi-gcc >/dev/null 2>&1 || need_apt+=(gcc-arm-none-eabi libnewlib-arm-none-eabi)
command -v qemu-system-arm >/dev/null 2>&1 || need_apt+=(qemu-system-arm)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "setup: installing ${need_apt[*]} with apt-get" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm >/dev/null
  else
    echo "error: the Cortex-M toolchain is missing; run: sudo apt-get install -y --no-install-recommends gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm" >&2
    exit 2
  fi
fi

# OpenCL on the CPU (PoCL): the CUDA target's schedules run on it when there is no GPU (the tests
# that need it skip, saying so, when it is absent)
if ! ls /etc/OpenCL/vendors/*pocl*.icd >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    echo "setup: installing pocl-opencl-icd ocl-icd-libopencl1 with apt-get" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      pocl-opencl-icd ocl-icd-libopencl1 >/dev/null
  else
    echo "setup: note: no OpenCL on the CPU (the CUDA numerics tests will skip); to add it run: sudo apt-get install -y --no-install-recommends pocl-opencl-icd ocl-icd-libopencl1" >&2
  fi
fi
