#!/bin/bash
# Issue 12 on the GPU device (from the repository root with DEVICE_ROOT=$PWD, or from a copy one folder down):
#   call1: GPU tests of the varlen attention paths, then llama-780m at DL19 lengths: inference (padded-random,
#          sorted, packed, Reranker.predict) and LCE training (padded and packed, 128 pairs per step).
#   call2: the efficiency sweep: fixed lengths 128..16384, mamba2-780m, mamba1-790m, llama-780m, inference and
#          training at the best setting; bench.jsonl, efficiency_throughput.png and efficiency_memory.png.
# Usage: bash bin/gpu-issue12.sh call1|call2 OUTPUT_FOLDER
set -o pipefail
what=$1
out=${2:-${OUT:-out}}
mkdir -p "$out"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
root=${DEVICE_ROOT:-$(cd .. && pwd)}  # the checkout that holds .gpu/ and .device-data/
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" \
    | tee -a "$out/gpu.txt"
case "$what" in
call1)
    python3 -m pytest -q -s -m gpu tests/test_attention.py 2>&1 | tail -25 | tee "$out/tests.txt"
    python3 -m pyserini_ssm.bench --models llama-780m --device cuda --inference --training --lengths msmarco \
        --pairs 4096 --repeats 3 --tokenizer tests/data/smollm2-tokenizer \
        --candidates "$root/.device-data/retrieve_results_dl19.bm25.top100.json.gz" \
        --train-groups 16 --group-size 8 --train-steps 5 --output "$out" 2>&1 | grep -v "it/s\]" | tail -40
    ;;
call2)
    bash "$root/.gpu/install-on-device.sh"
    python3 -m pyserini_ssm.bench --models llama-780m,mamba2-780m,mamba1-790m --device cuda --inference --training \
        --lengths 128,512,1024,2048,4096,8192,16384 --max-length 16384 --fixed-tokens 65536 --repeats 2 \
        --warmup 1 --train-groups 16 --group-size 8 --train-tokens 32768 --train-steps 2 --no-crossencoder \
        --output "$out" 2>&1 | grep --line-buffered -v "it/s\]" | tee "$out/sweep.log"
    # Reranker.predict against the packed model-only rate, after the first-chunk change (DL19 lengths)
    python3 -m pyserini_ssm.bench --models llama-780m --device cuda --inference --lengths msmarco --pairs 4096 \
        --repeats 3 --tokenizer tests/data/smollm2-tokenizer \
        --candidates "$root/.device-data/retrieve_results_dl19.bm25.top100.json.gz" --output "$out/predict" \
        2>&1 | grep -E "^  inference"
    ;;
*)
    echo "usage: bash bin/gpu-issue12.sh call1|call2 OUTPUT_FOLDER" >&2; exit 2 ;;
esac
