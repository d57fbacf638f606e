#!/bin/bash
# Issue 16 (and issue 13's FP8 ranking check) on the GPU device, from the repository root, the carry folders staged
# by bin/stage-smollm2-scifact-device:
#   part c1|c2|c3   copy this call's carried part (.dev-c1 ...) to /root/parts (calls 1-3, one after another while
#                   the machine stays warm)
#   run OUT         call 4 (carry .dev-16 .gpu .device-data): join the parts and check both sha256 sums; SmolLM2-135M
#                   from its GGUF: held-out configurations, the chosen one on all 809 train queries, the SciFact test
#                   top-100 in bf16 and FP8, then MS MARCO 1k triples -> DL19 (bin/_smollm2_scifact_gpu.py, time
#                   budget SMOLLM2_BUDGET s); then MiniLM config c (lr 5e-5, 6 epochs, docs/TRAINING.md) on all 809
#                   queries, the test top-100 in bf16 and FP8
#   bench OUT       call 5: SmolLM2 (the fine-tuned folder of `run`) packed vs padded, inference and training
set -o pipefail
what=$1
out=${2:-${OUT:-out}}
P=/root/parts
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 TQDM_DISABLE=1
case "$what" in
part)
    mkdir -p $P && cp .dev-$2/* $P/ && ls -la $P && nvidia-smi -L
    ;;
run)
    mkdir -p "$out" /root/d16 /root/minilm
    cp .dev-16/* $P/
    G=$P/SmolLM2-135M-Instruct.Q4_1.gguf
    cat $P/gguf.1 $P/gguf.2 > $G
    tar xzf $P/minilm-files.tar.gz -C /root/minilm
    cat $P/minilm.1 $P/minilm.2 $P/minilm.3 > /root/minilm/model.safetensors
    sha256sum $G /root/minilm/model.safetensors | tee "$out/sha256.txt"
    [ "$(sha256sum $G /root/minilm/model.safetensors | awk '{print $1}')" = "$(cat $P/sha256.txt)" ] || { echo "sha256 mismatch"; exit 1; }
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site $P/gguf-0.19.0-py3-none-any.whl
    bash .gpu/install-on-device.sh
    xz -dc $P/data16.tar.xz | tar xf - -C /root/d16
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"
    python3 bin/_smollm2_scifact_gpu.py --gguf $G --tokenizer tests/data/smollm2-tokenizer --data /root/d16 \
        --work /root/w16 --out "$out" --configs "${CONFIGS:-a:5e-5:4:2,3,4;b:1e-4:4:2,3,4;c:2e-4:3:2,3}" \
        --time-budget "${SMOLLM2_BUDGET:-400}" --extra-train-args=--pack --fp8-test \
        --msmarco-train $P/msmarco-train_grouped.jsonl \
        --dl19-candidates .device-data/retrieve_results_dl19.bm25.top100.json.gz 2>&1 | grep -v UserWarning \
        | tee "$out/log-smollm2.txt"
    python3 -m pyserini_ssm.train --model /root/minilm --train-jsonl /root/d16/scifact-train.bm25-negatives.jsonl \
        --output /root/w16/minilm-c --group-size 8 --batch-size 8 --lr 5e-5 --epochs 6 --max-length 512 --seed 42 \
        2>&1 | grep -v UserWarning | tail -5 | tee "$out/log-minilm.txt"
    for dtype in bf16 fp8; do
        python3 -m pyserini_ssm.rerank --candidates /root/d16/scifact-test.bm25.top100.json \
            --model /root/w16/minilm-c/model --max-length 512 --batch-size 128 --dtype $dtype \
            --output "$out/run.scifact-test.minilm-ft.$dtype.txt" 2>&1 | tail -3 | tee -a "$out/log-minilm.txt"
    done
    cp "$out/summary.json" /root/w16/summary.json
    (cd /root/w16 && tar czf "$out/train_logs.tgz" */train_log.jsonl)
    (cd "$out" && tar czf runs.tgz run.*.txt && rm run.*.txt)
    ;;
bench)
    mkdir -p "$out"
    model=$(python3 -c "import json; print(json.load(open('/root/w16/summary.json'))['final']['model'])" 2>/dev/null \
            || echo /root/w16/final/model)
    python3 -m pyserini_ssm.bench --models "$model" --device cuda --inference --training --lengths msmarco \
        --pairs 4096 --repeats 3 --candidates .device-data/retrieve_results_dl19.bm25.top100.json.gz \
        --train-groups 16 --group-size 8 --train-steps 5 --no-crossencoder --output "$out" 2>&1 \
        | grep -v "it/s\]" | tail -30
    ;;
esac
