"""Fine-tuning rerankers: training data (`data`), losses (`losses`) and the training loop (`loop`), whose parts are
`processes` (torchrun), `trainable` (the model), `optimization` (AdamW, schedule, dtype), `inputs` (micro-batches)
and `run_folder` (the output folder and its checkpoints).

Nothing here imports pyserini or Java at module level: BM25 negative mining imports the first stage only when it
is asked for, so training from a ready JSONL runs on a GPU machine without Java.
"""
