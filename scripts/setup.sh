#!/usr/bin/env bash
# Create (or reuse) .venv at the repository root and install what sdcompile, its tests and the Vulkan path need.
# Idempotent: a stamp records what was installed; rerunning only reinstalls when pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PY" -m venv .venv
fi

stamp=.venv/.sdcompile-setup
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "setup: installing Python packages into .venv (first run: a few minutes)"
  .venv/bin/python -m pip install -q --upgrade pip
  # torch is pinned to the CPU build that the test extras name; pip takes it from a local wheel where one exists.
  CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)} \
    .venv/bin/python -m pip install -q -e ".[vulkan,test,bench]"
  # The OpenAI CLIP BPE vocabulary (MIT licence) ships in clip-anytorch; its declared dependencies (torchvision)
  # would replace the CPU torch, and only the vocabulary file is used, so it is installed alone.
  .venv/bin/python -m pip install -q --no-deps clip-anytorch==2.6.0
  echo "$want" > "$stamp"
fi

# Mesa's lavapipe: a real Vulkan driver that runs on the CPU, so the Vulkan path works without a GPU.
if ! ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing mesa-vulkan-drivers (lavapipe)"
    (apt-get install -y -q mesa-vulkan-drivers >/dev/null 2>&1 ||
      { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q mesa-vulkan-drivers >/dev/null 2>&1; }) ||
      echo "setup: could not install mesa-vulkan-drivers; Vulkan tests will be skipped"
  else
    echo "setup: not root; install mesa-vulkan-drivers yourself for the Vulkan path (tests skip without it)"
  fi
fi
