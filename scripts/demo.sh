#!/usr/bin/env bash
# The main job on the built-in example: write a tiny random Stable Diffusion checkpoint, inspect it, compile it for
# CPU (f32, q8_0), Vulkan and CUDA, generate images, and compare with diffusers' StableDiffusionPipeline.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/python -m sdcompile.demo "$@"
