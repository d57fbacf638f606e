"""Mamba-1 and Mamba-2 backbones: one set of weights, two ways to run them.

Weights live in the Hugging Face layout (`MambaModel` / `Mamba2Model` parameter names). They run either through
transformers' own torch implementation (any device, the reference) or, on CUDA with `mamba_ssm` installed, through
`mamba_ssm`'s mixer modules and fused Triton/CUDA kernels (`MambaKernelBackbone`, whose state dict has exactly the
same keys). Checkpoints published by state-spaces (`config.json` with `d_model`, `n_layer`, `ssm_cfg`, ... and a
`pytorch_model.bin` with `mamba_ssm` parameter names) are converted on load and can be written back.

`mamba_ssm` is imported lazily, only when the kernel backend is built: this module imports on a machine without it.
See docs/MAMBA.md for the mapping between the formats and what packing with `seq_idx` does.

This module is the one interface (`MambaBackbone`, backend choice, `build_mamba_backbone`, running transformers on
its own torch code); the parts live beside it, and their public names are importable from here too:
`mamba_config` (state-spaces <-> transformers configs), `mamba_checkpoints` (state-spaces files, key conversion),
`mamba_kernels` (the mamba_ssm kernel backbone), `mamba_reference` (the pure-PyTorch reference forward).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import sys
from typing import Any, Iterator, Literal, Sequence

import torch
from torch import nn

from pyserini_ssm.errors import UserError

# The parts, re-exported: callers and tests import (and patch) these names from `models.mamba`.
from pyserini_ssm.models.mamba_checkpoints import (  # noqa: F401
    STATE_SPACES_CONFIG,
    STATE_SPACES_WEIGHTS,
    hf_to_state_spaces,
    load_state_spaces_checkpoint,
    model_from_hf_state_dict,
    save_state_spaces_checkpoint,
    state_spaces_to_hf,
)
from pyserini_ssm.models.mamba_config import (  # noqa: F401
    MAMBA1_MIXER_DEFAULTS,
    MAMBA2_MIXER_DEFAULTS,
    MAMBA_SSM_NORM_EPS,
    REQUIRED_STATE_SPACES_KEYS,
    STATE_SPACES_DEFAULTS,
    _backbone_class,
    _causal_lm_class,
    family_of,
    hf_config_from_state_spaces,
    is_state_spaces_config,
    padded_vocab_size,
    state_spaces_config_from_hf,
    tiny_hf_config,
)
from pyserini_ssm.models.mamba_kernels import (  # noqa: F401
    KERNEL_INSTALL_HINT,
    SHORT_SSD_BLOCK_T,
    SSD_BACKEND_ENV,
    SSD_BACKENDS,
    MambaKernelBackbone,
    _import_mamba_ssm,
    kernel_backbone_from_hf,
    mamba_ssm_available,
    seq_idx_from_cu_seqlens,
    ssd_backend_from_env,
)
from pyserini_ssm.models.mamba_reference import mamba_reference_forward  # noqa: F401

logger = logging.getLogger(__name__)

Backend = Literal["auto", "torch", "cuda"]


def padding_side(attention_mask: torch.Tensor) -> Literal["none", "right", "left"]:
    """Where the zeros of a (B, L) attention mask are. One host sync. Masks with holes are a ValueError."""
    mask = attention_mask.bool()
    if bool(mask.all()):
        return "none"
    if bool((mask[:, 1:] <= mask[:, :-1]).all()):  # ones then zeros in every row
        return "right"
    if bool((mask[:, 1:] >= mask[:, :-1]).all()):
        return "left"
    raise ValueError("attention_mask must be padding on one side (ones then zeros, or zeros then ones) in every row")


class MambaBackbone(nn.Module):
    """What the rerankers call: `forward(input_ids, attention_mask=None, seq_idx=None) -> (B, L, D)` final-normed
    hidden states, by transformers' torch code (`backend == "torch"`) or mamba_ssm's kernels (`"cuda"`).

    `self.model` is a transformers `MambaModel`/`Mamba2Model` or a `MambaKernelBackbone`; both have the same state
    dict keys, so a checkpoint written from one backend loads into the other.

    Padding: right padding never changes the real tokens (the model is causal), so the mask is not needed for it.
    Left padding gives the unpadded result on the torch backend (transformers zeroes the padded states) and on the
    Mamba-2 kernel backend (turned into `seq_idx`); Mamba-1 kernels cannot do it (ValueError).
    Packing (`seq_idx`, Mamba-2 only, NotImplementedError for Mamba-1 on both backends so that code tested on CPU
    behaves the same on GPU): kernels natively; the torch backend splits each row into its sequences, runs them as
    a right-padded batch and puts the states back — exact, and what the kernels are tested against.
    """

    def __init__(self, model: nn.Module, backend: Literal["torch", "cuda"]) -> None:
        super().__init__()
        self.model = model
        self.backend = backend
        self.config = model.config
        self.family = family_of(model.config)
        self.supports_packing = self.family == "mamba2"

    @property
    def hidden_size(self) -> int:
        return int(self.config.hidden_size)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        seq_idx: torch.Tensor | None = None,
        output_positions: torch.Tensor | None = None,
        sequence_lengths: Sequence[int] | None = None,
    ) -> torch.Tensor:
        """(B, L, D), or (B, K, D) at `output_positions` (K,) of each row (the kernel backend then skips the last
        layer's out_proj and norms elsewhere on a packed row). `sequence_lengths` (host ints, the runs of `seq_idx`
        of a packed row) spare the kernel backend a device-to-host read of `seq_idx`."""
        if seq_idx is not None:
            if not self.supports_packing:
                raise NotImplementedError("Mamba-1 has no variable-length kernel: pad the batch instead of packing")
            if attention_mask is not None:
                raise ValueError("give attention_mask or seq_idx, not both (padding in a packed row has its own id)")
            if seq_idx.shape != input_ids.shape:
                raise ValueError(f"seq_idx shape {tuple(seq_idx.shape)} != input_ids shape {tuple(input_ids.shape)}")
        elif attention_mask is not None:
            side = padding_side(attention_mask)
            if side == "none" or (side == "right" and self.backend == "cuda"):
                attention_mask = None
            elif self.backend == "cuda":  # left padding
                if self.family == "mamba1":
                    raise ValueError("the Mamba-1 kernels cannot skip left padding: pad on the right")
                seq_idx, attention_mask = attention_mask.to(torch.int32), None  # padding id 0, tokens id 1
        dtype = self.model.embeddings.weight.dtype
        if self.backend == "cuda":
            return self.model(input_ids, seq_idx=seq_idx, output_positions=output_positions,
                              sequence_lengths=sequence_lengths).to(dtype)
        if seq_idx is not None:
            hidden = self._torch_packed(input_ids, seq_idx)
        else:
            hidden = self._torch(input_ids, attention_mask)
        if output_positions is not None:
            hidden = hidden[:, output_positions]
        return hidden.to(dtype)  # transformers returns fp32 when residual_in_fp32; the kernels the weights' dtype

    def _torch(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        with transformers_torch_functions(self.model):
            output = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, return_dict=True)
        return output.last_hidden_state  # (B, L, D)

    def _torch_packed(self, input_ids: torch.Tensor, seq_idx: torch.Tensor) -> torch.Tensor:
        """Reference packing: every run of equal ids in a row is one sequence, computed on its own."""
        batch, length = input_ids.shape
        ids = seq_idx.to("cpu")
        starts = torch.ones(batch, length, dtype=torch.bool)
        starts[:, 1:] = ids[:, 1:] != ids[:, :-1]
        rows, begins = starts.nonzero(as_tuple=True)  # (N,), (N,) in row-major order
        ends = torch.full_like(begins, length)
        same_row_next = rows[1:] == rows[:-1]
        ends[:-1] = torch.where(same_row_next, begins[1:], torch.full_like(begins[1:], length))
        lengths = ends - begins
        offsets = torch.arange(int(lengths.max()))
        valid = offsets[None, :] < lengths[:, None]  # (N, max_len)
        columns = (begins[:, None] + offsets[None, :]).clamp(max=length - 1)  # (N, max_len)
        row_grid = rows[:, None].expand_as(columns)
        device = input_ids.device
        segments = input_ids[row_grid.to(device), columns.to(device)]  # (N, max_len), right-padded with repeats
        hidden = self._torch(segments, None)  # (N, max_len, D)
        packed = hidden.new_zeros(batch, length, hidden.shape[-1])
        packed[row_grid[valid].to(device), columns[valid].to(device)] = hidden[valid.to(device)]
        return packed


@functools.cache  # called on every torch-backend forward: build each filtered wrapper once
def _keyword_filtered(function: Any) -> Any:
    """`function` accepting (and ignoring) keywords it does not take, as transformers' kernel wrapper does."""
    parameters = inspect.signature(function).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return function

    @functools.wraps(function)
    def call(*args: Any, **kwargs: Any) -> Any:
        return function(*args, **{key: value for key, value in kwargs.items() if key in parameters})

    return call


@contextlib.contextmanager
def transformers_torch_functions(model: nn.Module) -> Iterator[None]:
    """Run transformers' Mamba on its own torch code even where mamba_ssm is installed.

    transformers 5.x binds mamba_ssm's kernels at import time whenever they import, whatever the tensors' device: a
    CPU forward then crashes inside Triton, and the "torch" backend would silently be the kernels. The decorated
    functions keep their torch body as `__wrapped__`; this swaps it in for the duration of the forward.
    """
    module = sys.modules.get(type(model).__module__)
    swapped: dict[str, Any] = {}
    for name, bound in list(vars(module).items()) if module is not None else []:
        # The kernel wrapper's own code object is named `wrapped` (aliases such as `mamba2_chunk_scan` included).
        if inspect.isfunction(bound) and bound.__code__.co_name == "wrapped" and hasattr(bound, "__wrapped__"):
            swapped[name] = bound
            setattr(module, name, _keyword_filtered(bound.__wrapped__))
    try:
        yield
    finally:
        for name, bound in swapped.items():
            setattr(module, name, bound)


def _resolve_backend(backend: str, device: torch.device | str | None = None) -> Literal["torch", "cuda"]:
    """The backend to build for `device` (default: CUDA when available): the kernels only ever run on a GPU."""
    if backend not in ("auto", "torch", "cuda"):
        raise UserError(f"unknown Mamba backend {backend!r} (choose auto, torch or cuda)")
    if backend == "torch":
        return "torch"
    on_gpu = torch.device(device).type == "cuda" if device is not None else torch.cuda.is_available()
    usable = on_gpu and torch.cuda.is_available() and mamba_ssm_available()
    if backend == "cuda" and not usable:
        if not torch.cuda.is_available():
            reason = "CUDA is not available"
        elif not on_gpu:
            reason = f"the model is to run on {device}, not on a GPU (use backend torch there)"
        else:
            reason = "mamba_ssm/causal_conv1d do not import"
        raise UserError(f"the cuda Mamba backend needs a GPU and mamba-ssm: {reason} (install: {KERNEL_INSTALL_HINT})")
    if backend == "auto" and not usable:
        logger.info("Mamba backend: transformers' torch implementation (CPU, no CUDA or no mamba_ssm)")
    return "cuda" if usable else "torch"


def transformers_groups_its_gated_norm() -> bool:
    """Whether transformers' Mamba-2 gated RMSNorm normalises per group of d_inner / n_groups, as mamba_ssm does
    (transformers >= 5.23). Older releases normalise over all of d_inner: for n_groups > 1 their torch forward then
    differs from mamba_ssm's, which defines the published checkpoints (these have n_groups = 1, unaffected)."""
    from transformers.models.mamba2 import modeling_mamba2

    return "group_size" in inspect.signature(modeling_mamba2.MambaRMSNormGated.__init__).parameters


def _warn_if_ungrouped_norm(config: Any) -> None:
    if family_of(config) == "mamba2" and int(getattr(config, "n_groups", 1)) > 1 \
            and not transformers_groups_its_gated_norm():
        import transformers

        logger.warning("transformers %s normalises Mamba-2's gated RMSNorm over all %d groups at once; mamba_ssm (and "
                       "this project's cuda backend) per group: with n_groups=%d the torch backend's scores differ "
                       "from mamba_ssm's. Upgrade transformers to >= 5.23.", transformers.__version__,
                       config.n_groups, config.n_groups)


def build_mamba_backbone(
    model_or_config: Any,
    backend: Backend = "auto",
    device: torch.device | str | None = None,
) -> MambaBackbone:
    """A `MambaBackbone` from a transformers Mamba/Mamba2 causal LM, a bare `MambaModel`/`Mamba2Model`, or a config.

    backend: `torch` (transformers' implementation, on the model's device), `cuda` (mamba_ssm kernels on `device`,
    default the current CUDA device; the weights are shared with the given model when it is already there), or
    `auto` (cuda when the model is to run on a GPU and mamba_ssm imports, else torch; without `device`, a given
    model's own device decides).
    From a config, the weights are freshly initialised by the chosen backend's library.
    """
    if device is None and isinstance(model_or_config, nn.Module) and backend != "cuda":
        device = next(model_or_config.parameters()).device  # `torch` keeps the model where it is
    chosen = _resolve_backend(backend, device)
    if hasattr(model_or_config, "model_type") and not isinstance(model_or_config, nn.Module):
        config = model_or_config
        family_of(config)
        if chosen == "torch":
            _warn_if_ungrouped_norm(config)
            model = _backbone_class(config)(config)
            if device is not None:
                model = model.to(device)
            return MambaBackbone(model.eval(), "torch")
        kernel = MambaKernelBackbone(config, device=device or "cuda")
        return MambaBackbone(kernel.eval(), "cuda")
    hf_backbone = _hf_backbone_of(model_or_config)
    if chosen == "torch":
        _warn_if_ungrouped_norm(hf_backbone.config)
        if device is not None:
            hf_backbone = hf_backbone.to(device)
        return MambaBackbone(hf_backbone, "torch")
    return MambaBackbone(kernel_backbone_from_hf(hf_backbone, device=device or "cuda"), "cuda")


def _hf_backbone_of(model: Any) -> nn.Module:
    if isinstance(model, MambaBackbone):
        model = model.model
    if isinstance(model, MambaKernelBackbone):
        return model
    config = getattr(model, "config", None)
    family_of(config)
    backbone = getattr(model, "backbone", model)
    if not hasattr(backbone, "embeddings") or not hasattr(backbone, "layers"):
        raise UserError(f"{type(model).__name__} is not a transformers Mamba model or backbone")
    return backbone
