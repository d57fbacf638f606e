"""sentence-transformers' `CrossEncoder.predict`, the peer baseline for encoders: the same backbone weights, saved
as a Hugging Face folder and loaded by sentence-transformers.

This module imports no pyserini and no Java: it runs on the GPU machines.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pyserini_ssm.bench_models import count_parameters
from pyserini_ssm.bench_records import Measurement, _base_record, _fill
from pyserini_ssm.bench_timing import time_call
from pyserini_ssm.bench_workloads import Workload


def crossencoder_from_reranker(reranker: Any, folder: str | os.PathLike, dtype: Any = None) -> Any:
    """A sentence-transformers `CrossEncoder` (num_labels=1) on the same backbone weights, through a saved Hugging
    Face folder. Its classification head is its own (BERT's pooler + classifier), so scores are not comparable;
    throughput is."""
    folder = Path(folder)
    reranker.model.backbone.save_pretrained(str(folder), safe_serialization=True)
    reranker.tokenizer.save_pretrained(str(folder))
    return _crossencoder(str(folder), reranker, dtype)


def _crossencoder(path: str, reranker: Any, dtype: Any = None) -> Any:
    from sentence_transformers import CrossEncoder

    attempts = [{"dtype": dtype}, {"torch_dtype": dtype}] if dtype is not None else [{}]
    last_error: Exception | None = None
    for kwargs in attempts:
        try:
            return CrossEncoder(path, num_labels=1, max_length=reranker.max_length, device=str(reranker.device),
                                model_kwargs=kwargs)
        except TypeError as error:  # the dtype keyword changed name across transformers versions
            last_error = error
    raise last_error  # type: ignore[misc]


def measure_crossencoder(reranker: Any, workload: Workload, *, crossencoder: Any = None, batch_size: int = 32,
                         repeats: int = 3, warmup: int = 1, label: str = "crossencoder") -> Measurement:
    """`CrossEncoder.predict` (tokenization included) on the workload's texts."""
    import torch

    if workload.texts is None:
        return _base_record(reranker, "crossencoder", label, workload, skipped=True,
                            note="no texts for this workload (a real tokenizer without --candidates)")
    texts = [list(pair) for pair in workload.texts]
    record = _base_record(reranker, "crossencoder", label, workload, batch_size=batch_size, repeats=repeats,
                          note="sentence-transformers CrossEncoder.predict, end to end")
    record.parameters = count_parameters(crossencoder.model)
    from pyserini_ssm.models.dtypes import DTYPE_NAMES

    record.dtype = DTYPE_NAMES.get(next(crossencoder.model.parameters()).dtype, "?")
    timing = time_call(lambda: crossencoder.predict(texts, batch_size=batch_size, show_progress_bar=False,
                                                    convert_to_numpy=True), reranker.device, repeats, warmup)
    return _fill(record, timing, reranker)
