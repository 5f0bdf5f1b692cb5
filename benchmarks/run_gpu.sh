#!/usr/bin/env bash
# GPU throughput figures on a machine that has PyTorch + CUDA but none of this project's
# other packages and no model weights (no hub, small transfers): the models are built with
# random weights from carried configs and tokenizers (benchmarks/random_init.py), which is
# fine for speed and meaningless for quality. Ray and vLLM are not needed here.
#
#   CARRY=.devcarry DEVICE=cuda bash benchmarks/run_gpu.sh
#
# CARRY holds: whl/ (pydantic, pydantic-core, pydantic-settings, annotated-types,
# typing-inspection, python-dotenv, kafka-python, transformers wheels for the target
# Python), smollm2/ and minilm/ (config.json + tokenizer files of the prepared models) and
# hh.jsonl (a slice of ../shared/data/hh_harmless_test.jsonl). Results land in
# benchmarks/results/*_gpu.md and are copied to $OUT when it is set.
set -euo pipefail
CARRY=${CARRY:-.devcarry}
DEVICE=${DEVICE:-cuda}
PAIRS=${PAIRS:-8}
if [ -d "$CARRY/whl" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site "$CARRY"/whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1 RAMO_PATHS__CACHE_DIR=${RAMO_PATHS__CACHE_DIR:-/tmp/ramo-gpu}
M=/tmp/ramo-gpu-models
python3 benchmarks/random_init.py "$CARRY/smollm2" $M/smollm2-135m
python3 benchmarks/random_init.py "$CARRY/minilm" $M/minilm
if [ "$DEVICE" = cuda ]; then nvidia-smi --query-gpu=name,memory.total --format=csv; fi

# Grading: the labeler vs the reference (one unbatched forward per response per rule).
if [ "${SMALL:-1}" = 1 ]; then
python3 benchmarks/label_throughput.py --device "$DEVICE" --model $M/smollm2-135m \
  --encoder $M/minilm --data "$CARRY/hh.jsonl" --pairs "$PAIRS" --out label_throughput_gpu.md
# Training: the bare loop's pairs/s for the SmolLM2-135M reward model (bf16 autocast).
python3 benchmarks/train_throughput.py --device "$DEVICE" --bare-only --backbone $M/smollm2-135m \
  --data "$CARRY/hh.jsonl" --pairs 64 --batch-pairs 16 --max-length 512 \
  --out train_throughput_gpu.md
fi
# The same grading comparison on a 1.7B model of the same family (SmolLM2-1.7B's shape).
if [ "${LARGE:-1}" = 1 ]; then
  python3 benchmarks/random_init.py "$CARRY/smollm2" $M/smollm2-1.7b --hidden 2048 --layers 24 \
    --heads 32 --intermediate 8192
  python3 benchmarks/label_throughput.py --device "$DEVICE" --model $M/smollm2-1.7b \
    --encoder $M/minilm --data "$CARRY/hh.jsonl" --pairs 4 --out label_throughput_gpu_1.7b.md
fi
if [ -n "${OUT:-}" ]; then cp benchmarks/results/*_gpu*.md "$OUT"/; fi
