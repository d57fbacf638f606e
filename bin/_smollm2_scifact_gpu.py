"""The GPU part of bin/experiment-smollm2-scifact, in one process (no Java, no pytrec_eval needed).

1. dequantise the GGUF once into our reranker folder (fp32 safetensors; the same weights `--model x.gguf` gives);
2. for each configuration: train on the train split minus the 100 held-out queries, saving a checkpoint after
   every epoch listed, and rerank the held-out queries' BM25 top-100 with each checkpoint;
3. choose the (lr, epochs) with the best held-out nDCG@10 (binary qrels: the same number pytrec_eval gives;
   `evaluate` recomputes it afterwards);
4. train that configuration on all train queries (the same schedule: a checkpoint of a longer run is reproduced
   with --stop-after-steps) and rerank the test queries' BM25 top-100.

It calls `pyserini_ssm.train.main` / `pyserini_ssm.rerank.main` with the flags the CLIs take. `--time-budget`
seconds bound the whole script: a configuration whose estimated cost would leave too little for step 4 is skipped,
and when even step 4 no longer fits, the test queries are reranked with the chosen held-out model (709 queries);
summary.json says which of these happened.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from collections import defaultdict
from pathlib import Path


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def read_qrels(path: Path) -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = defaultdict(dict)
    for line in open(path):
        qid, _, docid, rel = line.split()
        qrels[qid][docid] = int(rel)
    return qrels


def ndcg_at_10(run_path: Path, qrels: dict[str, dict[str, int]]) -> float:
    """trec_eval's ndcg_cut.10 (linear gains, log2 discounts, ties by (-score, docid) as our run files are ordered),
    averaged over the judged queries."""
    run: dict[str, list[tuple[float, str]]] = defaultdict(list)
    for line in open(run_path):
        qid, _, docid, _, score, _ = line.split()
        run[qid].append((-float(score), docid))
    values = []
    for qid, judged in qrels.items():
        ranked = [docid for _, docid in sorted(run.get(qid, []))[:10]]
        dcg = sum(judged.get(docid, 0) / math.log2(rank + 2) for rank, docid in enumerate(ranked))
        ideal = sorted((rel for rel in judged.values() if rel > 0), reverse=True)[:10]
        idcg = sum(rel / math.log2(rank + 2) for rank, rel in enumerate(ideal))
        values.append(dcg / idcg if idcg > 0 else 0.0)
    return sum(values) / len(values)


def count_lines(path: Path) -> int:
    import gzip

    with (gzip.open(path, "rt") if path.suffix == ".gz" else open(path)) as handle:
        return sum(1 for _ in handle)


def train_log_summary(output: Path) -> dict:
    records = [json.loads(line) for line in open(output / "train_log.jsonl")]
    losses = [record["loss"] for record in records]
    speeds = sorted(record["pairs_per_s"] for record in records[1:]) or [records[0]["pairs_per_s"]]
    return {"steps": records[-1]["step"], "loss_first10": sum(losses[:10]) / len(losses[:10]),
            "loss_last10": sum(losses[-10:]) / len(losses[-10:]), "pairs_per_s_median": speeds[len(speeds) // 2],
            "elapsed_s": records[-1]["elapsed_s"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gguf", required=True)
    parser.add_argument("--tokenizer", help="the GGUF's tokenizer already converted and saved (its folder): skips "
                        "transformers' GGUF vocabulary conversion, ~30 s of one CPU core")
    parser.add_argument("--data", required=True, help="folder with prepare's files (uncompressed is fine)")
    parser.add_argument("--work", required=True)
    parser.add_argument("--out", required=True, help="run files and summary.json go here")
    parser.add_argument("--configs", default="a:1e-4:4:2,4;b:3e-5:4:2,4",
                        help="tag:lr:epochs:checkpoint epochs (comma-separated), ';' between configurations")
    parser.add_argument("--time-budget", type=float, default=1e9, help="seconds for the whole script")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--rerank-batch", type=int, default=128)
    parser.add_argument("--msmarco-train", help="optional, last and only if time is left: train_grouped.jsonl of the "
                        "1,000 MS MARCO triples (1 epoch, lr 3e-5, max length 256, as bin/experiment-minilm-msmarco)")
    parser.add_argument("--dl19-candidates", help="the DL19 BM25 top-100 candidates file, reranked by that model")
    parser.add_argument("--extra-rerank-args", default="", help="e.g. '--dtype bf16'")
    parser.add_argument("--extra-train-args", default="", help="e.g. '--pack' (packed rows, varlen attention)")
    parser.add_argument("--fp8-test", action="store_true",
                        help="also rerank the test queries with the final model in FP8 (--dtype fp8): the FP8 "
                             "projections' effect on the ranking")
    args = parser.parse_args()
    start = time.perf_counter()
    elapsed = lambda: time.perf_counter() - start  # noqa: E731

    import torch

    from pyserini_ssm import rerank as rerank_cli
    from pyserini_ssm import train as train_cli
    from pyserini_ssm.models.reranker import Reranker

    data, work, out = Path(args.data), Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    pick = lambda stem: next(path for path in sorted(data.glob(stem + "*")))  # noqa: E731
    train_full, train_dev = pick("scifact-train.bm25-negatives.jsonl"), pick("scifact-train-minus-dev.jsonl")
    dev_candidates, test_candidates = pick("scifact-dev.bm25.top100.json"), pick("scifact-test.bm25.top100.json")
    dev_qrels = read_qrels(data / "scifact-dev.qrels.txt")
    summary: dict = {"gguf": str(args.gguf), "gguf_sha256": sha256(Path(args.gguf)),
                     "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
                     "torch": torch.__version__, "configs": [], "date_utc": time.strftime("%Y-%m-%d %H:%M:%S",
                                                                                          time.gmtime())}
    import transformers

    summary["transformers"] = transformers.__version__
    print(f"GGUF sha256 {summary['gguf_sha256']} on {summary['gpu']}", flush=True)
    extra = args.extra_rerank_args.split()

    base = work / "smollm2-base"
    if not (base / "reranker.json").is_file():
        began = time.perf_counter()
        Reranker.from_pretrained(args.gguf, device="cpu", dtype="fp32",
                                 tokenizer=args.tokenizer).save_pretrained(str(base))
        summary["dequantise_s"] = round(time.perf_counter() - began, 1)
        print(f"dequantised {args.gguf} into {base} in {summary['dequantise_s']} s", flush=True)

    def train(train_jsonl: Path, output: Path, lr: str, epochs: int, save_every: int = 0,
              stop_after: int | None = None) -> None:
        argv = ["--model", str(base), "--train-jsonl", str(train_jsonl), "--output", str(output),
                "--group-size", str(args.group), "--batch-size", str(args.batch), "--lr", lr, "--epochs",
                str(epochs), "--max-length", str(args.max_length), "--seed", "42"]
        if save_every:
            argv += ["--save-every", str(save_every)]
        if stop_after:
            argv += ["--stop-after-steps", str(stop_after)]
        code = train_cli.main(argv + args.extra_train_args.split())
        assert code == 0, code

    def rerank(candidates: Path, model: Path, run: Path, more: tuple[str, ...] = ()) -> float:
        began = time.perf_counter()
        code = rerank_cli.main(["--candidates", str(candidates), "--model", str(model), "--max-length",
                                str(args.max_length), "--batch-size", str(args.rerank_batch), "--output", str(run),
                                *extra, *more])
        assert code == 0, code
        return time.perf_counter() - began

    dev_queries = count_lines(train_dev)
    full_queries = count_lines(train_full)
    steps_dev, steps_full = dev_queries // args.batch, full_queries // args.batch
    results = []  # (ndcg, tag, lr, epochs_total, epoch_used, model_dir)
    per_epoch_s = None
    rerank_dev_s = None
    for spec in args.configs.split(";"):
        tag, lr, epochs, saves = spec.split(":")
        epochs, saves = int(epochs), sorted(int(value) for value in saves.split(","))
        if per_epoch_s is not None:
            cost = per_epoch_s * epochs + rerank_dev_s * len(saves)
            final = per_epoch_s * epochs * full_queries / dev_queries + rerank_dev_s * 3.2
            if elapsed() + cost + final > args.time_budget:
                print(f"skipping config {tag}: ~{cost:.0f} s would leave too little for the final run", flush=True)
                summary["configs"].append({"tag": tag, "lr": lr, "epochs": epochs, "skipped": "time budget"})
                continue
        output = work / f"dev-{tag}"
        began = time.perf_counter()
        save_every = steps_dev * saves[0] if saves[0] < epochs else 0
        train(train_dev, output, lr, epochs, save_every=save_every)
        trained_s = time.perf_counter() - began
        per_epoch_s = trained_s / epochs
        record = {"tag": tag, "lr": lr, "epochs": epochs, "train": train_log_summary(output), "train_s": trained_s,
                  "held_out": {}}
        for epoch in saves:
            model = output / ("model" if epoch == epochs else f"checkpoint-{steps_dev * epoch}")
            if not model.is_dir():
                continue
            run = out / f"run.scifact-dev.smollm2.{tag}-ep{epoch}.txt"
            rerank_dev_s = rerank(dev_candidates, model, run)
            score = ndcg_at_10(run, dev_qrels)
            record["held_out"][str(epoch)] = round(score, 4)
            results.append((score, tag, lr, epochs, epoch, model))
            print(f"config {tag} lr {lr} epoch {epoch}/{epochs}: held-out nDCG@10 {score:.4f} "
                  f"({elapsed():.0f} s in)", flush=True)
        summary["configs"].append(record)
        (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))

    best = max(results, key=lambda item: item[0])  # the first of equals: configurations in the given order
    score, tag, lr, epochs, epoch, dev_model = best
    summary["chosen"] = {"tag": tag, "lr": lr, "epochs_schedule": epochs, "epochs_trained": epoch,
                         "held_out_ndcg10": round(score, 4)}
    final_cost = per_epoch_s * epoch * full_queries / dev_queries + (rerank_dev_s or 10) * 3.2
    test_run = out / "run.scifact-test.smollm2-ft.txt"
    if elapsed() + final_cost <= args.time_budget:
        final = work / "final"
        stop = steps_full * epoch if epoch < epochs else None
        began = time.perf_counter()
        train(train_full, final, lr, epochs, stop_after=stop)
        summary["final"] = {"queries": full_queries, "train": train_log_summary(final),
                            "train_s": time.perf_counter() - began}
        model = final / ("model" if stop is None else f"checkpoint-{stop}")
    else:
        print("no time left for the final run on all train queries: the test queries are reranked with the "
              "held-out model", flush=True)
        summary["final"] = {"queries": dev_queries, "note": "time budget: the chosen held-out model (709 queries)"}
        model = dev_model
    summary["final"]["rerank_test_s"] = rerank(test_candidates, model, test_run)
    summary["final"]["model"] = str(model)
    if args.fp8_test:
        summary["final"]["rerank_test_fp8_s"] = rerank(test_candidates, model,
                                                       out / "run.scifact-test.smollm2-ft.fp8.txt", ("--dtype", "fp8"))
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))

    if args.msmarco_train and args.dl19_candidates:
        pairs = count_lines(Path(args.msmarco_train)) // args.batch * args.batch * args.group
        pairs_per_s = summary["final"].get("train", {}).get("pairs_per_s_median", 100.0)
        estimate = pairs / pairs_per_s + 40  # + loading, saving and the 4,300 DL19 pairs
        if elapsed() + estimate > args.time_budget:
            summary["msmarco"] = {"skipped": f"time budget (~{estimate:.0f} s needed)"}
        else:
            output = work / "msmarco"
            argv = ["--model", str(base), "--train-jsonl", args.msmarco_train, "--output", str(output),
                    "--group-size", str(args.group), "--batch-size", str(args.batch), "--lr", "3e-5", "--epochs", "1",
                    "--max-length", "256", "--seed", "42"]
            assert train_cli.main(argv + args.extra_train_args.split()) == 0
            began = time.perf_counter()
            assert rerank_cli.main(["--candidates", args.dl19_candidates, "--model", str(output / "model"),
                                    "--max-length", "256", "--batch-size", str(args.rerank_batch), "--output",
                                    str(out / "run.dl19.smollm2-ft-msmarco1k.txt"), *extra]) == 0
            summary["msmarco"] = {"train": train_log_summary(output), "rerank_dl19_s": time.perf_counter() - began,
                                  "lr": "3e-5", "epochs": 1, "max_length": 256}
    summary["elapsed_s"] = round(elapsed(), 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print(json.dumps(summary, indent=2, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
