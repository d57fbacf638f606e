"""State-spaces checkpoint folders (`config.json` + `pytorch_model.bin` with mamba_ssm parameter names): read into a
transformers Mamba/Mamba2 causal LM, written back, and the state-dict key conversion between the two spellings.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from pyserini_ssm.errors import UserError
from pyserini_ssm.models.mamba_config import (
    _causal_lm_class,
    hf_config_from_state_spaces,
    is_state_spaces_config,
    state_spaces_config_from_hf,
)

if TYPE_CHECKING:
    import transformers

STATE_SPACES_CONFIG = "config.json"
STATE_SPACES_WEIGHTS = "pytorch_model.bin"

# The only parameter whose name differs: mamba_ssm's MixerModel.embedding vs transformers' MambaModel.embeddings.
_SS_EMBEDDING = re.compile(r"(^|\.)embedding\.")
_HF_EMBEDDING = re.compile(r"(^|\.)embeddings\.")


def state_spaces_to_hf(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """mamba_ssm parameter names -> transformers names (`backbone.embedding.` -> `backbone.embeddings.`).

    Every other name is shared: `backbone.layers.{i}.norm.weight`, `backbone.layers.{i}.mixer.{in_proj, conv1d,
    x_proj, dt_proj, dt_bias, A_log, D, norm, out_proj}.*`, `backbone.norm_f.weight`, `lm_head.weight`; and the
    tensors have the same shapes and meaning in both (checked by the tests and on the device against mamba_ssm).
    """
    return {_SS_EMBEDDING.sub(r"\1embeddings.", key): value for key, value in state_dict.items()}


def hf_to_state_spaces(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers parameter names -> mamba_ssm names (`backbone.embeddings.` -> `backbone.embedding.`)."""
    return {_HF_EMBEDDING.sub(r"\1embedding.", key): value for key, value in state_dict.items()}


def _read_state_spaces_files(directory: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    if not directory.is_dir():
        raise UserError(f"checkpoint folder not found: {directory}")
    config_path = directory / STATE_SPACES_CONFIG
    weights_path = directory / STATE_SPACES_WEIGHTS
    for path in (config_path, weights_path):
        if not path.is_file():
            raise UserError(
                f"state-spaces checkpoint {directory} has no {path.name} (expected {STATE_SPACES_CONFIG} and "
                f"{STATE_SPACES_WEIGHTS}, as in state-spaces/mamba-130m)"
            )
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{config_path} is not valid JSON: {error}") from None
    try:
        state_dict = torch.load(weights_path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for a truncated or foreign file
        raise UserError(f"cannot read {weights_path} as a PyTorch state dict: {error}") from None
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise UserError(f"{weights_path} does not hold a state dict of tensors")
    return config, state_dict


def load_state_spaces_checkpoint(
    directory: str | Path, dtype: torch.dtype | None = torch.float32
) -> "transformers.MambaForCausalLM | transformers.Mamba2ForCausalLM":
    """A state-spaces checkpoint folder (`config.json` + `pytorch_model.bin`, e.g. state-spaces/mamba2-780m) as a
    transformers `MambaForCausalLM` / `Mamba2ForCausalLM` on the CPU, in `dtype` (None keeps the file's dtypes).

    Missing files, configs transformers cannot express, and missing, unexpected or wrongly shaped tensors are
    UserErrors naming the file or key.
    """
    directory = Path(directory)
    ss_config, ss_state = _read_state_spaces_files(directory)
    if not is_state_spaces_config(ss_config):
        raise UserError(
            f"{directory / STATE_SPACES_CONFIG} is not a state-spaces (mamba_ssm) config: it needs d_model and n_layer "
            "and no model_type (a transformers checkpoint loads with from_pretrained)"
        )
    try:
        config = hf_config_from_state_spaces(ss_config)
    except UserError as error:
        raise UserError(f"{directory / STATE_SPACES_CONFIG}: {error}") from None
    state = state_spaces_to_hf(ss_state)
    return model_from_hf_state_dict(config, state, dtype=dtype, source=str(directory / STATE_SPACES_WEIGHTS))


def model_from_hf_state_dict(
    config: Any, state: dict[str, torch.Tensor], dtype: torch.dtype | None = torch.float32, source: str = "state dict"
) -> "transformers.MambaForCausalLM | transformers.Mamba2ForCausalLM":
    """Build the causal LM of `config` on the meta device and assign `state` (HF names) to it, checking every key and
    shape first, so that no random initialisation is computed and nothing is half-loaded."""
    model_class = _causal_lm_class(config)
    with torch.device("meta"):
        model = model_class(config)
    expected = model.state_dict()
    state = dict(state)
    embedding_key, head_key = "backbone.embeddings.weight", "lm_head.weight"
    if config.tie_word_embeddings:
        if head_key in state and embedding_key in state and not torch.equal(state[head_key], state[embedding_key]):
            raise UserError(f"{source}: tie_embeddings is true but {head_key} differs from the embedding weights")
        if embedding_key in state:
            state[head_key] = state[embedding_key]
    missing = [key for key in expected if key not in state]
    if missing:
        raise UserError(f"{source}: missing tensors {_ss_names(missing)}")
    unexpected = [key for key in state if key not in expected]
    if unexpected:
        raise UserError(f"{source}: unexpected tensors {_ss_names(unexpected)} for this config")
    for key, reference in expected.items():
        if tuple(state[key].shape) != tuple(reference.shape):
            raise UserError(
                f"{source}: {_ss_names([key])[0]} has shape {tuple(state[key].shape)}, the config needs "
                f"{tuple(reference.shape)}"
            )
    if dtype is not None:
        state = {key: value.to(dtype) for key, value in state.items()}
        if config.tie_word_embeddings:  # one tensor, not two equal copies
            state[head_key] = state[embedding_key]
    model.load_state_dict(state, strict=True, assign=True)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.backbone.embeddings.weight
    model.eval()
    return model


def _ss_names(keys: list[str]) -> list[str]:
    """Report keys in the mamba_ssm spelling, which is what the user's file contains."""
    return [_HF_EMBEDDING.sub(r"\1embedding.", key) for key in keys]


def save_state_spaces_checkpoint(model: nn.Module, directory: str | Path) -> Path:
    """Write `model` (a transformers Mamba/Mamba2 causal LM or backbone, or a `MambaBackbone`) as state-spaces
    publishes it: `config.json` with mamba_ssm's `MambaConfig` fields and `pytorch_model.bin` with mamba_ssm parameter
    names (tied `lm_head.weight` included, as `MambaLMHeadModel.save_pretrained` writes it). Loads with
    `MambaLMHeadModel.from_pretrained` and with `load_state_spaces_checkpoint`."""
    from pyserini_ssm.files import atomic_output

    config = model.config
    ss_config = state_spaces_config_from_hf(config)
    state = _hf_causal_lm_state(model)
    if not config.tie_word_embeddings and "lm_head.weight" not in state:
        raise UserError("the model has untied embeddings but no lm_head: it cannot be written as a state-spaces LM")
    ss_state = hf_to_state_spaces({key: value.detach().contiguous() for key, value in state.items()})
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_output(directory / STATE_SPACES_WEIGHTS, "wb") as handle:
        torch.save(ss_state, handle)
    with atomic_output(directory / STATE_SPACES_CONFIG) as handle:
        json.dump(ss_config, handle, indent=4)
    return directory


def _hf_causal_lm_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """HF `*ForCausalLM` state dict keys for a causal LM, a bare `MambaModel`, or a `MambaBackbone`."""
    from pyserini_ssm.models.mamba import MambaBackbone  # lazily: mamba imports this module

    if isinstance(model, MambaBackbone):
        model = model.model
    state = model.state_dict()
    if any(key.startswith("backbone.") for key in state):
        causal = {key: value for key, value in state.items() if key.startswith(("backbone.", "lm_head."))}
    else:
        causal = {f"backbone.{key}": value for key, value in state.items()}
    if model.config.tie_word_embeddings:
        causal["lm_head.weight"] = causal["backbone.embeddings.weight"]
    return causal

