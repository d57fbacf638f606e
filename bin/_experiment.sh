# Shared steps of the paper-experiment scripts (bin/dl19-passage, bin/dl20-passage, bin/msmarco-dev-passage,
# bin/msmarco-doc, bin/beir). Sourced, not run. Each step skips work whose output already exists, so a script can
# be rerun after an interruption (the rerank step itself resumes from <output>.partial).
#
# Environment (defaults in brackets): PYTHON [python], WORK [runs/<experiment>], HITS [1000], DEPTH [100: reranked
# per query], TOPICS_DIR [unset: Pyserini downloads topics/qrels; set it to a folder of Anserini topics-and-qrels
# files to stay offline], EXTRA_RERANK_ARGS [e.g. "--batch-size 64 --dtype bf16"].
set -euo pipefail
PYTHON=${PYTHON:-python}
HITS=${HITS:-1000}
DEPTH=${DEPTH:-100}
EXTRA_RERANK_ARGS=${EXTRA_RERANK_ARGS:-}
TOPICS_ARGS=()
if [[ -n "${TOPICS_DIR:-}" ]]; then TOPICS_ARGS=(--topics-dir "$TOPICS_DIR"); fi

usage_model() {
  if [[ $# -lt 1 || "$1" == -h || "$1" == --help ]]; then
    sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
    exit 2
  fi
}

# A name safe in file names: mamba2-780m stays, /path/to/checkpoint becomes checkpoint.
model_label() { basename "$1" | tr -c 'A-Za-z0-9._\n-' '_'; }

# The Hugging Face checkpoint a registry name loads (or the folder itself), for the download notice.
model_source() {
  "$PYTHON" - "$1" <<'PY'
import sys
from pathlib import Path
name = sys.argv[1]
if Path(name).is_dir():
    print(f"local checkpoint folder {name} (nothing to download)")
else:
    try:
        from pyserini_ssm.models.registry import get_spec
        spec = get_spec(name)
        print(f"Hugging Face weights {spec.checkpoint} (tokenizer {spec.tokenizer})")
    except Exception as error:
        print(f"model {name!r}: {error}")
PY
}

# announce INDEX TOPICS QRELS MODEL: say what will be downloaded before anything is.
announce() {
  local index=$1 topics=$2 qrels=$3 model=$4
  echo "== $EXPERIMENT: BM25 top-$HITS on $index, rerank top-$DEPTH with $model, evaluate, leaderboard row"
  echo "This will download, once (Pyserini caches in ~/.cache/pyserini, Hugging Face in ~/.cache/huggingface):"
  if [[ -d "$index" || "$index" == */* ]]; then
    echo "  - nothing for the index: local folder $index"
  else
    echo "  - Pyserini prebuilt Lucene index '$index' (several GB for MS MARCO; BEIR indexes are smaller)"
  fi
  if [[ -n "${TOPICS_DIR:-}" ]]; then
    echo "  - nothing for topics/qrels: read from $TOPICS_DIR"
  else
    echo "  - topics '$topics' and qrels '$qrels' (small files, from Anserini's repository through Pyserini)"
  fi
  echo "  - $(model_source "$model")"
  echo "Outputs go to $WORK/."
}

# bm25 INDEX TOPICS OUTPUT [HITS]
bm25() {
  local index=$1 topics=$2 output=$3 hits=${4:-$HITS}
  if [[ -s "$output" ]]; then echo "-- BM25 run exists: $output"; return; fi
  echo "-- BM25: $output"
  "$PYTHON" -m pyserini_ssm.search --index "$index" --topics "$topics" --hits "$hits" --output "$output" \
    "${TOPICS_ARGS[@]}"
}

# rerank INDEX TOPICS RUN MODEL OUTPUT [more rerank args]
rerank() {
  local index=$1 topics=$2 run=$3 model=$4 output=$5
  shift 5
  if [[ -s "$output" ]]; then echo "-- reranked run exists: $output"; return; fi
  echo "-- rerank top-$DEPTH with $model: $output"
  # shellcheck disable=SC2086  # EXTRA_RERANK_ARGS is a list of flags
  "$PYTHON" -m pyserini_ssm.rerank --index "$index" --topics "$topics" --run "$run" --model "$model" \
    --rerank-depth "$DEPTH" --output "$output" "${TOPICS_ARGS[@]}" "$@" $EXTRA_RERANK_ARGS
}

# evaluate RUN QRELS
evaluate() {
  echo "-- $(basename "$1"):"
  "$PYTHON" -m pyserini_ssm.evaluate --run "$1" --qrels "$2" "${TOPICS_ARGS[@]}"
}

# leaderboard QRELS OUTPUT_STEM LABEL=RUN...  (the first run is the baseline)
leaderboard() {
  local qrels=$1 stem=$2
  shift 2
  "$PYTHON" -m pyserini_ssm.leaderboard "$@" --qrels "$qrels" "${TOPICS_ARGS[@]}" \
    --output "$stem.md" --plot "$stem.png"
  "$PYTHON" -m pyserini_ssm.leaderboard "$@" --qrels "$qrels" "${TOPICS_ARGS[@]}" --format csv --output "$stem.csv"
  echo "-- leaderboard ($stem.md, per-query deltas in $stem.png):"
  cat "$stem.md"
}

# passage_experiment TOPICS QRELS MODEL: the whole pipeline on msmarco-v1-passage (or $INDEX).
passage_experiment() {
  local topics=$1 qrels=$2 model=$3
  local index=${INDEX:-msmarco-v1-passage}
  local label
  label=$(model_label "$model")
  mkdir -p "$WORK"
  announce "$index" "$topics" "$qrels" "$model"
  local bm25_run=$WORK/run.$EXPERIMENT.bm25.txt
  local model_run=$WORK/run.$EXPERIMENT.$label.rerank$DEPTH.txt
  bm25 "$index" "$topics" "$bm25_run"
  rerank "$index" "$topics" "$bm25_run" "$model" "$model_run"
  evaluate "$bm25_run" "$qrels"
  evaluate "$model_run" "$qrels"
  leaderboard "$qrels" "$WORK/leaderboard.$EXPERIMENT.$label" "bm25=$bm25_run" "$label=$model_run"
}
