#!/usr/bin/env bash
# GPU training/prediction throughput of every architecture, float32 vs mixed_float16, with Keras on
# JAX (the GPU machine we measure on has JAX and no TensorFlow; the model code is backend-neutral).
# Needs the keras, namex and optree wheels in .whl/ (pip download keras==<locked> namex optree).
#   [BATCHES="32 128"] bash bench/gpu_models.sh [steps]
set -euo pipefail
STEPS=${1:-20}
SITE=$(mktemp -d)
python -m pip install --quiet --no-deps --no-index --target "$SITE" .whl/*.whl
export PYTHONPATH="$SITE:$PWD" KERAS_BACKEND=jax XLA_PYTHON_CLIENT_PREALLOCATE=false
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
for arch in seed_cnn compact_cnn resnet50 densenet121 efficientnetb0; do
  for policy in float32 mixed_float16; do
    for batch in ${BATCHES:-64}; do
      python bench/model_throughput.py --architecture "$arch" --policy "$policy" \
        --image-size 224 --batch-size "$batch" --steps "$STEPS" 2>/dev/null | tail -1
    done
  done
done
