#!/usr/bin/env bash
# Virtual environments for the anchors the benchmarks compare against, apart from ours
# because their pins clash (llm-compressor 0.14 pins transformers<=5.17).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .dev
if [ ! -x .dev/lc/bin/python ]; then
  python3 -m venv .dev/lc
  .dev/lc/bin/pip install -q torch==2.13.0
  .dev/lc/bin/pip install -q llmcompressor==0.14.0.1
fi
.dev/lc/bin/python -c "import llmcompressor, transformers; print('llm-compressor', llmcompressor.__version__, 'transformers', transformers.__version__)"
# TRL (GKDTrainer, for bench_distill_speed.py): its own folder on PYTHONPATH; it imports with our
# transformers / accelerate / datasets, so only the package itself is installed.
if [ ! -d .dev/trl_site/trl ]; then
  .venv/bin/python -m pip install -q --no-deps --target .dev/trl_site trl==1.16.0
fi
