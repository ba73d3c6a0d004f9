#!/usr/bin/env bash
# GPU check: images/s for indexing 10,000 1024x768 JPEGs with TensorFlow and with ONNX Runtime
# (CUDA provider), decode workers = every core. Run on a Linux machine with an NVIDIA GPU and its
# driver; needs ../shared (the photos the JPEGs are made from) or SEARCHER_SHARED.
#
#   bash scripts/gpu_check.sh            # 10,000 images, batch 64
#   IMAGES=2000 BATCH=128 bash scripts/gpu_check.sh
#
# It installs the GPU builds into .venv (tensorflow[and-cuda] instead of tensorflow-cpu,
# onnxruntime-gpu instead of onnxruntime); `bash scripts/bootstrap.sh` after removing .venv goes back.
# Writes bench-out/gpu_check.json and prints one line per runtime.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || {
  echo "no NVIDIA GPU visible (nvidia-smi failed)" >&2; exit 1; }
tf_version="$(.venv/bin/python -c 'import tensorflow as tf; print(tf.__version__)' 2>/dev/null || echo 2.21.0)"
.venv/bin/python -m pip uninstall --quiet -y tensorflow-cpu onnxruntime >/dev/null 2>&1 || true
.venv/bin/python -m pip install --quiet "tensorflow[and-cuda]==${tf_version}" "onnxruntime-gpu>=1.18,<2"
.venv/bin/python - <<'PY'
import onnxruntime as ort, tensorflow as tf
print("tensorflow GPUs:", tf.config.list_physical_devices("GPU"))
print("onnxruntime providers:", ort.get_available_providers())
PY
SEARCHER_RUNTIME_CACHE="$(mktemp -d)" .venv/bin/python scripts/bench_runtime.py \
  --images "${IMAGES:-10000}" --batch-size "${BATCH:-64}" --out bench-out/gpu_check.json
