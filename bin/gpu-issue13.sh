#!/bin/bash
# Issue 13's device measurements, one stage per device call (each under 10 minutes on an H200), from the
# repository root, carrying .gpu and .device-data (docs/BENCHMARKS.md, "Third session"). Every stage writes its raw
# output under OUT and prints the lines the docs quote.
#   tests OUT       the GPU tests of the short SSD and the packed conv (about 200 s each file)
#   train OUT       packed LCE training, mamba2-780m (short SSD) and llama-780m in one process, 128 and 384 pairs
#                   per step, then Mamba-2 alone at 512 (GROUPS_MAMBA, default 64 groups of 8)
#   infer OUT       bin/bench-short-ssd: stock vs short SSD vs short SSD in FP8, packed and Reranker.predict
#   cli OUT         the rerank CLI on 43,000 DL19-like pairs (bin/make-top1000-like), bf16 then fp8, each run twice
#                   so that the second is warm (the first process on a machine compiles the Triton kernels)
#   profile OUT     the GPU tests of the norms, FP8 and the model path; the kernel tables of one 32k row in bf16 and
#                   FP8 (bin/profile-mamba2-row --table-only); the rerank command's timeline on 43,000 pairs in FP8,
#                   twice in one process (bin/profile-rerank)
#   sweep OUT       GPU tests of the conv and the SSD; the SSD forward, conv and norm settings (bin/profile-short-ssd
#                   --forward-only); the rerank command on 43,000 pairs in FP8 in a fresh process (bin/profile-rerank
#                   --first-forward), twice in it
#   fold OUT        GPU tests of the folded conv, the conv and the SSD; bin/profile-predict (bf16, FP8: packed and
#                   predict, with the conv folded into the SSD); the rerank command on 43,000 pairs in FP8 as two
#                   fresh processes (the first compiles what the machine's cache lacks; the second is the figure)
#   final OUT       bin/profile-predict (bf16, FP8; the conv fold switched the other way in the same process), then
#                   the rerank command on 43,000 pairs in FP8 as two fresh processes (the second is the figure)
#   gate OUT        the sixth session: GPU tests of the gated norm folded into the SSD, the model path and the norms;
#                   bin/profile-predict (bf16, FP8; the gate fold switched the other way in the same process); the
#                   rerank command on 43,000 pairs in FP8 as two fresh processes (the second is the figure)
#   all OUT         the fourth session's single call: GPU tests of ops.rmsnorm and the model path,
#                   bin/profile-predict (bf16, FP8), training at 128 and 384 pairs, the CLI in FP8 if time is left
set -o pipefail
what=$1
out=${2:-${OUT:-out}}
C=.device-data/retrieve_results_dl19.bm25.top100.json.gz
mkdir -p "$out"
bash .gpu/install-on-device.sh >/dev/null 2>&1 || { echo "install-on-device failed"; exit 1; }
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 TQDM_DISABLE=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$out/gpu.txt"
# The rerank command on 43,000 DL19-like pairs in FP8 as two fresh processes, each under a limit of $1 s: the first
# compiles what the machine's Triton cache lacks, the second is the figure; prints both scoring phases and wall times
cli_fp8_twice() {
    python3 bin/make-top1000-like $C /tmp/t1k.json.gz > /dev/null
    [ -d /tmp/m2 ] || timeout 50 python3 -m pyserini_ssm.init --model mamba2-780m --scale full \
        --tokenizer tests/data/smollm2-tokenizer --output /tmp/m2 > "$out/init.txt" 2>&1
    for run in 1 2; do
        began=$(date +%s.%N)
        timeout "$1" python3 -m pyserini_ssm.rerank --model /tmp/m2 --no-progress --candidates /tmp/t1k.json.gz \
            --dtype fp8 --output /tmp/r.fp8.$run.txt > "$out/cli-fp8-$run.txt" 2>&1
        echo "fp8 process $run: $(grep scored "$out/cli-fp8-$run.txt"); whole command" \
            "$(python3 -c "print(f'{$(date +%s.%N) - $began:.1f} s')")"
    done
}

case "$what" in
tests)
    for file in tests/test_ssd_short.py tests/test_conv_packed.py; do
        timeout 280 python3 -m pytest -q -m gpu "$file" > "$out/tests-$(basename "$file" .py).txt" 2>&1
        tail -1 "$out/tests-$(basename "$file" .py).txt"
    done
    ;;
train)
    timeout 330 python3 bin/profile-training-step $C --models mamba2-780m:short,llama-780m --groups 16,48 \
        --steps 6 --rows 0 > "$out/train.txt" 2>&1
    grep "^==" "$out/train.txt"
    timeout 200 python3 bin/profile-training-step $C --models mamba2-780m:short --groups "${GROUPS_MAMBA:-64}" \
        --steps 4 --rows 0 > "$out/train-mamba-large.txt" 2>&1
    grep "^==" "$out/train-mamba-large.txt"
    ;;
infer)
    timeout 560 python3 bin/bench-short-ssd $C --no-training --fp8 > "$out/bench.txt" 2>&1
    grep -v "^ \|^-" "$out/bench.txt" | tail -6
    ;;
cli)
    python3 bin/make-top1000-like $C /tmp/t1k.json.gz
    [ -d /tmp/m2 ] || python3 -m pyserini_ssm.init --model mamba2-780m --scale full \
        --tokenizer tests/data/smollm2-tokenizer --output /tmp/m2 > "$out/init.txt" 2>&1
    for dtype in bf16 fp8; do
        for run in 1 2; do
            timeout 120 python3 -m pyserini_ssm.rerank --model /tmp/m2 --no-progress --candidates /tmp/t1k.json.gz \
                --dtype $dtype --output /tmp/r.$dtype.txt > "$out/cli-$dtype-$run.txt" 2>&1
            echo "$dtype run $run: $(grep scored "$out/cli-$dtype-$run.txt")"
        done
    done
    ;;
profile)
    timeout 150 python3 -m pytest -q -m gpu tests/test_rmsnorm.py tests/test_fp8.py tests/test_ssd_short.py \
        -k "rmsnorm or triton_quantiser or model_scores" > "$out/gpu-tests.txt" 2>&1
    tail -1 "$out/gpu-tests.txt"
    for dtype in bf16 fp8; do
        timeout 120 python3 bin/profile-mamba2-row $C --table-only --dtype $dtype > "$out/row-$dtype.txt" 2>&1
        head -3 "$out/row-$dtype.txt"
    done
    python3 bin/make-top1000-like $C /tmp/t1k.json.gz > /dev/null
    timeout 60 python3 -m pyserini_ssm.init --model mamba2-780m --scale full \
        --tokenizer tests/data/smollm2-tokenizer --output /tmp/m2 > "$out/init.txt" 2>&1
    timeout 150 python3 bin/profile-rerank /tmp/m2 /tmp/t1k.json.gz --dtype fp8 --runs 2 --forwards \
        > "$out/rerank-fp8.txt" 2>&1
    grep -v "^  forward" "$out/rerank-fp8.txt" | grep -v "^  tokenize \[\|^  run lines \[\|^  merge \[\|^  commit \["
    ;;
sweep)
    timeout 170 python3 -m pytest -q -m gpu tests/test_conv_packed.py tests/test_ssd_short.py \
        -k "conv or (kernel_matches_reference and bfloat16) or model_scores" > "$out/gpu-tests.txt" 2>&1
    tail -1 "$out/gpu-tests.txt"
    timeout 200 python3 bin/profile-short-ssd --forward-only \
        --configs "64:4:8:loaded:factored:ht,128:8:8:loaded:factored:ht,32:4:4:loaded:factored:ht,$(
            )64:8:8:loaded:factored:ht,64:4:8:loaded:factored:h2:ht" \
        --conv-configs "32x128:4,16x128:4,16x256:4,32x256:8,64x128:8,8x256:2,32x64:2" > "$out/sweep.txt" 2>&1
    grep -v "^ " "$out/sweep.txt"
    python3 bin/make-top1000-like $C /tmp/t1k.json.gz > /dev/null
    timeout 60 python3 -m pyserini_ssm.init --model mamba2-780m --scale full \
        --tokenizer tests/data/smollm2-tokenizer --output /tmp/m2 > "$out/init.txt" 2>&1
    timeout 150 python3 bin/profile-rerank /tmp/m2 /tmp/t1k.json.gz --dtype fp8 --runs 2 --first-forward \
        > "$out/rerank-fp8.txt" 2>&1
    grep -v "^  forward\|^  tokenize \[\|^  run lines \[\|^  merge \[\|^  commit \[" "$out/rerank-fp8.txt" | head -80
    ;;
fold)
    timeout 150 python3 -m pytest -q -m gpu tests/test_conv_packed.py tests/test_ssd_short.py \
        -k "conv or (kernel_matches_reference and bfloat16) or model_scores" > "$out/gpu-tests.txt" 2>&1
    tail -1 "$out/gpu-tests.txt"
    timeout 170 python3 bin/profile-predict $C --dtypes bf16,fp8 --repeats 3 > "$out/predict.txt" 2>&1
    grep "^==\|GPU idle" "$out/predict.txt"
    cli_fp8_twice 80
    ;;
gate)
    timeout 200 python3 -m pytest -q -s -m gpu tests/test_ssd_short.py tests/test_rmsnorm.py \
        -k "gate_folded or model_scores or norm" > "$out/gpu-tests.txt" 2>&1
    tail -1 "$out/gpu-tests.txt"
    grep "gate folded\|tiny model" "$out/gpu-tests.txt" | head -4
    timeout 170 python3 bin/profile-predict $C --dtypes bf16,fp8 --repeats 3 --flip GATE_FOLD > "$out/predict.txt" 2>&1
    grep "^==\|GPU idle\|GATE_FOLD" "$out/predict.txt"
    cli_fp8_twice 60
    ;;
final)
    timeout 170 python3 bin/profile-predict $C --dtypes bf16,fp8 --repeats 3 --flip CONV_FOLD > "$out/predict.txt" 2>&1
    grep "^==\|GPU idle\|conv fold" "$out/predict.txt"
    cli_fp8_twice 60
    ;;
all)
    # the fourth session's last call (under 8 minutes): GPU tests of the new norms, the FP8 quantisers and the model
    # path; training against llama-780m at 128 and 384 pairs; predict against packed (bf16, FP8); then the CLI in
    # FP8 if the time allows
    timeout 60 python3 -m pytest -q -m gpu tests/test_rmsnorm.py tests/test_fp8.py tests/test_ssd_short.py \
        -k "rmsnorm or triton_quantiser or model_scores" > "$out/gpu-tests.txt" 2>&1
    tail -1 "$out/gpu-tests.txt"
    timeout 200 python3 bin/profile-training-step $C --models mamba2-780m:short,llama-780m --groups 16,48 \
        --steps 3 --rows 0 > "$out/train.txt" 2>&1
    grep "^==" "$out/train.txt"
    timeout 150 python3 bin/profile-predict $C --dtypes bf16,fp8 --repeats 2 > "$out/predict.txt" 2>&1
    grep -v "^  *forward" "$out/predict.txt"
    if [ "$SECONDS" -lt 420 ]; then
        python3 bin/make-top1000-like $C /tmp/t1k.json.gz > /dev/null
        timeout 40 python3 -m pyserini_ssm.init --model mamba2-780m --scale full \
            --tokenizer tests/data/smollm2-tokenizer --output /tmp/m2 > "$out/init.txt" 2>&1
        timeout 45 python3 -m pyserini_ssm.rerank --model /tmp/m2 --no-progress --candidates /tmp/t1k.json.gz \
            --dtype fp8 --output /tmp/r.fp8.txt > "$out/cli-fp8.txt" 2>&1
        echo "fp8: $(grep scored "$out/cli-fp8.txt")"
    fi
    ;;
*)
    echo "usage: bin/gpu-issue13.sh tests|train|infer|cli|all OUT" >&2
    exit 2
    ;;
esac
