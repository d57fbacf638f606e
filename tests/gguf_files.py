"""Writing small GGUF files for tests with the `gguf` package: a tiny random Llama with the SmolLM2 vocabulary.

The metadata is what transformers' GGUF loader reads for a Llama (`llama.*` hyperparameters, a `gpt2` BPE tokenizer
with tokens, token types and merges, BOS/EOS/pad ids); tensor names and layouts are llama.cpp's, including the
row permutation of the query/key projections that llama.cpp's converter applies and transformers undoes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

CONTROL, NORMAL = 3, 1  # gguf token types


def tiny_llama(vocab_size: int, seed: int = 0, hidden: int = 32, layers: int = 2, heads: int = 4, kv_heads: int = 2,
               intermediate: int = 64):
    """A random `LlamaModel` (the backbone a GGUF Llama loads as), weights drawn with std 0.2 so scores differ."""
    from transformers import LlamaConfig, LlamaModel

    config = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=intermediate,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                         max_position_embeddings=2048, rms_norm_eps=1e-5, rope_theta=10000.0,
                         tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    torch.manual_seed(seed)
    model = LlamaModel(config).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" in name:
                parameter.uniform_(0.5, 1.5)
            else:
                parameter.normal_(0.0, 0.2)
    return model


def _llama_cpp_permute(weight: np.ndarray, heads: int) -> np.ndarray:
    # llama.cpp's convert_hf_to_gguf.py `permute` of q_proj/k_proj rows (rotary halves interleaved).
    return weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(
        weight.shape)


def write_llama_gguf(path: Path, model, tokenizer_dir: Path, embedding_dtype: str = "F32") -> Path:
    """Write `model` (a LlamaModel) with the tokenizer of `tokenizer_dir` (a byte-level BPE tokenizer.json) as GGUF.

    `embedding_dtype` F16 stores the token embeddings in half precision (dequantised on load, as any GGUF type).
    """
    import gguf

    config = model.config
    tokenizer = json.loads((tokenizer_dir / "tokenizer.json").read_text())
    vocab = tokenizer["model"]["vocab"]
    tokens = sorted(vocab, key=vocab.get)
    assert [vocab[token] for token in tokens] == list(range(len(tokens)))
    special = {item["content"] for item in tokenizer["added_tokens"] if item.get("special")}
    merges = [" ".join(merge) if isinstance(merge, list) else merge for merge in tokenizer["model"]["merges"]]

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-llama-test")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list(tokens)
    writer.add_token_types([CONTROL if token in special else NORMAL for token in tokens])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(False)

    state = {name: tensor.detach().float().numpy() for name, tensor in model.state_dict().items()}
    embeddings = state["embed_tokens.weight"]
    writer.add_tensor("token_embd.weight", embeddings.astype(np.float16) if embedding_dtype == "F16" else embeddings)
    names = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
             "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    for layer in range(config.num_hidden_layers):
        for hf_name, gguf_name in names.items():
            weight = state[f"layers.{layer}.{hf_name}.weight"]
            if gguf_name == "attn_q":
                weight = _llama_cpp_permute(weight, config.num_attention_heads)
            elif gguf_name == "attn_k":
                weight = _llama_cpp_permute(weight, config.num_key_value_heads)
            writer.add_tensor(f"blk.{layer}.{gguf_name}.weight", np.ascontiguousarray(weight))
    writer.add_tensor("output_norm.weight", state["norm.weight"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def small_bpe_tokenizer(directory: Path, vocab_size: int = 400) -> Path:
    """A byte-level BPE tokenizer.json with SmolLM2's special tokens first (ids 0-2), trained on a few sentences:
    transformers converts a GGUF vocabulary of this size in well under a second (SmolLM2's 49,152 take ~40 s)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<|im_start|>",
                                                                         "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    text = ("document: query: a cat is a small mammal ; what is a cat ; Paris is the capital of France. "
            "Reranking scores each document for the query; the model reads the document first, then the query.")
    tokenizer.train_from_iterator([text] * 20, trainer=trainer)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(directory / "tokenizer.json"))
    return directory
