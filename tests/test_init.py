"""`python -m pyserini_ssm.init`: random checkpoints in our format, every family, seeds, bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from pyserini_ssm.cli import run_main
from pyserini_ssm.errors import UserError
from pyserini_ssm.init import build_random_reranker, init_checkpoint, main, sized_architecture
from pyserini_ssm.models.registry import get_spec
from pyserini_ssm.models.reranker import Reranker


def test_main_writes_a_loadable_tiny_checkpoint(tmp_path, bert_tokenizer_dir, capsys):
    output = tmp_path / "tiny-electra"
    assert main(["--model", "electra-base", "--scale", "tiny", "--output", str(output),
                 "--tokenizer", str(bert_tokenizer_dir), "--seed", "3"]) == 0
    assert "wrote a random tiny electra-base reranker" in capsys.readouterr().out
    meta = json.loads((output / "reranker.json").read_text())
    assert meta["head_trained"] is False and meta["init"] == {"scale": "tiny", "seed": 3}
    assert meta["spec"]["architecture"]["num_hidden_layers"] == 2
    assert meta["spec"]["architecture"]["vocab_size"] >= 30522  # sized to the tokenizer
    config = json.loads((output / "config.json").read_text())
    assert config["model_type"] == "electra" and config["hidden_size"] == 64
    with pytest.warns(UserWarning, match="untrained"):
        reranker = Reranker.from_pretrained(str(output))
    assert reranker.spec.name == "electra-base" and reranker.spec.family == "encoder"


def test_same_seed_same_weights_other_seed_other_weights(tmp_path, bpe_tokenizer_dir):
    paths = [init_checkpoint("mamba2-130m", "tiny", tmp_path / name, tokenizer=str(bpe_tokenizer_dir), seed=seed)
             for name, seed in (("a", 0), ("b", 0), ("c", 1))]
    from safetensors.torch import load_file

    weights = [load_file(str(path / "model.safetensors")) for path in paths]
    assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[0])
    assert not all(torch.equal(weights[0][key], weights[2][key]) for key in weights[0])


def test_full_scale_keeps_the_real_architecture_and_grows_the_vocabulary_only_when_needed():
    spec = get_spec("mamba2-780m")
    assert sized_architecture(spec, "full", 50277) == spec.architecture
    assert sized_architecture(spec, "full", 60000)["vocab_size"] == 60000
    tiny = sized_architecture(get_spec("qwen2.5-0.5b"), "tiny", 1001)
    assert tiny["vocab_size"] == 1008 and tiny["num_hidden_layers"] == 2


def test_in_memory_random_reranker_for_benchmarks(bert_tokenizer_dir):
    reranker = build_random_reranker("minilm-l6", "tiny", str(bert_tokenizer_dir), device="cpu", dtype="fp32")
    scores = reranker.predict([("q", "a document"), ("q", "another document")])
    assert scores.shape == (2,) and np.isfinite(scores).all()


def test_bad_input_is_a_user_error(tmp_path, bert_tokenizer_dir, capsys, monkeypatch):
    with pytest.raises(UserError, match="did you mean bert-base"):
        init_checkpoint("bert-bas", "tiny", tmp_path / "x", tokenizer=str(bert_tokenizer_dir))
    with pytest.raises(UserError, match="unknown scale"):
        init_checkpoint("bert-base", "huge", tmp_path / "x", tokenizer=str(bert_tokenizer_dir))
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "file").write_text("keep me")
    status = run_main(main, ["--model", "bert-base", "--output", str(occupied), "--tokenizer",
                             str(bert_tokenizer_dir)])
    assert status == 2 and "already exists" in capsys.readouterr().err
    assert (occupied / "file").read_text() == "keep me"
    with pytest.raises(UserError, match="cannot load a tokenizer"):
        init_checkpoint("bert-base", "tiny", tmp_path / "y", tokenizer=str(tmp_path))
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(UserError, match="--tokenizer"):
        init_checkpoint("bert-base", "tiny", tmp_path / "z")
    assert not (tmp_path / "y").exists() and not (tmp_path / "z").exists()


def test_help_is_fast_and_imports_no_torch():
    code = "import sys, pyserini_ssm.init; assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
    result = subprocess.run([sys.executable, "-m", "pyserini_ssm.init", "--help"], capture_output=True, text=True,
                            timeout=20)
    assert result.returncode == 0 and "--scale" in result.stdout
