"""Model families: one adapter per family owns everything that differs between them.

The rest of `models/` never branches on a family's name; it asks the family's adapter (`family_adapter(name)`):

- which checkpoints are its own (`claims`: a config's `model_type`; `claims_state_spaces`: a state-spaces config);
- the defaults of a folder without a registry entry (`default_template`, `default_pooling`, `default_max_length`,
  `fallback_tokenizer`) and of a RankMamba checkpoint (`rankmamba_template`, `rankmamba_max_length`);
- how a backbone is configured (`hf_config`, `tiny_architecture`), built with random weights (`backbone_from_config`,
  `build_random_backbone`), loaded (`load_backbone`, `load_registry_backbone`), turned into the module that scores
  (`scoring_backbone`) and back into a Hugging Face model for saving (`hf_backbone_for_saving`);
- how it is fed and pooled (`poolings`, `hidden_states`, `packed_pooled`, `packing_support`, `use_token_types`,
  `usable_positions`, `grows_embeddings`) and which runtimes it has (`kernel_backend`, `has_attention`,
  `reads_gguf`, `crossencoder_baseline`).

Adding a family is one adapter class here, its entry in `ADAPTERS`, and its registry entries (docs/DESIGN.md, "How
to add a model family"). Stdlib only at module level: `models.registry` (imported by `rerank` before torch) reads
`FAMILIES` from here; torch and transformers are imported inside the methods.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, ClassVar

from pyserini_ssm.errors import UserError

# Encoder model types: explicit, from the checkpoint's own config (never from a name).
ENCODER_MODEL_TYPES = frozenset({
    "bert", "roberta", "xlm-roberta", "electra", "deberta", "deberta-v2", "distilbert", "mpnet", "albert",
    "camembert", "modernbert", "nomic_bert", "xlm", "ernie",
})
# RoBERTa-style embeddings number positions after the pad id (`create_position_ids_from_input_ids`: padding_idx + 1
# onwards), and take RoBERTa's sentence-pair template.
ROBERTA_MODEL_TYPES = ("roberta", "xlm-roberta", "camembert")
# Every folder without a registry entry gets at most this many tokens (what both papers rerank passages with).
DEFAULT_MAX_LENGTH = 512
# The tokenizer of every Mamba checkpoint state-spaces published (the registry's Mamba entries name it too).
GPT_NEOX_TOKENIZER = "EleutherAI/gpt-neox-20b"


def position_offset(config: Any) -> int:
    """The first position id a sequence uses: pad_token_id + 1 for RoBERTa-style embeddings, else 0."""
    if getattr(config, "model_type", None) in ROBERTA_MODEL_TYPES:
        return int(getattr(config, "pad_token_id", 0) or 0) + 1
    return 0


def usable_positions(config: Any) -> int | None:
    """How many tokens the config's position embeddings can number (None: no limit, e.g. no such embeddings)."""
    positions = getattr(config, "max_position_embeddings", None)
    return None if positions is None else int(positions) - position_offset(config)


class FamilyAdapter:
    """What the code asks of a family; the subclasses answer for theirs."""

    name: ClassVar[str] = "transformers"  # the base class answers with the rules every transformers family shares
    default_pooling: ClassVar[str] = "last"
    causal: ClassVar[bool] = True  # a token sees only earlier tokens (decoders, Mamba): no key/value cache to skip
    poolings: ClassVar[tuple[str, ...]] = ("last", "cls")
    kernel_backend: ClassVar[bool] = False  # has the mamba-ssm "cuda" backend (`--backend cuda`)
    has_attention: ClassVar[bool] = True  # runs attention kernels (the bench records which)
    grows_embeddings: ClassVar[bool] = True  # embeddings may grow for a template's added tokens
    reads_gguf: ClassVar[bool] = False  # a GGUF file may hold one
    crossencoder_baseline: ClassVar[bool] = False  # sentence-transformers' CrossEncoder loads it (the bench's baseline)
    rankmamba_template: ClassVar[str] = "rankmamba-decoder"
    rankmamba_max_length: ClassVar[int] = 768  # RankMamba evaluated decoders and Mamba at 768 tokens
    # `init --scale tiny`: two layers, small width; everything else (vocabulary, norms, template) stays the family's.
    tiny: ClassVar[dict[str, Any]] = {}

    # Recognising checkpoints ------------------------------------------------------------------------------------

    def claims(self, model_type: str | None) -> bool:
        """Whether a Hugging Face config of this `model_type` is of this family (the base class claims none)."""
        return False

    def claims_state_spaces(self, config: dict[str, Any]) -> bool:
        """Whether a state-spaces (mamba_ssm) `config.json` is of this family."""
        return False

    # Defaults of a checkpoint without a registry entry ----------------------------------------------------------

    def default_template(self, config: Any) -> str:
        return "ssm"

    def default_max_length(self, config: Any) -> int:
        return DEFAULT_MAX_LENGTH

    def fallback_tokenizer(self, config: Any) -> str:
        """The tokenizer to download for a folder that has no tokenizer files."""
        return getattr(config, "_name_or_path", "") or ""

    # Configs and backbones --------------------------------------------------------------------------------------

    def hf_config(self, architecture: dict[str, Any], name: str = "") -> Any:
        """The Hugging Face config of a registry architecture (no download)."""
        from transformers import AutoConfig

        architecture = dict(architecture)
        model_type = architecture.pop("model_type", None)
        if model_type is None:
            raise UserError(f"model spec {name!r} has no model_type in its architecture")
        return AutoConfig.for_model(model_type, **architecture)

    def tiny_architecture(self, architecture: dict[str, Any]) -> dict[str, Any]:
        """`architecture` shrunk for tests: only keys the architecture already has are overridden."""
        shrunk = dict(architecture)
        shrunk.update({key: copy.deepcopy(value) for key, value in self.tiny.items() if key in architecture})
        return shrunk

    def backbone_from_config(self, config: Any, dtype: Any = None) -> Any:
        """A randomly initialised Hugging Face backbone of `config`."""
        from pyserini_ssm.models.scoring import build_transformer_backbone

        return build_transformer_backbone(config, dtype=dtype)

    def build_random_backbone(self, architecture: dict[str, Any], dtype: Any = None, device: Any = None) -> Any:
        """A randomly initialised Hugging Face backbone of a registry architecture, built on `device`."""
        import torch

        config = self.hf_config(architecture)
        with torch.device(device or "cpu"):
            return self.backbone_from_config(config, dtype=dtype)

    def load_backbone(self, source: str, dtype: Any = None) -> Any:
        """The backbone of a Hugging Face folder or hub id: `AutoModel` with SDPA attention where it has it."""
        from transformers import AutoModel

        kwargs: dict[str, Any] = {}
        if dtype is not None:
            from pyserini_ssm.models.dtypes import torch_dtype

            kwargs["dtype"] = torch_dtype(dtype)
        try:
            return AutoModel.from_pretrained(source, attn_implementation="sdpa", **kwargs)
        except (ValueError, ImportError):  # no SDPA path for this architecture (DeBERTa-v2)
            return AutoModel.from_pretrained(source, attn_implementation="eager", **kwargs)

    def load_registry_backbone(self, spec: Any, dtype: Any = None, tokenizer: Any = None) -> tuple[Any, Any]:
        """(backbone, tokenizer or None) of a registry entry's checkpoint, downloaded from the Hub on first use."""
        return self.load_backbone(spec.checkpoint, dtype), tokenizer

    def scoring_backbone(self, backbone_hf: Any, backend: str, device: Any) -> tuple[Any, int]:
        """(the module `ScoringModel` runs, the width of its pooled hidden state); `backend` as in
        `Reranker.from_pretrained` (only a `kernel_backend` family has "cuda")."""
        from pyserini_ssm.models.scoring import output_hidden_size

        return backbone_hf, output_hidden_size(backbone_hf.config)

    def hf_backbone_for_saving(self, backbone: Any) -> Any:
        """The scoring backbone as a Hugging Face `PreTrainedModel` (what `save_pretrained` writes)."""
        return backbone

    def widest_activation(self, config: Any) -> int:
        """Elements per token of the widest activation one forward makes (`models.scoring.widest_activation`):
        the MLP's inner width (intermediate_size, ffn_dim, n_inner, d_ff; else 4*hidden) or the fused QKV
        projection, 3*hidden, whichever is wider."""
        from pyserini_ssm.models.scoring import output_hidden_size

        hidden = int(getattr(config, "hidden_size", None) or output_hidden_size(config))
        inner = next((getattr(config, key) for key in ("intermediate_size", "ffn_dim", "n_inner", "d_ff")
                      if isinstance(getattr(config, key, None), int)), 4 * hidden)
        return max(int(inner), 3 * hidden)

    # Feeding and pooling ----------------------------------------------------------------------------------------

    def check_pooling(self, pooling: str) -> None:
        if pooling not in self.poolings:
            raise UserError(f"{self.name} models pool with {' or '.join(self.poolings)}, not {pooling!r}")

    def use_token_types(self, config: Any) -> bool | None:
        """Whether pairs carry segment ids (None: the tokenizer's own answer decides)."""
        return None

    def usable_positions(self, config: Any) -> int | None:
        """How many tokens the backbone can number (None: no position table); `max_length` must fit."""
        return usable_positions(config)

    def installs_varlen(self, backbone: Any) -> bool:
        """Install varlen attention for packed rows; whether it could (`models.attention`)."""
        from pyserini_ssm.models import attention

        return attention.install_varlen_attention(backbone)

    def hidden_states(self, model: Any, batch: dict[str, Any]) -> Any:
        """Last hidden states (B, L, D) of a padded batch, or (1, T, D) of a packed row (`seq_idx` in the batch)."""
        from pyserini_ssm.models.scoring import transformer_hidden_states

        return transformer_hidden_states(model, batch, causal=self.causal)

    def packed_pooled(self, model: Any, batch: dict[str, Any]) -> Any:
        """Pooled states (N, D) of a packed row when the backbone pools itself (skipping the other tokens), else
        None (then `hidden_states` and the pooling of `ScoringModel.encode`)."""
        return None

    def packing_support(self, model: Any, device: Any, compute_dtype: Any = None) -> tuple[str | None, str]:
        """How `model` packs rows on `device` ("seq_idx", "varlen" or None) and a note: see
        `models.scoring.packing_support`."""
        from pyserini_ssm.models.scoring import varlen_packing_support

        return varlen_packing_support(model, device, compute_dtype)


class MambaFamily(FamilyAdapter):
    """Mamba-1 and Mamba-2 (`models.mamba`): state-spaces or transformers checkpoints, the torch or cuda backend."""

    hf_model_type: ClassVar[str]
    state_spaces_layer: ClassVar[str]  # ssm_cfg.layer of its state-spaces config.json
    poolings = ("last",)
    kernel_backend = True
    has_attention = False
    grows_embeddings = False  # the kernels' embedding is padded to a vocabulary multiple: a wrong tokenizer, not growth

    def claims(self, model_type: str | None) -> bool:
        return model_type == self.hf_model_type

    def claims_state_spaces(self, config: dict[str, Any]) -> bool:
        return (config.get("ssm_cfg") or {}).get("layer", "Mamba1") == self.state_spaces_layer

    def fallback_tokenizer(self, config: Any) -> str:
        return GPT_NEOX_TOKENIZER

    def hf_config(self, architecture: dict[str, Any], name: str = "") -> Any:
        from pyserini_ssm.models.mamba import hf_config_from_state_spaces

        return hf_config_from_state_spaces(dict(architecture))

    def tiny_architecture(self, architecture: dict[str, Any]) -> dict[str, Any]:
        # A state-spaces config lists only what differs from mamba_ssm's defaults: every tiny key applies.
        return {**architecture, **copy.deepcopy(self.tiny)}

    def model_class(self) -> type:
        """The transformers backbone class (`MambaModel`, `Mamba2Model`)."""
        raise NotImplementedError

    def backbone_from_config(self, config: Any, dtype: Any = None) -> Any:
        model = self.model_class()(config)
        return model.to(dtype) if dtype is not None else model

    def load_backbone(self, source: str, dtype: Any = None) -> Any:
        """`MambaModel`/`Mamba2Model` (also from `*ForCausalLM` folders)."""
        kwargs: dict[str, Any] = {}
        if dtype is not None:
            from pyserini_ssm.models.dtypes import torch_dtype

            kwargs["dtype"] = torch_dtype(dtype)
        return self.model_class().from_pretrained(source, **kwargs)

    def load_registry_backbone(self, spec: Any, dtype: Any = None, tokenizer: Any = None) -> tuple[Any, Any]:
        # state-spaces publishes mamba_ssm checkpoints (config.json + pytorch_model.bin): read as a folder.
        from huggingface_hub import snapshot_download

        from pyserini_ssm.models.checkpoints import load_folder

        directory = snapshot_download(spec.checkpoint, allow_patterns=["config.json", "pytorch_model.bin",
                                                                       "*.safetensors", "*.json"])
        loaded = load_folder(Path(directory), dtype, tokenizer)
        return loaded.backbone, loaded.tokenizer

    def scoring_backbone(self, backbone_hf: Any, backend: str, device: Any) -> tuple[Any, int]:
        from pyserini_ssm.models.mamba import build_mamba_backbone

        return build_mamba_backbone(backbone_hf, backend=backend, device=device), int(backbone_hf.config.hidden_size)

    def hf_backbone_for_saving(self, backbone: Any) -> Any:
        """Kernel weights go back into a `MambaModel`/`Mamba2Model` (built on the meta device, weights assigned)."""
        import torch

        inner = getattr(backbone, "model", backbone)
        if hasattr(inner, "save_pretrained"):
            return inner
        with torch.device("meta"):
            hf_model = self.model_class()(backbone.config)
        hf_model.load_state_dict({key: value.detach() for key, value in inner.state_dict().items()}, strict=True,
                                 assign=True)
        return hf_model

    def check_pooling(self, pooling: str) -> None:
        if pooling not in self.poolings:
            raise UserError("Mamba models are causal: they need last-token pooling")

    def usable_positions(self, config: Any) -> int | None:
        return None  # a scan has no position table

    def installs_varlen(self, backbone: Any) -> bool:
        return False  # Mamba packs through seq_idx, not attention

    def hidden_states(self, model: Any, batch: dict[str, Any]) -> Any:
        # Right padding: a causal scan never lets padding reach the real tokens, so no mask is needed.
        return model.backbone(batch["input_ids"], seq_idx=batch.get("seq_idx"),
                              sequence_lengths=batch.get("sequence_lengths"))

    def packed_pooled(self, model: Any, batch: dict[str, Any]) -> Any:
        if model.pooling != "last":
            return None
        # Only the pooled tokens: the kernel backbone skips the rest of the last layer's out_proj and norms.
        return model.backbone(batch["input_ids"], seq_idx=batch["seq_idx"], output_positions=batch["last_index"],
                              sequence_lengths=batch.get("sequence_lengths"))[0]


class Mamba1Family(MambaFamily):
    name = "mamba1"
    hf_model_type = "mamba"
    state_spaces_layer = "Mamba1"
    tiny = {"d_model": 64, "n_layer": 2, "ssm_cfg": {}}

    def model_class(self) -> type:
        from transformers import MambaModel

        return MambaModel

    def widest_activation(self, config: Any) -> int:
        # in_proj's output, 2*d_inner
        d_inner = getattr(config, "intermediate_size", None) or int(getattr(config, "expand", 2) * config.hidden_size)
        return 2 * int(d_inner)

    def packing_support(self, model: Any, device: Any, compute_dtype: Any = None) -> tuple[str | None, str]:
        return None, "Mamba-1 has no variable-length kernel: sorted padded batches are its best path"


class Mamba2Family(MambaFamily):
    name = "mamba2"
    hf_model_type = "mamba2"
    state_spaces_layer = "Mamba2"
    tiny = {"d_model": 64, "n_layer": 2, "ssm_cfg": {"layer": "Mamba2", "d_state": 16, "headdim": 16,
                                                      "chunk_size": 16}}

    def model_class(self) -> type:
        from transformers import Mamba2Model

        return Mamba2Model

    def widest_activation(self, config: Any) -> int:
        # in_proj's output, d_in_proj = 2*d_inner + 2*ngroups*d_state + nheads (6,448 for mamba2-780m)
        d_inner = int(getattr(config, "expand", 2) * config.hidden_size)
        heads = getattr(config, "num_heads", None) or d_inner // int(config.head_dim)
        return 2 * d_inner + 2 * int(config.n_groups) * int(config.state_size) + int(heads)

    def packing_support(self, model: Any, device: Any, compute_dtype: Any = None) -> tuple[str | None, str]:
        if getattr(model.backbone, "backend", "") == "cuda":
            return "seq_idx", ""
        return None, "Mamba-2 packing needs the mamba-ssm kernels on CUDA (the torch backend only has a reference)"


class DecoderFamily(FamilyAdapter):
    """Decoder (causal LM) transformers through `AutoModel`: Pythia, OPT, Llama, Qwen, SmolLM2, GGUF files."""

    name = "decoder"
    reads_gguf = True
    tiny = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128,
            "ffn_dim": 128, "num_key_value_heads": 2, "head_dim": 16, "word_embed_proj_dim": 64,
            "max_window_layers": 2}

    def claims(self, model_type: str | None) -> bool:
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

        # The catch-all of causal LMs: Mamba and BERT-like encoders have causal-LM heads in transformers too, and
        # belong to their own families.
        return model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and not any(
            other.claims(model_type) for other in ADAPTERS.values() if other is not self)

    def tiny_architecture(self, architecture: dict[str, Any]) -> dict[str, Any]:
        shrunk = super().tiny_architecture(architecture)
        if "word_embed_proj_dim" in architecture and \
                architecture["word_embed_proj_dim"] != architecture.get("hidden_size"):
            # OPT-350m projects 1024 -> 512 around its layers; keep a projection in the tiny shape too.
            shrunk["word_embed_proj_dim"] = shrunk["hidden_size"] // 2
        return shrunk


class EncoderFamily(FamilyAdapter):
    """Encoder transformers (BERT, RoBERTa, ELECTRA, DeBERTa, MiniLM) through `AutoModel`, CLS pooling."""

    name = "encoder"
    default_pooling = "cls"
    causal = False
    crossencoder_baseline = True
    rankmamba_template = "rankmamba-encoder"
    rankmamba_max_length = 512  # RankMamba evaluated encoders at 512 tokens
    tiny = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128,
            "embedding_size": 64, "pooler_hidden_size": 64, "position_buckets": 32}

    def claims(self, model_type: str | None) -> bool:
        return model_type in ENCODER_MODEL_TYPES

    def default_template(self, config: Any) -> str:
        return "roberta" if getattr(config, "model_type", None) in ROBERTA_MODEL_TYPES else "encoder"

    def default_max_length(self, config: Any) -> int:
        positions = usable_positions(config)
        return DEFAULT_MAX_LENGTH if positions is None else min(DEFAULT_MAX_LENGTH, positions)

    def use_token_types(self, config: Any) -> bool | None:
        return int(getattr(config, "type_vocab_size", 0) or 0) > 1


ADAPTERS: dict[str, FamilyAdapter] = {adapter.name: adapter for adapter in (
    Mamba1Family(), Mamba2Family(), DecoderFamily(), EncoderFamily())}
FAMILIES: tuple[str, ...] = tuple(ADAPTERS)
MAMBA_FAMILIES: tuple[str, ...] = tuple(name for name, adapter in ADAPTERS.items() if isinstance(adapter, MambaFamily))


def family_adapter(family: str) -> FamilyAdapter:
    """The adapter of `family` (a registry entry's or a `ScoringModel`'s family name)."""
    adapter = ADAPTERS.get(family)
    if adapter is None:
        raise UserError(f"unknown model family {family!r}; expected one of {', '.join(FAMILIES)}")
    return adapter


def adapter_for_config(config: Any) -> FamilyAdapter | None:
    """The adapter of the family that claims a Hugging Face config's `model_type`, or None."""
    model_type = getattr(config, "model_type", None)
    return next((adapter for adapter in ADAPTERS.values() if adapter.claims(model_type)), None)


def family_of_config(config: Any) -> str:
    """The family of a Hugging Face config, from its own `model_type` (explicit, never a name's substring)."""
    adapter = adapter_for_config(config)
    if adapter is not None:
        return adapter.name
    model_type = getattr(config, "model_type", None)
    raise UserError(f"unsupported model type {model_type!r}: pyserini_ssm reranks with Mamba, decoder (causal LM) "
                    f"and encoder transformers")


def family_of_state_spaces(config: dict[str, Any]) -> str:
    """The family of a state-spaces (mamba_ssm) `config.json`, from its `ssm_cfg.layer`."""
    for adapter in ADAPTERS.values():
        if adapter.claims_state_spaces(config):
            return adapter.name
    layer = (config.get("ssm_cfg") or {}).get("layer")
    raise UserError(f"state-spaces config: unknown ssm_cfg.layer {layer!r}")
