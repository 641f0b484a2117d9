#!/usr/bin/env bash
# The main job on the built-in example: make weights, inspect, compile for CPU (and Vulkan, and CUDA), run, compare
# with transformers' CLIPTextModel, time it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/python -m sdcompile.demo "$@"
