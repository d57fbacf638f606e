"""Family adapters (`models.families`): every registry entry's family has one, it answers every question the code
asks, its answers agree with the checkpoints it claims, and no other module of models/ branches on a family name."""

from __future__ import annotations

import ast
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from pyserini_ssm.errors import UserError
from pyserini_ssm.models import families
from pyserini_ssm.models.families import (
    ADAPTERS, FAMILIES, FamilyAdapter, adapter_for_config, family_adapter, family_of_config, family_of_state_spaces,
    position_offset, usable_positions,
)
from pyserini_ssm.models.registry import POOLINGS, REGISTRY, tiny_architecture
from pyserini_ssm.models.templates import TEMPLATES

ROOT = Path(__file__).resolve().parents[1]
# One registry entry per family: what `tiny_reranker` builds for a family name.
ONE_PER_FAMILY = {"mamba1": "mamba1-130m", "mamba2": "mamba2-130m", "decoder": "pythia-160m", "encoder": "bert-base"}


def test_every_registry_family_has_an_adapter_and_every_adapter_an_entry():
    assert FAMILIES == tuple(ADAPTERS)
    assert {spec.family for spec in REGISTRY.values()} == set(ADAPTERS)
    for name, adapter in ADAPTERS.items():
        assert isinstance(adapter, FamilyAdapter) and adapter.name == name
        assert family_adapter(name) is adapter
    assert set(ONE_PER_FAMILY) == set(ADAPTERS), "add the new family's registry entry to ONE_PER_FAMILY"
    with pytest.raises(UserError, match="unknown model family 'mamba3'"):
        family_adapter("mamba3")


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_the_entry_config_is_claimed_by_its_own_family_only(name):
    spec = REGISTRY[name]
    adapter = family_adapter(spec.family)
    config = adapter.hf_config(spec.architecture, spec.name)  # the full-size config, no download
    assert family_of_config(config) == spec.family
    claimants = [other.name for other in ADAPTERS.values() if other.claims(config.model_type)]
    assert claimants == [spec.family], f"{config.model_type} claimed by {claimants}"
    if spec.family in families.MAMBA_FAMILIES:
        assert family_of_state_spaces(spec.architecture) == spec.family  # the state-spaces config.json too
    assert spec.pooling in adapter.poolings
    assert adapter.tiny_architecture(spec.architecture) == tiny_architecture(spec)
    positions = adapter.usable_positions(config)
    assert positions is None or spec.max_length <= positions, f"{name}: max length past its position table"


@pytest.mark.parametrize("family", sorted(ADAPTERS))
def test_the_adapter_answers_every_question_of_a_folder_without_an_entry(family):
    adapter = ADAPTERS[family]
    spec = REGISTRY[ONE_PER_FAMILY[family]]
    config = adapter.hf_config(spec.architecture)
    assert adapter.default_template(config) in TEMPLATES
    assert adapter.rankmamba_template in TEMPLATES
    assert adapter.default_pooling in adapter.poolings and set(adapter.poolings) <= set(POOLINGS)
    assert 2 <= adapter.default_max_length(config) <= families.DEFAULT_MAX_LENGTH
    assert adapter.rankmamba_max_length in (512, 768)
    assert isinstance(adapter.fallback_tokenizer(config), str)
    assert adapter.tiny, "a family needs its `init --scale tiny` overrides"
    assert adapter.widest_activation(config) >= 3 * int(config.hidden_size)
    for flag in ("kernel_backend", "has_attention", "grows_embeddings", "reads_gguf", "crossencoder_baseline",
                 "causal"):
        assert isinstance(getattr(adapter, flag), bool), flag
    assert adapter.use_token_types(config) in (None, True, False)
    for pooling in POOLINGS:
        if pooling in adapter.poolings:
            adapter.check_pooling(pooling)
        else:
            with pytest.raises(UserError):
                adapter.check_pooling(pooling)


def test_the_families_differ_where_the_code_relies_on_it():
    mamba1, mamba2, decoder, encoder = (ADAPTERS[name] for name in ("mamba1", "mamba2", "decoder", "encoder"))
    assert mamba1.kernel_backend and mamba2.kernel_backend and not decoder.kernel_backend
    assert not mamba1.has_attention and decoder.has_attention and encoder.has_attention
    assert decoder.reads_gguf and not encoder.reads_gguf and not mamba2.reads_gguf
    assert encoder.crossencoder_baseline and not decoder.crossencoder_baseline
    assert not encoder.causal and decoder.causal and mamba2.causal
    assert mamba1.fallback_tokenizer(None) == families.GPT_NEOX_TOKENIZER
    assert (encoder.rankmamba_template, encoder.rankmamba_max_length) == ("rankmamba-encoder", 512)
    assert (decoder.rankmamba_template, mamba2.rankmamba_max_length) == ("rankmamba-decoder", 768)
    assert family_of_state_spaces({"d_model": 64, "n_layer": 2, "ssm_cfg": {}}) == "mamba1"
    with pytest.raises(UserError, match="ssm_cfg.layer 'Mamba9'"):
        family_of_state_spaces({"d_model": 64, "n_layer": 2, "ssm_cfg": {"layer": "Mamba9"}})
    # BERT has a causal-LM head in transformers' mapping: still an encoder, never also a decoder.
    assert family_of_config(SimpleNamespace(model_type="bert")) == "encoder"
    assert adapter_for_config(SimpleNamespace(model_type="no-such-model")) is None
    with pytest.raises(UserError, match="unsupported model type 'no-such-model'"):
        family_of_config(SimpleNamespace(model_type="no-such-model"))


def test_roberta_positions_are_numbered_after_the_pad_id_and_only_there():
    roberta = SimpleNamespace(model_type="roberta", pad_token_id=1, max_position_embeddings=514)
    assert position_offset(roberta) == 2 and usable_positions(roberta) == 512
    assert position_offset(SimpleNamespace(model_type="camembert", pad_token_id=1)) == 2
    assert position_offset(SimpleNamespace(model_type="bert", pad_token_id=0, max_position_embeddings=512)) == 0
    assert usable_positions(SimpleNamespace(model_type="mamba")) is None
    encoder = ADAPTERS["encoder"]
    assert encoder.default_template(roberta) == "roberta" and encoder.default_max_length(roberta) == 512
    short = SimpleNamespace(model_type="xlm-roberta", pad_token_id=1, max_position_embeddings=258)
    assert encoder.default_max_length(short) == 256


@pytest.mark.parametrize("family", sorted(ADAPTERS))
def test_a_built_model_is_run_through_its_adapter(tiny_reranker, family):
    from pyserini_ssm.models.reranker import Reranker, hf_backbone_for_saving
    from pyserini_ssm.models.scoring import packing_support
    from pyserini_ssm.ops.batching import pad_batch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reranker = Reranker.from_pretrained(str(tiny_reranker(family)), device="cpu", dtype="fp32")
    adapter = ADAPTERS[family]
    assert reranker.model.adapter is adapter and reranker.spec.family == family
    mode, why = packing_support(reranker.model, "cpu")
    assert mode == ("varlen" if adapter.has_attention else None) and why
    assert adapter.packing_support(reranker.model, torch.device("cpu")) == (mode, why)
    assert reranker.model.varlen == adapter.has_attention
    saved = hf_backbone_for_saving(reranker.model)
    assert hasattr(saved, "save_pretrained") and adapter.claims(saved.config.model_type)
    encoded = reranker.encoder.encode_many([("what is a cat", "A cat is a small mammal.")])
    batch = pad_batch(encoded, reranker.pad_id)
    with torch.inference_mode():
        hidden = adapter.hidden_states(reranker.model, batch)
    assert hidden.shape[:2] == batch["input_ids"].shape and hidden.shape[-1] == reranker.model.hidden_size
    if not adapter.kernel_backend:
        with pytest.raises(UserError, match="backend 'cuda' selects the mamba-ssm kernels"):
            Reranker.from_pretrained(str(tiny_reranker(family)), device="cpu", dtype="fp32", backend="cuda")


# ---------------------------------------------------------------------------------------------------------------
# No family branches outside the adapters

# The Mamba implementation tells Mamba-1 from Mamba-2 internally (its two mixers and kernels); the two Mamba adapters
# call into it. Everything else of models/ (and the init CLI) asks the adapters.
MAMBA_IMPLEMENTATION = ("mamba.py", "mamba_config.py", "mamba_kernels.py", "mamba_reference.py", "mamba2_mixer.py",
                        "mamba_checkpoints.py")
CHECKED = sorted(path for path in (ROOT / "pyserini_ssm" / "models").glob("*.py")
                 if path.name not in ("families.py", *MAMBA_IMPLEMENTATION)) + [ROOT / "pyserini_ssm" / "init.py"]


def family_branches(source: str) -> list[int]:
    """Lines of `source` that compare something with a family name (`== "encoder"`, `in ("mamba1", "mamba2")`)."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Compare):
            continue
        for operand in [node.left, *node.comparators]:
            values = operand.elts if isinstance(operand, (ast.Tuple, ast.List, ast.Set)) else [operand]
            if any(isinstance(value, ast.Constant) and value.value in FAMILIES for value in values):
                lines.append(node.lineno)
    return lines


def test_the_branch_finder_finds_family_comparisons():
    assert family_branches('if spec.family == "encoder":\n    pass\n') == [1]
    assert family_branches('x = family in ("mamba1", "mamba2")\n') == [1]
    assert family_branches('template = "encoder"\nok = name == "bert"\n') == []


@pytest.mark.parametrize("path", CHECKED, ids=lambda path: path.name)
def test_no_module_of_models_branches_on_a_family_name(path):
    lines = family_branches(path.read_text(encoding="utf-8"))
    assert not lines, (f"{path.relative_to(ROOT)} compares with a family name at lines {lines}: ask the family's "
                       f"adapter (models/families.py) instead")
