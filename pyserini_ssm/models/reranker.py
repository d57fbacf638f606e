"""`Reranker`: one interface over every model family. Score (query, document) pairs; rerank first-stage hits.

    reranker = Reranker.from_pretrained("mamba2-780m")            # or a checkpoint folder
    scores = reranker.predict([("what is a cat", "A cat is ..."), ...])
    hits = reranker.rerank("what is a cat", pyserini_hits, depth=100)

Inside `predict`: pairs are tokenized in pieces on a background thread (each query once, documents in one batched
call) while earlier pieces are scored. Where the model packs on this device (Mamba-2 on the mamba-ssm kernels;
decoder and encoder transformers on CUDA in bf16/fp16, through varlen attention: `models.scoring.packing_support`)
packed rows without padding are cut across pieces and queued without waiting for the device (`predict_stream`);
elsewhere each chunk is cut into length-sorted padded batches. Scores go back to input order. A CUDA out-of-memory
error halves the batch and carries on.
"""

from __future__ import annotations

import collections
import contextlib
import gc
import logging
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch

from pyserini_ssm.collection import raw_document_text
from pyserini_ssm.errors import UserError
from pyserini_ssm.models.checkpoints import (
    LoadedCheckpoint, load_checkpoint, pad_token_id, write_reranker_dir,
)
# The dtype names and their resolution live in models.dtypes; re-exported here, where callers have found them.
from pyserini_ssm.models.dtypes import DTYPE_NAMES, DTYPES, resolve_dtype, resolve_precision  # noqa: F401
from pyserini_ssm.models.families import family_adapter
from pyserini_ssm.models.registry import ModelSpec
from pyserini_ssm.models.scoring import ScoringModel, packing_support, widest_activation
from pyserini_ssm.models.templates import PairEncoder, get_template
from pyserini_ssm.ops.batching import (
    RowPacker, length_sorted_batches, pack_batch, pack_sequences, pad_batch, scatter_scores,
)
from pyserini_ssm.runs import Hit, ranking_key

logger = logging.getLogger(__name__)

UNTRAINED_WARNING = ("{name}: the checkpoint has no trained score head; its scores are untrained (random head). "
                     "Fine-tune it with `python -m pyserini_ssm.train` or load a fine-tuned reranker")
# Pairs tokenized per chunk: large enough for length sorting to pay off, small enough to overlap with scoring.
TOKENIZE_CHUNK = 2048
# The first chunk is small: the device waits for its tokenization (nothing to overlap it with yet). On an H200,
# llama-780m predict with 2,048-pair chunks ran at 94 % of the packed model-only rate (docs/BENCHMARKS.md).
FIRST_CHUNK = 256


def chunk_bounds(total: int, first: int = FIRST_CHUNK, size: int = TOKENIZE_CHUNK) -> list[tuple[int, int]]:
    """(start, end) of the tokenization chunks of `total` pairs: `first` pairs, then `size` at a time."""
    bounds, start = [], 0
    while start < total:
        end = min(total, start + (first if start == 0 else size))
        bounds.append((start, end))
        start = end
    return bounds
# Packed rows hold at least this many tokens: on an H100 a 780M model scores 16k-token rows 30 % slower than
# 32k-token ones and gains nothing from longer rows (docs/BENCHMARKS.md), and a packed row's memory is small.
PACKED_ROW_TOKENS = 32768


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise UserError(f"unknown device {device!r} (use cpu, cuda or cuda:N)") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device {device!r} asked for, but CUDA is not available here (use --device cpu)")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise UserError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    return resolved


def hit_fields(hit: Any) -> tuple[str, float, str | None]:
    """(docid, score, text) of a runs.Hit, a Pyserini search result, or a dict with docid/content|text/score."""
    if isinstance(hit, dict):
        if "docid" not in hit:
            raise UserError(f"a candidate has no docid: {str(hit)[:100]}")
        text = next((hit[key] for key in ("content", "contents", "text") if hit.get(key) is not None), None)
        return str(hit["docid"]), float(hit.get("score", 0.0)), text
    docid = getattr(hit, "docid", None)
    if docid is None:
        raise UserError(f"cannot rerank a {type(hit).__name__}: it has no docid")
    score = float(getattr(hit, "score", 0.0))
    text = getattr(hit, "text", None)
    if not text:
        text = getattr(hit, "contents", None)  # Pyserini: the stored contents field, empty when not stored
    if not text:
        raw = getattr(hit, "raw", None)
        if raw is None:
            document = getattr(hit, "lucene_document", None)
            if document is not None:
                raw = document.get("raw")
                if raw is None:
                    raw = document.get("contents")
        text = raw_document_text(raw) if raw is not None else None
    return str(docid), score, text


@contextlib.contextmanager
def cyclic_gc_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off inside (reference counting still frees almost everything), as it was
    after. A full collection of a process holding torch and transformers walks about 400,000 objects: 0.26 s on a
    2-core CPU, a stretch in which no kernel is queued; on an H200 one left the GPU idle for 174 ms in the middle of
    an FP8 `predict` (bin/profile-predict, 2026-12-02)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class _QueuedRow:
    """One packed row's scores: queued on the device, copied back without waiting (`done` polls the copy)."""

    def __init__(self, keys: list[tuple[int, int]], host: torch.Tensor, event: Any) -> None:
        self.keys = keys
        self.host = host
        self.event = event

    @classmethod
    def of(cls, keys: list[tuple[int, int]], values: torch.Tensor) -> "_QueuedRow":
        values = values.detach().float().reshape(-1)
        if values.device.type != "cuda":
            return cls(keys, values.cpu(), None)
        host = torch.empty(values.shape, dtype=torch.float32, pin_memory=True)
        host.copy_(values, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        return cls(keys, host, event)

    def done(self) -> bool:
        return self.event is None or self.event.query()

    def wait(self) -> torch.Tensor:
        if self.event is not None:
            self.event.synchronize()
        return self.host


class _ListScores:
    """The scores of one list of `predict_stream`, gathered from the rows that hold its pairs."""

    def __init__(self, number: int) -> None:
        self.number = number
        self.size = 0  # pairs tokenized so far
        self.taken = False  # every piece tokenized: `size` is final
        self.rows: list[_QueuedRow] = []
        self._positions: list[list[int]] = []  # per row, this list's positions
        self._scored = 0

    def add(self, row: _QueuedRow, position: int) -> None:
        if not self.rows or self.rows[-1] is not row:
            self.rows.append(row)
            self._positions.append([])
        self._positions[-1].append(position)
        self._scored += 1

    @property
    def complete(self) -> bool:
        return self.taken and self._scored == self.size

    def scores(self) -> np.ndarray:
        out = np.empty(self.size, dtype=np.float32)
        for row, positions in zip(self.rows, self._positions):
            host = row.wait().numpy()
            mine = [index for index, key in enumerate(row.keys) if key[0] == self.number]
            out[positions] = host[mine]
        return out


class Reranker:
    """A cross-encoder reranker of any family: `predict(pairs)` scores, `rerank(query, hits)` reorders."""

    def __init__(self, spec: ModelSpec, model: ScoringModel, tokenizer: Any, *, device: torch.device,
                 dtype: torch.dtype, head_trained: bool, max_length: int | None = None,
                 use_token_types: bool | None = None) -> None:
        self.spec = spec
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.dtype = dtype
        self.head_trained = head_trained
        self.max_length = int(max_length or spec.max_length)
        self.encoder = PairEncoder(tokenizer, get_template(spec.template), self.max_length,
                                   use_token_types=use_token_types)
        self.pad_id = pad_token_id(tokenizer)
        self.fp8: Any = None  # models.fp8.Fp8Conversion when the Linear layers run in FP8 (--dtype fp8)
        # Pack on the GPU where the model can (Mamba-2's seq_idx, transformers' varlen attention); on the CPU the
        # varlen path is the per-sequence reference, slower than padded batches.
        mode, _ = packing_support(model, device, dtype)
        self.pack = mode is not None and device.type == "cuda"
        self._warned_untrained = False

    # -----------------------------------------------------------------------------------------------------------
    # Construction

    @classmethod
    def from_pretrained(cls, name_or_path: str, *, device: str | torch.device | None = None,
                        dtype: str | torch.dtype | None = None, max_length: int | None = None,
                        backend: str = "auto", tokenizer: Any = None) -> "Reranker":
        """Load a registry name or a checkpoint folder (any format of `models.checkpoints`).

        dtype: bf16, fp16 or fp32 (default bf16 on CUDA, fp32 on CPU), or fp8: bf16 weights with the backbone's
        Linear layers in FP8 (CUDA, compute capability >= 8.9; `models.fp8`). backend: auto, torch or cuda — how
        Mamba models run (mamba-ssm kernels or transformers' torch code); transformers models only run as
        `auto`/`torch`.
        """
        resolved_device = resolve_device(device)
        resolved_dtype, fp8 = resolve_precision(dtype, resolved_device)
        if backend not in ("auto", "torch", "cuda"):
            raise UserError(f"unknown backend {backend!r} (use auto, torch or cuda)")
        if max_length is not None and int(max_length) < 2:
            raise UserError(f"max length must be at least 2 tokens, not {max_length}")
        if isinstance(tokenizer, str):
            from pyserini_ssm.models.checkpoints import load_tokenizer

            tokenizer = load_tokenizer(tokenizer)
        loaded = load_checkpoint(name_or_path, dtype=resolved_dtype, tokenizer=tokenizer)
        return cls.from_loaded(loaded, device=resolved_device, dtype=resolved_dtype, max_length=max_length,
                               backend=backend, fp8=fp8)

    @classmethod
    def from_loaded(cls, loaded: LoadedCheckpoint, *, device: torch.device, dtype: torch.dtype,
                    max_length: int | None = None, backend: str = "auto", fp8: bool = False) -> "Reranker":
        """`fp8`: swap the backbone's Linear layers for FP8 ones after loading (`dtype` must be bf16)."""
        spec = loaded.spec
        if fp8:
            from pyserini_ssm.models.fp8 import check_fp8_device

            check_fp8_device(device)
            if dtype != torch.bfloat16:
                raise UserError(f"fp8 keeps bf16 weights around its FP8 Linear layers, not {dtype}")
        adapter = family_adapter(spec.family)
        if backend == "cuda" and not adapter.kernel_backend:
            raise UserError(f"backend 'cuda' selects the mamba-ssm kernels, but {spec.name} is a {spec.family} "
                            f"transformer (use backend auto or torch)")
        template = get_template(spec.template)
        tokenizer = loaded.tokenizer
        added = [token for token in template.added_tokens if token not in tokenizer.get_vocab()]
        if added:
            tokenizer.add_tokens(added)
        backbone_hf = loaded.backbone
        config = backbone_hf.config
        embeddings = backbone_hf.get_input_embeddings()
        if len(tokenizer) > embeddings.num_embeddings:
            if not adapter.grows_embeddings:
                raise UserError(f"{loaded.path}: the tokenizer has {len(tokenizer)} tokens, the model's embeddings "
                                f"{embeddings.num_embeddings}")
            backbone_hf.resize_token_embeddings(len(tokenizer))
            logger.warning("%s: grew the embeddings to %d tokens for the template's markers %s (new rows are "
                           "untrained)", spec.name, len(tokenizer), added)
        if max_length is not None:
            spec = replace(spec, max_length=int(max_length))
        positions = adapter.usable_positions(config)
        if positions is not None and spec.max_length > positions:
            raise UserError(f"max length {spec.max_length} exceeds what {spec.name} can encode "
                            f"({positions} positions); lower --max-length")
        backbone, hidden_size = adapter.scoring_backbone(backbone_hf, backend, device)
        model = ScoringModel(backbone, spec.family, spec.pooling, hidden_size, backbone_config=config)
        if loaded.head_state is not None:
            head = loaded.head_state
            if tuple(head["weight"].shape) != (1, hidden_size):
                raise UserError(f"{loaded.path}: head weight has shape {tuple(head['weight'].shape)}, the backbone "
                                f"needs (1, {hidden_size})")
            model.head.load_state_dict({"weight": head["weight"], "bias": head["bias"].reshape(1)})
        else:
            init_untrained_head(model.head)
        model = model.to(device=device, dtype=dtype).eval()
        # The head stays fp32: a bf16 logit has ~3 significant digits, enough to create ties that reorder a ranking.
        model.head.float()
        conversion = None
        if fp8:
            from pyserini_ssm.models.fp8 import convert_to_fp8

            conversion = convert_to_fp8(model)
            logger.info("%s: %s", spec.name, conversion.summary())
        reranker = cls(spec, model, tokenizer, device=device, dtype=dtype,
                       head_trained=loaded.head_trained, use_token_types=adapter.use_token_types(config))
        reranker.fp8 = conversion
        if not reranker.head_trained:
            reranker._warn_untrained()
        return reranker

    @property
    def dtype_name(self) -> str:
        """bf16, fp16, fp32, or fp8 (bf16 weights, FP8 Linear layers)."""
        return "fp8" if self.fp8 is not None else DTYPE_NAMES.get(self.dtype, str(self.dtype))

    def _warn_untrained(self) -> None:
        if not self._warned_untrained:
            warnings.warn(UNTRAINED_WARNING.format(name=self.spec.name), stacklevel=3)
            self._warned_untrained = True

    # -----------------------------------------------------------------------------------------------------------
    # Scoring

    def predict(self, pairs: Sequence[tuple[str, str]], batch_size: int = 32, show_progress: bool = False,
                max_tokens: int | None = None) -> np.ndarray:
        """Scores (float32, input order) of (query, document) pairs.

        `batch_size` bounds the pairs per padded batch (`max_tokens`, when given, also the padded tokens); for
        packed rows the token budget is `max_tokens`, else `batch_size * max_length` but at least
        `PACKED_ROW_TOKENS`.
        """
        if batch_size < 1:
            raise UserError(f"batch size must be at least 1, not {batch_size}")
        total = len(pairs)
        if total == 0:
            return np.zeros(0, dtype=np.float32)
        progress = None
        if show_progress:
            from tqdm import tqdm

            progress = tqdm(total=total, unit="pair", desc=f"reranking ({self.spec.name})", dynamic_ncols=True)
        scores = np.empty(total, dtype=np.float32)
        # Packed rows: one list, which predict_stream tokenizes in pieces and cuts into rows across them. Padded
        # batches are sorted within a list: chunks, each sorted and scored while the next one is tokenized.
        chunks = [pairs] if self.pack else (pairs[start:end] for start, end in chunk_bounds(total))
        try:
            position = 0
            for chunk_scores in self.predict_stream(chunks, batch_size, max_tokens=max_tokens, progress=progress):
                scores[position:position + len(chunk_scores)] = chunk_scores
                position += len(chunk_scores)
        finally:
            if progress is not None:
                progress.close()
        return scores

    def predict_stream(self, pair_lists: Iterable[Sequence[tuple[str, str]]], batch_size: int = 32,
                       max_tokens: int | None = None, progress: Any = None) -> Iterator[np.ndarray]:
        """`predict` for each list of pairs in turn, yielding each list's scores (input order) as it is done.

        Lists are tokenized in a background thread, in pieces (`chunk_bounds`: the first piece of the first list
        small, so that the device starts early), while earlier pieces are scored. Where the model packs, rows are
        cut across pieces and lists (`ops.batching.RowPacker`: a part-full row waits for the next piece while the
        device has other work) and queued without waiting for the device; a list's scores are read back once a
        later row is queued behind its last one, or at the end. So the device waits on the host neither between
        pieces or lists nor on a pass of the cyclic garbage collector, paused meanwhile (`cyclic_gc_paused`).

        Taking runs ahead: when the caller receives list k's scores, list k+1 has been taken, and at most list k+3
        (k's last row waits for k+1's pairs, and its scores for a row behind it). `batch_size` and `max_tokens` as
        in `predict`; `progress` (a tqdm bar) advances by the pairs queued.
        """
        if batch_size < 1:
            raise UserError(f"batch size must be at least 1, not {batch_size}")
        if not self.head_trained:
            self._warn_untrained()
        lists = iter(pair_lists)
        with cyclic_gc_paused(), ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenize") as pool:
            first = True

            def take() -> list[Any] | None:
                """The futures of the next list's pieces (submitted now), or None at the end."""
                nonlocal first
                pairs = next(lists, None)
                if pairs is None:
                    return None
                bounds = chunk_bounds(len(pairs), first=FIRST_CHUNK if first else TOKENIZE_CHUNK)
                first = first and not bounds
                return [pool.submit(self.encoder.encode_many, pairs[start:end]) for start, end in bounds]

            if self.pack:
                yield from self._stream_packed(take, batch_size, max_tokens, progress)
                return
            pending = take()
            while pending is not None:
                encoded = [item for future in pending for item in future.result()]
                pending = take()
                yield (self.score_encoded(encoded, batch_size, max_tokens, progress) if encoded
                       else np.zeros(0, dtype=np.float32))

    @torch.inference_mode()
    def _stream_packed(self, take: Any, batch_size: int, max_tokens: int | None, progress: Any
                       ) -> Iterator[np.ndarray]:
        """`predict_stream`'s packed path: `take()` gives each list's tokenization futures in turn."""
        self.model.eval()
        packer = RowPacker(max_tokens or max(batch_size * self.max_length, PACKED_ROW_TOKENS),
                           activation_width=self.activation_width)
        lists: collections.deque[_ListScores] = collections.deque()
        last_row: _QueuedRow | None = None  # the row queued last
        encoded_of: dict[tuple[int, int], Any] = {}

        def queue_rows(flush: bool) -> None:
            nonlocal last_row
            for keys in packer.rows(flush):
                items = [encoded_of.pop(key) for key in keys]
                for indices, values in self._score_group(items, list(range(len(items)))):
                    row = last_row = _QueuedRow.of([keys[index] for index in indices], values)
                    for list_number, position in row.keys:
                        lists[list_number - lists[0].number].add(row, position)
                if progress is not None:
                    progress.update(len(keys))

        def finished() -> Iterator[np.ndarray]:
            """The lists at the head whose rows are all done or have a later row queued behind them (waiting for
            those leaves the device busy)."""
            while lists and lists[0].complete and all(row is not last_row or row.done() for row in lists[0].rows):
                yield lists.popleft().scores()

        pending = take()
        number = 0
        while pending is not None:
            futures, pending = pending, take()
            state = _ListScores(number)
            lists.append(state)
            for future in futures:
                encoded = future.result()
                keys = [(number, state.size + index) for index in range(len(encoded))]
                state.size += len(encoded)
                encoded_of.update(zip(keys, encoded))
                packer.add(keys, [len(item.input_ids) for item in encoded])
                idle = last_row is None or last_row.done()  # nothing queued on the device: do not keep it waiting
                queue_rows(flush=idle)
                yield from finished()
            state.taken = True
            # A list waits for the next one's pairs at most: the part-full row is cut once a newer list has come in.
            if len(lists) > 1 and any(key[0] < number for key in packer.keys):
                queue_rows(flush=True)
            yield from finished()
            number += 1
        queue_rows(flush=True)
        while lists:
            yield lists.popleft().scores()

    @property
    def activation_width(self) -> int | None:
        """The widest activation per token (`scoring.widest_activation`), which caps the tokens of a forward."""
        config = (getattr(self.model, "backbone_config", None)
                  or getattr(getattr(self.model, "backbone", None), "config", None))
        return widest_activation(config) if config is not None else None

    @torch.inference_mode()
    def score_encoded(self, encoded: Sequence[Any], batch_size: int = 32, max_tokens: int | None = None,
                      progress: Any = None) -> np.ndarray:
        """Scores of already-encoded pairs, input order: length-sorted padded batches or packed rows."""
        self.model.eval()
        lengths = [len(item.input_ids) for item in encoded]
        width = self.activation_width  # every forward under 2^31 elements (mamba_ssm's int32 kernels)
        if self.pack:
            groups = pack_sequences(lengths, max_tokens or max(batch_size * self.max_length, PACKED_ROW_TOKENS),
                                    activation_width=width)
        else:
            groups = length_sorted_batches(lengths, batch_size, max_tokens, activation_width=width)
        outputs: list[torch.Tensor] = []
        done_groups: list[list[int]] = []
        for group in groups:
            for indices, values in self._score_group(encoded, group):
                done_groups.append(indices)
                outputs.append(values)
            if progress is not None:
                progress.update(len(group))
        # One device -> host copy for the whole chunk.
        flat = torch.cat(outputs).float().cpu()
        sizes = [len(indices) for indices in done_groups]
        return scatter_scores(done_groups, torch.split(flat, sizes), len(encoded))

    def _score_group(self, encoded: Sequence[Any], indices: list[int]) -> Iterable[tuple[list[int], torch.Tensor]]:
        items = [encoded[index] for index in indices]
        try:
            if self.pack:
                batch = pack_batch(items, device=self.device)
            else:
                batch = pad_batch(items, self.pad_id, device=self.device)
            return [(indices, self.model(batch))]
        except torch.cuda.OutOfMemoryError:
            if len(indices) == 1:
                raise UserError(f"CUDA out of memory scoring one pair of {len(items[0].input_ids)} tokens; "
                                f"lower --max-length or use a smaller model") from None
            torch.cuda.empty_cache()
            half = len(indices) // 2
            logger.warning("CUDA out of memory on a batch of %d pairs: splitting it in two", len(indices))
            return [*self._score_group(encoded, indices[:half]), *self._score_group(encoded, indices[half:])]

    def rerank(self, query: str, hits: Sequence[Any], depth: int | None = None, batch_size: int = 32) -> list[Hit]:
        """Rerank the top `depth` hits (all when None) by model score; hits below the depth keep their first-stage
        order under the reranked ones (scores below the lowest reranked score). Reranked hits follow `runs.ranking_key`:
        score as the run file writes it (6 decimals) descending, ties by docid, as the rerank CLI orders them."""
        fields = [hit_fields(hit) for hit in hits]
        if depth is not None and depth < 0:
            raise UserError(f"rerank depth must be >= 0, not {depth}")
        cut = len(fields) if depth is None else min(depth, len(fields))
        head, tail = fields[:cut], fields[cut:]
        for docid, _, text in head:
            if text is None:
                raise UserError(f"document {docid} has no text to rerank (fetch texts from the index first)")
            if not text.strip():
                raise UserError(f"document {docid} has empty text: it cannot be reranked")
        if not head:
            return [Hit(docid, score, text) for docid, score, text in fields]
        scores = self.predict([(query, text) for _, _, text in head], batch_size=batch_size)
        scored = [Hit(docid, float(score), text) for (docid, _, text), score in zip(head, scores)]
        reranked = sorted(scored, key=ranking_key)  # the rule the rerank CLI writes by: equal scores, docid order
        floor = float(scores.min())
        below = [Hit(docid, floor - (rank + 1), text) for rank, (docid, _, text) in enumerate(tail)]
        return reranked + below

    # -----------------------------------------------------------------------------------------------------------
    # Saving

    def save_pretrained(self, directory: str, head_trained: bool | None = None) -> str:
        """Write our reranker folder (see docs/MODELS.md), atomically: a temporary folder renamed into place."""
        if self.fp8 is not None:
            raise UserError("this reranker's Linear layers are FP8 (inference only); save the bf16 model instead")
        backbone_hf = hf_backbone_for_saving(self.model)
        spec = replace(self.spec, max_length=self.max_length)
        write_reranker_dir(directory, spec=spec, backbone_hf=backbone_hf, head=self.model.head,
                           tokenizer=self.tokenizer,
                           head_trained=self.head_trained if head_trained is None else head_trained)
        return str(directory)


def init_untrained_head(head: torch.nn.Linear, seed: int = 0) -> None:
    """A fixed small random head, so that an untrained model's scores are at least reproducible."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        head.weight.copy_(torch.randn(head.weight.shape, generator=generator) * 0.02)
        head.bias.zero_()


def hf_backbone_for_saving(model: ScoringModel) -> Any:
    """The backbone as a Hugging Face `PreTrainedModel` (Mamba kernel weights go back into a `MambaModel`)."""
    return family_adapter(model.family).hf_backbone_for_saving(model.backbone)


def count_parameters(model: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


def describe(reranker: Reranker) -> str:
    return (f"{reranker.spec.name} ({reranker.spec.family}, {count_parameters(reranker.model) / 1e6:.1f}M "
            f"parameters, {reranker.dtype_name} on {reranker.device}, "
            f"max length {reranker.max_length}{'' if reranker.head_trained else ', untrained head'})")


__all__ = ["Reranker", "resolve_device", "resolve_dtype", "resolve_precision", "hit_fields", "describe",
           "init_untrained_head", "hf_backbone_for_saving"]
