"""Checkpoint formats: ours, Hugging Face, state-spaces and RankMamba's, written by the tests, load and score."""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest
import torch

from pyserini_ssm.errors import UserError
from pyserini_ssm.models.checkpoints import load_checkpoint
from pyserini_ssm.models.reranker import Reranker

PAIRS = [
    ("what is a cat", "A cat is a small domesticated carnivorous mammal."),
    ("rust ownership", "Ownership is Rust's most unique feature. " * 6),
    ("capital of france", "Paris."),
]


def load(path, expect_untrained: bool | None = None, **kwargs) -> Reranker:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reranker = Reranker.from_pretrained(str(path), device="cpu", dtype="fp32", **kwargs)
    untrained = any("untrained" in str(warning.message) for warning in caught)
    if expect_untrained is not None:
        assert untrained == expect_untrained
        assert reranker.head_trained == (not expect_untrained)
    return reranker


def test_our_format_round_trip_keeps_scores_spec_and_head(tiny_reranker, tmp_path):
    reranker = load(tiny_reranker("mamba2"), expect_untrained=True)
    with torch.no_grad():
        reranker.model.head.weight.normal_(0, 1)
        reranker.model.head.bias.fill_(0.5)
    reranker.head_trained = True
    reranker.save_pretrained(str(tmp_path / "saved"))
    meta = json.loads((tmp_path / "saved" / "reranker.json").read_text())
    assert meta["format"] == "pyserini_ssm-reranker" and meta["version"] == 1 and meta["head_trained"] is True
    assert meta["spec"]["name"] == "mamba2-130m" and meta["spec"]["family"] == "mamba2"
    for name in ("config.json", "model.safetensors", "head.safetensors", "tokenizer.json"):
        assert (tmp_path / "saved" / name).is_file()
    again = load(tmp_path / "saved", expect_untrained=False)
    assert again.spec == reranker.spec
    np.testing.assert_array_equal(again.predict(PAIRS), reranker.predict(PAIRS))
    # Saving over an existing folder replaces it whole and leaves no temporary folders behind.
    again.save_pretrained(str(tmp_path / "saved"))
    assert sorted(path.name for path in tmp_path.iterdir()) == ["saved"]


def _save_hf_folder(reranker: Reranker, directory) -> None:
    backbone = reranker.model.backbone
    if reranker.spec.family in ("mamba1", "mamba2"):
        from transformers import Mamba2ForCausalLM, MambaForCausalLM

        inner = backbone.model
        causal = (MambaForCausalLM if reranker.spec.family == "mamba1" else Mamba2ForCausalLM)(inner.config)
        causal.backbone.load_state_dict(inner.state_dict())
        causal.save_pretrained(str(directory))  # keys backbone.*, as state-spaces/mamba-*-hf
    else:
        backbone.save_pretrained(str(directory))
    reranker.tokenizer.save_pretrained(str(directory))


@pytest.mark.parametrize("name", ["mamba1-130m", "mamba2-130m", "pythia-160m", "roberta-base"])
def test_hugging_face_folder_loads_with_an_untrained_head(tiny_reranker, tmp_path, name):
    ours = load(tiny_reranker(name))
    _save_hf_folder(ours, tmp_path / "hf")
    loaded = load(tmp_path / "hf", expect_untrained=True)
    assert loaded.spec.family == ours.spec.family
    assert loaded.spec.template == ours.spec.template
    # Both untrained heads are the same fixed initialisation, so the scores agree exactly.
    np.testing.assert_allclose(loaded.predict(PAIRS), ours.predict(PAIRS), rtol=0, atol=1e-6)


@pytest.mark.parametrize("family", ["mamba1", "mamba2"])
def test_state_spaces_folder_loads_into_the_same_model(tiny_reranker, tmp_path, family):
    from pyserini_ssm.models.mamba import save_state_spaces_checkpoint

    ours = load(tiny_reranker(family))
    directory = tmp_path / "state-spaces"
    save_state_spaces_checkpoint(ours.model.backbone, directory)
    ours.tokenizer.save_pretrained(str(directory))
    config = json.loads((directory / "config.json").read_text())
    assert "d_model" in config and "model_type" not in config
    names = torch.load(directory / "pytorch_model.bin", weights_only=True)
    assert "backbone.embedding.weight" in names  # mamba_ssm's parameter names
    loaded = load(directory, expect_untrained=True)
    assert load_checkpoint(directory).source_format == "state-spaces"
    assert loaded.spec.family == family
    np.testing.assert_allclose(loaded.predict(PAIRS), ours.predict(PAIRS), rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", ["mamba1-130m", "pythia-160m", "opt-125m"])
def test_rankmamba_causal_checkpoint_scores_as_their_code_does(tiny_reranker, tmp_path, name):
    """Their layout: base_model.* (a transformers MambaModel/AutoModel) + regressor.classifier.*, tokenizer files
    (a Mamba folder has no config.json; decoders need theirs copied in). Their inference: "Document: d\\n\\nQuery: q"
    + eos, LEFT padding with the attention mask, hidden[:, -1]."""
    ours = load(tiny_reranker(name))
    mamba = ours.spec.family == "mamba1"
    hf_backbone = ours.model.backbone.model if mamba else ours.model.backbone
    torch.manual_seed(1)
    state = {f"base_model.{key}": value for key, value in hf_backbone.state_dict().items()}
    state["regressor.classifier.weight"] = torch.randn(1, hf_backbone.config.hidden_size)
    state["regressor.classifier.bias"] = torch.tensor([0.25])
    directory = tmp_path / "rankmamba"
    directory.mkdir()
    torch.save(state, directory / "pytorch_model.bin")
    ours.tokenizer.save_pretrained(str(directory))
    if not mamba:
        hf_backbone.config.save_pretrained(str(directory))

    loaded = load(directory, expect_untrained=False)
    assert loaded.spec.template == "rankmamba-decoder" and loaded.spec.family == ours.spec.family
    scores = loaded.predict(PAIRS)

    tokenizer = ours.tokenizer
    tokenizer.padding_side = "left"
    # Their collection and queries are read with line.strip(): texts arrive stripped.
    texts = ["Document: " + d.strip() + "\n\nQuery: " + q.strip() + tokenizer.eos_token for q, d in PAIRS]
    batch = tokenizer(texts, padding=True, return_tensors="pt", add_special_tokens=False)
    assert (batch["attention_mask"] == 0).any()  # really left-padded
    with torch.inference_mode():
        hidden = hf_backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        reference = (hidden[:, -1] @ state["regressor.classifier.weight"].T).squeeze(-1) + 0.25
    np.testing.assert_allclose(scores, reference.numpy(), rtol=0, atol=1e-5)


def test_rankmamba_encoder_checkpoint_scores_as_their_code_does(bert_tokenizer_dir, tmp_path):
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(str(bert_tokenizer_dir))
    original_vocab = len(tokenizer)
    tokenizer.add_tokens(["[passage]", "[query]"])  # their order
    config = BertConfig(vocab_size=original_vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64)
    torch.manual_seed(2)
    backbone = BertModel(config).eval()
    backbone.resize_token_embeddings(len(tokenizer))
    state = {f"base_model.{key}": value for key, value in backbone.state_dict().items()}
    state["regressor.classifier.weight"] = torch.randn(1, 32)
    state["regressor.classifier.bias"] = torch.tensor([-0.5])
    directory = tmp_path / "rankmamba-bert"
    directory.mkdir()
    torch.save(state, directory / "pytorch_model.bin")
    config.save_pretrained(str(directory))  # the hub config of the backbone they started from (30522 tokens)
    tokenizer.save_pretrained(str(directory))

    loaded = load(directory, expect_untrained=False)
    assert loaded.spec.template == "rankmamba-encoder" and loaded.spec.pooling == "cls"
    scores = loaded.predict(PAIRS)
    texts = ["[query]" + q + tokenizer.sep_token + "[passage]" + d for q, d in PAIRS]
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.inference_mode():
        hidden = backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        reference = (hidden[:, 0] @ state["regressor.classifier.weight"].T).squeeze(-1) - 0.5
    np.testing.assert_allclose(scores, reference.numpy(), rtol=0, atol=1e-5)


def test_real_minilm_weights_load_as_an_encoder_cross_encoder(bert_tokenizer_dir):
    from transformers import AutoModel

    reranker = load(bert_tokenizer_dir, expect_untrained=True)
    assert reranker.spec.family == "encoder" and reranker.spec.pooling == "cls"
    assert reranker.encoder.use_token_types
    batch_scores = reranker.predict(PAIRS)
    assert np.isfinite(batch_scores).all() and np.ptp(batch_scores) > 0
    reference_model = AutoModel.from_pretrained(str(bert_tokenizer_dir)).eval()
    features = reranker.tokenizer([q for q, _ in PAIRS], [d for _, d in PAIRS], padding=True, return_tensors="pt")
    with torch.inference_mode():
        cls = reference_model(**features).last_hidden_state[:, 0]
        reference = reranker.model.head(cls).squeeze(-1)
    np.testing.assert_allclose(batch_scores, reference.numpy(), rtol=0, atol=1e-5)


def test_folders_missing_files_name_the_file(tiny_reranker, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="missing config.json"):
        load_checkpoint(empty)
    source = tiny_reranker("encoder")
    for missing in ("model.safetensors", "config.json", "tokenizer.json"):
        broken = tmp_path / f"without-{missing}"
        shutil.copytree(source, broken)
        (broken / missing).unlink()
        if missing == "tokenizer.json":
            for other in ("tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
                (broken / other).unlink(missing_ok=True)
        with pytest.raises(UserError, match=f"missing .*{missing.split('.')[0]}"):
            load_checkpoint(broken)
    state_spaces = tmp_path / "state-spaces-without-weights"
    state_spaces.mkdir()
    (state_spaces / "config.json").write_text(json.dumps({"d_model": 64, "n_layer": 2, "vocab_size": 100}))
    with pytest.raises(UserError, match="pytorch_model.bin"):
        load_checkpoint(state_spaces)
    (tmp_path / "bad-json").mkdir()
    (tmp_path / "bad-json" / "config.json").write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        load_checkpoint(tmp_path / "bad-json")


def test_unknown_names_and_paths(tmp_path):
    with pytest.raises(UserError, match="did you mean mamba2-780m"):
        load_checkpoint("mamba2-78m")
    with pytest.raises(UserError, match="not found"):
        load_checkpoint(str(tmp_path / "no" / "such" / "folder"))
    file_path = tmp_path / "weights.bin"
    file_path.write_bytes(b"")
    with pytest.raises(UserError, match="is a file"):
        load_checkpoint(file_path)


def test_registry_name_without_internet_says_how_to_point_at_a_folder(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    # Not cached and offline: one line at once (hub.py), naming the checkpoint, the cache and the fix.
    with pytest.raises(UserError, match="minilm-l6: checkpoint .* not in the Hugging Face cache "
                                        ".*(HF_HUB_OFFLINE is set|cannot be reached)"
                                        ".*huggingface-cli download .*local folder"):
        load_checkpoint("minilm-l6")
    with pytest.raises(UserError, match="mamba2-130m: checkpoint 'state-spaces/mamba2-130m'"):
        load_checkpoint("mamba2-130m")
