"""The reranker made trainable: loaded with fp32 master weights and a score head to train, LoRA adapters (and their
merge for saving), gradient checkpointing, dropout turned off for deterministic comparisons.
"""

from __future__ import annotations

import copy
import logging
import warnings
from typing import TYPE_CHECKING

from pyserini_ssm.errors import UserError

if TYPE_CHECKING:
    from pyserini_ssm.training.config import TrainConfig

logger = logging.getLogger(__name__)


def _head_parameters(scoring_model) -> list:
    head = getattr(scoring_model, "head", None)
    return [] if head is None else list(head.parameters())


def load_reranker(model: str, config: TrainConfig, device):
    """The reranker to train, its weights in fp32 (master weights; autocast gives bf16/fp16 compute)."""
    import torch

    from pyserini_ssm.models.reranker import Reranker

    with warnings.catch_warnings():  # "untrained head" is the point of training: no need to warn about it
        warnings.filterwarnings("ignore", message=".*no trained score head.*")
        reranker = Reranker.from_pretrained(model, device=device, dtype=torch.float32, max_length=config.max_length)
    check_trainable(reranker, model)
    return reranker


def check_trainable(reranker, name: str) -> None:
    """A UserError unless the reranker has a score head with parameters (what LCE trains on top of the backbone)."""
    if not _head_parameters(reranker.model):
        raise UserError(f"model {name!r} has no trainable score head (its scoring module has no `head` layer); "
                        "start from a backbone or a reranker directory written by pyserini_ssm")


def _backbone(scoring_model):
    """The backbone module under the head (the transformers/Mamba model)."""
    for name in ("backbone", "encoder", "model", "base_model"):
        module = getattr(scoring_model, name, None)
        if module is not None and hasattr(module, "parameters") and module is not scoring_model:
            return module, name
    raise UserError("cannot find the backbone of this model (expected a `backbone` attribute)")


def enable_gradient_checkpointing(scoring_model) -> bool:
    """Turn on the backbone's gradient checkpointing when it offers it; False (and a warning) when it does not."""
    for module in scoring_model.modules():
        # transformers >= 5 renamed it activation_checkpointing_enable (the old name warns)
        enable = getattr(module, "activation_checkpointing_enable", None) or getattr(
            module, "gradient_checkpointing_enable", None)
        if enable is None:
            continue
        if getattr(module, "supports_gradient_checkpointing", True) is False:
            break
        try:  # non-reentrant: works with DDP and with inputs that need no grad
            enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        except TypeError:
            enable()
        return True
    logger.warning("gradient checkpointing requested but this backbone does not support it; training without")
    return False


def apply_lora(scoring_model, config: TrainConfig) -> None:
    """LoRA adapters (peft) on every linear layer of the backbone; the head stays fully trainable."""
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError:
        raise UserError("--lora needs the peft package: pip install peft") from None
    backbone, _ = _backbone(scoring_model)
    lora_config = LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                             target_modules="all-linear", bias="none")
    inject_adapter_in_model(lora_config, backbone)
    for name, parameter in backbone.named_parameters():
        parameter.requires_grad = "lora_" in name
    for parameter in _head_parameters(scoring_model):
        parameter.requires_grad = True


def merged_lora_copy(reranker):
    """A copy of the reranker with every LoRA delta merged into its base layer and the adapters removed."""
    from peft.tuners.lora import LoraLayer

    merged = copy.deepcopy(reranker)
    modules = dict(merged.model.named_modules())
    for name, module in list(modules.items()):
        if isinstance(module, LoraLayer) and hasattr(module, "base_layer"):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            setattr(modules[parent_name] if parent_name else merged.model, child, module.base_layer)
    return merged


def disable_dropout(module) -> None:
    import torch

    for child in module.modules():
        if isinstance(child, torch.nn.Dropout):
            child.p = 0.0
