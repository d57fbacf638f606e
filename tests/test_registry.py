"""The registry: every entry is consistent, builds its real full-size shape (on the meta device), and unknown names
fail with close matches."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from pyserini_ssm.errors import UserError
from pyserini_ssm.models.checkpoints import hf_config_for_spec
from pyserini_ssm.models.registry import FAMILIES, REGISTRY, ModelSpec, get_spec, tiny_architecture
from pyserini_ssm.models.scoring import ENCODER_MODEL_TYPES
from pyserini_ssm.models.templates import get_template, parse_template

# Published parameter counts (millions, LM head included where it is not tied), from the model cards/papers.
PUBLISHED_MILLIONS = {
    "mamba1-130m": 129, "mamba1-370m": 372, "mamba1-790m": 793, "mamba1-1.4b": 1372, "mamba1-2.8b": 2768,
    "mamba2-130m": 130, "mamba2-370m": 370, "mamba2-780m": 780, "mamba2-1.3b": 1344, "mamba2-2.7b": 2700,
    "pythia-160m": 162, "pythia-410m": 405, "pythia-1b": 1012, "pythia-1.4b": 1415, "pythia-2.8b": 2775,
    "opt-125m": 125, "opt-350m": 331, "opt-1.3b": 1316, "opt-2.7b": 2651,
    "llama-3.2-1b": 1236, "qwen2.5-0.5b": 494, "qwen2.5-1.5b": 1544, "smollm2-135m": 135,
    "smollm2-135m-instruct": 135,
    "bert-base": 110, "bert-large": 335, "roberta-base": 125, "roberta-large": 355,
    "electra-base": 110, "electra-large": 335, "deberta-v3-base": 184, "deberta-v3-large": 435, "minilm-l6": 22.7,
}

REQUIRED = [
    *(f"mamba1-{size}" for size in ("130m", "370m", "790m", "1.4b", "2.8b")),
    *(f"mamba2-{size}" for size in ("130m", "370m", "780m", "1.3b", "2.7b")),
    *(f"pythia-{size}" for size in ("160m", "410m", "1b", "1.4b", "2.8b")),
    *(f"opt-{size}" for size in ("125m", "350m", "1.3b", "2.7b")),
    "llama-3.2-1b", "qwen2.5-0.5b", "qwen2.5-1.5b", "bert-base", "bert-large", "roberta-base", "roberta-large",
    "electra-base", "electra-large", "deberta-v3-base", "deberta-v3-large", "minilm-l6",
]


def test_registry_covers_the_papers_backbones():
    assert set(REQUIRED) <= set(REGISTRY)
    assert set(PUBLISHED_MILLIONS) == set(REGISTRY), "add the published size of every new entry"


def _meta_backbone(spec: ModelSpec, architecture=None):
    config = hf_config_for_spec(spec, architecture)
    if spec.family in ("mamba1", "mamba2"):
        from transformers import Mamba2Model, MambaModel

        with torch.device("meta"):
            return (MambaModel if spec.family == "mamba1" else Mamba2Model)(config)
    from transformers import AutoModel

    with torch.device("meta"):
        return AutoModel.from_config(config, attn_implementation="eager")


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_entry_is_consistent_and_builds_its_real_shape(name):
    spec = get_spec(name)
    assert spec.name == name
    assert spec.family in FAMILIES
    assert spec.pooling == ("cls" if spec.family == "encoder" else "last")
    template = get_template(spec.template)
    parse_template(template.text)
    if spec.family == "encoder":
        assert template.text.startswith("{cls}")
    else:
        assert template.text.endswith("{eos}")  # the pooled last token is EOS, after the query
        assert template.text.index("{document}") < template.text.index("{query}")
    assert spec.checkpoint and spec.tokenizer
    model = _meta_backbone(spec)
    config = model.config
    if spec.family == "encoder":
        assert config.model_type in ENCODER_MODEL_TYPES
        assert spec.max_length <= config.max_position_embeddings
    parameters = sum(parameter.numel() for parameter in model.parameters())
    if not getattr(config, "tie_word_embeddings", True) and spec.family == "decoder":
        parameters += config.vocab_size * config.hidden_size  # the untied LM head the published count includes
    published = PUBLISHED_MILLIONS[name] * 1e6
    assert abs(parameters - published) / published < 0.06, f"{name}: {parameters / 1e6:.1f}M parameters"


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_tiny_shape_of_every_entry_is_small(name):
    spec = get_spec(name)
    architecture = tiny_architecture(spec)
    architecture["vocab_size"] = 1024
    model = _meta_backbone(spec, architecture)
    assert model.config.num_hidden_layers == 2
    assert sum(parameter.numel() for parameter in model.parameters()) < 1_000_000


def test_published_shapes_spot_checks():
    assert get_spec("mamba2-780m").architecture["d_model"] == 1536
    assert get_spec("mamba2-780m").architecture["n_layer"] == 48
    assert get_spec("mamba2-780m").architecture["ssm_cfg"] == {"layer": "Mamba2"}
    assert get_spec("mamba1-2.8b").architecture["n_layer"] == 64
    assert get_spec("opt-350m").architecture["word_embed_proj_dim"] == 512
    assert get_spec("mamba2-130m").tokenizer == "EleutherAI/gpt-neox-20b"
    assert get_spec("minilm-l6").checkpoint == "sentence-transformers/all-MiniLM-L6-v2"
    assert get_spec("electra-base").checkpoint == "google/electra-base-discriminator"
    assert get_spec("smollm2-135m-instruct").checkpoint == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert get_spec("smollm2-135m").architecture["num_hidden_layers"] == 30


def test_unknown_name_lists_close_matches():
    with pytest.raises(UserError, match="mamba2-780m"):
        get_spec("mamba2-780")
    with pytest.raises(UserError, match="unknown model 'xyz-foo'"):
        get_spec("xyz-foo")


def test_family_is_never_guessed_from_a_substring():
    with pytest.raises(UserError):
        get_spec("mamba")  # not a registry entry, even though it names a family
    with pytest.raises(UserError):
        get_spec("my-bert-base-finetune")


def test_spec_round_trips_through_json_and_is_frozen():
    spec = get_spec("qwen2.5-0.5b")
    assert ModelSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.name = "other"  # type: ignore[misc]
    with pytest.raises(UserError, match="family"):
        ModelSpec.from_dict({**spec.to_dict(), "family": "rnn"})
