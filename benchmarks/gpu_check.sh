#!/usr/bin/env bash
# One command on a CUDA machine (about 5 minutes on one H100/H200): the GPU tests, then the
# 7B-shaped random-weight benchmark on all 7,600 ag_news test examples, direct and channel, k=1
# and k=4, printing seconds, tokens/s and peak GPU memory beyond the weights; then int8 (direct).
#
#   bash benchmarks/gpu_check.sh [AG_NEWS_DIR] [TOKENIZER]
#
# AG_NEWS_DIR: ag_news_csv train.csv/test.csv (default ../shared/data/ag_news);
# TOKENIZER: the tokenizer to build prompts with (default the default model's tokenizer.json).
set -uo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data/ag_news}
TOK=${2:-checkpoints/smollm2/tokenizer.json}
PY=${PYTHON:-python3}
status=0
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))"
"$PY" -m pytest -q -m gpu tests -p no:cacheprovider --continue-on-collection-errors -W ignore::pytest.PytestUnknownMarkWarning || status=1
for k in 1 4; do
  "$PY" benchmarks/bench_scoring.py --random_init benchmarks/llama-7b-params.json --n_examples 7600 --k "$k" \
    --methods direct,channel --skip_naive --max_batch_size 256 --data_dir "$DATA" --tokenizer_path "$TOK" || status=1
done
# LLM.int8 through bitsandbytes (requirements-gpu.txt), fp16 activations: 1,000 examples, direct.
"$PY" benchmarks/bench_scoring.py --random_init benchmarks/llama-7b-params.json --n_examples 1000 --k 1 \
  --methods direct --skip_naive --max_batch_size 256 --dtype fp16 --quantize int8 --data_dir "$DATA" --tokenizer_path "$TOK" || status=1
exit $status
