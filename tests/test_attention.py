"""Packed (varlen) attention: the kernel choice and the dtype it gets (testable on CPU), the kernel record, packed
rows equal to padded batches; on the GPU the fast kernels, and a loud error instead of a slow fallback."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pyserini_ssm.models import attention
from pyserini_ssm.models.scoring import packing_support
from pyserini_ssm.ops.batching import pack_batch, pad_batch

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def llama():
    from pyserini_ssm.benchmarking import SAME_SIZE_LLAMA, build_bench_reranker, synthetic_tokenizer

    reranker = build_bench_reranker(SAME_SIZE_LLAMA, scale="tiny", tokenizer=synthetic_tokenizer(words=300),
                                    device="cpu", dtype="fp32", seed=0)
    reranker.model.dropout.p = 0.0
    return reranker


def _pairs(reranker, lengths):
    from pyserini_ssm.benchmarking import random_pairs

    return random_pairs(reranker.encoder, lengths, seed=0)


def test_selection_casts_fp32_q_k_to_the_autocast_dtype_on_cpu():
    q = torch.randn(10, 4, 8)  # (T, Hq, D) fp32, as rotary embeddings hand them over
    k = torch.randn(10, 2, 8)
    v = torch.randn(10, 2, 8, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        name, q2, k2, v2 = attention.select_varlen_kernel(q, k, v)
    assert name == attention.SDPA_LOOP  # CPU tensors: the reference loop
    assert q2.dtype == k2.dtype == v2.dtype == torch.bfloat16
    name, q3, k3, v3 = attention.select_varlen_kernel(q, k, v.float())  # no autocast: the value's dtype
    assert (name, q3.dtype, k3.dtype) == (attention.SDPA_LOOP, torch.float32, torch.float32)


def test_tiny_llama_under_cpu_autocast_hands_the_kernel_bf16(llama):
    """transformers' rotary embedding turns bf16 q/k into fp32 under autocast; the kernel must still get bf16 (the
    bug that sent every CUDA training step to the per-sequence loop)."""
    batch = pack_batch(_pairs(llama, [9, 17, 5]))
    attention.reset_kernel_record()
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        scores = llama.model(batch)
    call = attention.last_kernel_call()
    assert call["given"][0] == torch.float32  # q really arrives in fp32 ...
    assert call["dtype"] == torch.bfloat16  # ... and the kernel runs in the autocast dtype
    layers = llama.model.backbone.config.num_hidden_layers
    assert attention.kernel_record() == {attention.SDPA_LOOP: layers}
    assert attention.kernels_used() == attention.SDPA_LOOP
    assert scores.shape == (3,) and torch.isfinite(scores).all()


def test_padded_batches_still_run_sdpa_and_are_recorded(llama):
    items = _pairs(llama, [9, 17, 5])
    attention.reset_kernel_record()
    with torch.inference_mode():
        padded = llama.model(pad_batch(items, llama.pad_id))
        packed = llama.model(pack_batch(items))
    assert set(attention.kernel_record()) == {attention.SDPA, attention.SDPA_LOOP}
    torch.testing.assert_close(packed, padded, rtol=0, atol=TOLERANCE)


def test_gradient_checkpointing_recomputes_packed_rows_with_varlen_attention(llama):
    """The recomputation in backward must see the packed row's cu_seqlens (a mode switched around the forward
    would recompute with full attention across sequences and give other gradients)."""
    from pyserini_ssm.training.loop import enable_gradient_checkpointing

    items = _pairs(llama, [9, 17, 5, 12])
    model = llama.model
    grads = []
    for checkpointing in (False, True):
        model.zero_grad(set_to_none=True)
        if checkpointing:
            assert enable_gradient_checkpointing(model)
        model.train()
        model(pack_batch(items)).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.backbone.parameters() if p.grad is not None]))
    from pyserini_ssm.benchmarking import _disable_gradient_checkpointing

    _disable_gradient_checkpointing(model)
    assert not model.backbone.is_gradient_checkpointing
    model.eval()
    model.zero_grad(set_to_none=True)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-6)


def test_packing_support_names_why_not(llama):
    assert packing_support(llama.model, "cpu")[0] == "varlen"
    assert "reference" in packing_support(llama.model, "cpu")[1]
    assert llama.pack is False  # the CPU reference is slower than padding: predict pads on the CPU


def test_saved_checkpoint_keeps_no_trace_of_the_varlen_attention(llama, tmp_path):
    import json

    llama.save_pretrained(str(tmp_path / "saved"), head_trained=True)
    text = (tmp_path / "saved").rglob("config.json")
    assert all(attention.VARLEN_ATTENTION not in path.read_text() for path in text)
    assert json  # config.json files parsed as text above


# --------------------------------------------------------------------------------------------- GPU (run on the device)


@pytest.mark.gpu
def test_cuda_packed_rows_take_a_fast_kernel_and_fp32_raises(llama):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA")
    q = torch.randn(64, 4, 64, device="cuda")
    with pytest.raises(RuntimeError, match="bf16 or fp16"):
        attention.select_varlen_kernel(q, q, q)  # fp32 without autocast: never the slow loop on a GPU
    with torch.autocast("cuda", dtype=torch.bfloat16):
        name, q2, _, _ = attention.select_varlen_kernel(q, q, q)
    assert name in (attention.FLASH_ATTN_4, attention.FLASH_ATTN_2, attention.TORCH_VARLEN)
    assert q2.dtype == torch.bfloat16
    print(f"[attention] fast varlen kernel here: {name}; available: {list(attention.available_varlen_kernels())}")


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["llama-780m", "opt-350m", "minilm-l6", "roberta-base"])
def test_cuda_packed_scores_equal_padded_in_bf16(name):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA")
    from pyserini_ssm.benchmarking import build_bench_reranker, synthetic_tokenizer

    reranker = build_bench_reranker(name, scale="tiny", tokenizer=synthetic_tokenizer(words=300), device="cuda",
                                    dtype="bf16", seed=0)
    assert reranker.pack  # transformers pack on CUDA in bf16
    items = _pairs(reranker, [37, 200, 5, 121, 64])
    attention.reset_kernel_record()
    with torch.inference_mode():
        padded = reranker.model(pad_batch(items, reranker.pad_id, device="cuda")).cpu().numpy()
        packed = reranker.model(pack_batch(items, device="cuda")).cpu().numpy()
    used = attention.kernel_record()
    assert attention.SDPA_LOOP not in used and any(k in used for k in attention.available_varlen_kernels())
    error = np.abs(packed - padded).max() / max(np.abs(padded).max(), 1e-6)
    print(f"[attention] {name} bf16 packed vs padded: rel err {error:.2e}, kernels {used}")
    assert error < 5e-2
