"""The mamba_ssm kernel backbone: transformers' `MambaModel`/`Mamba2Model` computation run by mamba_ssm's modules and
fused kernels (CUDA only), with the same state dict keys; the choice of SSD for packed Mamba-2 rows.

`mamba_ssm` is imported lazily, only when a `MambaKernelBackbone` is built: this module imports without it.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Sequence

import torch
from torch import nn

from pyserini_ssm.errors import UserError
from pyserini_ssm.models.mamba_config import family_of
from pyserini_ssm.ops.rmsnorm import add_rmsnorm

logger = logging.getLogger(__name__)

KERNEL_INSTALL_HINT = "pip install --no-build-isolation mamba-ssm causal-conv1d"

# The SSD of packed Mamba-2 rows on the kernel backend: "short" (ops.ssd_short) or "mamba_ssm" (stock).
SSD_BACKENDS = ("short", "mamba_ssm")
SSD_BACKEND_ENV = "PYSERINI_SSM_SSD"
# The short SSD's tile: 256 tokens, grown (powers of two) up to SHORT_SSD_MAX_BLOCK_T for a row whose longest
# sequence needs it, so that every pair of a 512-token reranker runs in tiles. Longer sequences go to mamba_ssm's
# chunked scan on gathered tokens: gathers, its kernels and a scatter in every layer. On an H200 (2026-12-02,
# bin/profile-training-step and bin/profile-predict) a 128-pair training step holding one 279-token pair took
# 272.7 ms in 512-token tiles against 350.3 ms through the chunked scan, and 4,096 DL19 pairs scored at 2,819
# against 2,771 pairs/s.
SHORT_SSD_BLOCK_T = int(os.environ.get("PYSERINI_SSM_SSD_BLOCK_T", "256"))
SHORT_SSD_MAX_BLOCK_T = int(os.environ.get("PYSERINI_SSM_SSD_MAX_BLOCK_T", "512"))
for _name, _value in (("PYSERINI_SSM_SSD_BLOCK_T", SHORT_SSD_BLOCK_T),
                      ("PYSERINI_SSM_SSD_MAX_BLOCK_T", SHORT_SSD_MAX_BLOCK_T)):
    if _value < 64 or _value & (_value - 1):
        raise ValueError(f"{_name} must be a power of two >= 64, got {_value}")


# The RMSNorms of short-SSD rows (the residual add + RMSNorm between layers, the mixer's gated norm): "triton"
# (ops.rmsnorm: lean launches, the host sets the pace of a 128-pair training step) or "mamba_ssm" (its layer_norm_fn
# and RMSNormGated). The stock path always runs mamba_ssm's.
NORM_BACKENDS = ("triton", "mamba_ssm")
NORM_BACKEND_ENV = "PYSERINI_SSM_NORM"


def ssd_backend_from_env() -> str:
    value = os.environ.get(SSD_BACKEND_ENV, "short")
    if value not in SSD_BACKENDS:
        raise UserError(f"{SSD_BACKEND_ENV}={value!r}: choose one of {', '.join(SSD_BACKENDS)}")
    return value


def mamba_ssm_available() -> bool:
    """Whether mamba_ssm (and causal_conv1d, which its fast paths need) import here."""
    try:
        _import_mamba_ssm()
    except Exception:  # a broken CUDA extension raises anything from ImportError to OSError
        return False
    return True


def _import_mamba_ssm() -> dict[str, Any]:
    import causal_conv1d  # noqa: F401  (without it mamba_ssm silently takes slow, unfused paths)
    from mamba_ssm.modules.mamba2 import Mamba2
    from mamba_ssm.modules.mamba_simple import Mamba
    from mamba_ssm.ops.triton.layer_norm import RMSNorm, layer_norm_fn

    return {"Mamba": Mamba, "Mamba2": Mamba2, "RMSNorm": RMSNorm, "layer_norm_fn": layer_norm_fn}


class _KernelBlock(nn.Module):
    """Holds one layer's parameters under transformers' names (`norm`, `mixer`); the forward is in the backbone."""

    def __init__(self, norm: nn.Module, mixer: nn.Module) -> None:
        super().__init__()
        self.norm = norm
        self.mixer = mixer


class MambaKernelBackbone(nn.Module):
    """transformers' `MambaModel`/`Mamba2Model` computation run by mamba_ssm's modules and fused kernels (CUDA only).

    Its state dict has exactly the keys of the transformers backbone (`embeddings.weight`, `layers.{i}.norm.weight`,
    `layers.{i}.mixer.*`, `norm_f.weight`), so one set of weights loads into either. The layer loop is mamba_ssm's
    `MixerModel` with `fused_add_norm=True` (Add -> RMSNorm fused in Triton, residual kept in fp32 when
    `residual_in_fp32`); the mixers are mamba_ssm's own `Mamba` (fast path: `mamba_inner_fn`) and `Mamba2` (memory-
    efficient path: `mamba_split_conv1d_scan_combined`).
    """

    def __init__(self, config: Any, device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        modules = _import_mamba_ssm()
        self.layer_norm_fn = modules["layer_norm_fn"]
        self.config = config
        self.family = family_of(config)
        self.residual_in_fp32 = bool(config.residual_in_fp32)
        if config.hidden_act != "silu":
            raise UserError(f"hidden_act={config.hidden_act!r}: mamba_ssm's kernels only implement silu")
        factory = {"device": device, "dtype": dtype}
        eps = float(config.layer_norm_epsilon)
        self.embeddings = nn.Embedding(config.vocab_size, config.hidden_size, **factory)
        self.layers = nn.ModuleList(
            _KernelBlock(modules["RMSNorm"](config.hidden_size, eps=eps, **factory), self._mixer(modules, i, factory))
            for i in range(config.num_hidden_layers)
        )
        self.norm_f = modules["RMSNorm"](config.hidden_size, eps=eps, **factory)
        # Which SSD runs packed Mamba-2 rows: "short" (ops.ssd_short, with mamba_ssm's chunked scan for sequences
        # longer than its tile) or "mamba_ssm" (the stock memory-efficient path). Settable at run time (benches).
        self.ssd_backend = ssd_backend_from_env()
        self.norm_backend = os.environ.get(NORM_BACKEND_ENV, "triton")
        if self.norm_backend not in NORM_BACKENDS:
            raise UserError(f"{NORM_BACKEND_ENV}={self.norm_backend!r}: choose one of {', '.join(NORM_BACKENDS)}")
        self.ssd_block_t = SHORT_SSD_BLOCK_T
        self.ssd_max_block_t = max(SHORT_SSD_MAX_BLOCK_T, SHORT_SSD_BLOCK_T)
        self.last_ssd_kernels: str | None = None  # what the last forward ran (read by the bench)
        self._short_ssd_warned = False
        if torch.device(device or "cpu").type != "meta":
            from mamba_ssm.models.mixer_seq_simple import _init_weights

            self.apply(lambda module: _init_weights(module, n_layer=config.num_hidden_layers))

    @property
    def calls_out_proj_as_module(self) -> bool:
        """Whether packed rows call each mixer's `out_proj` as a module (our short-SSD mixer), so that `models.fp8`
        may convert it too; mamba_ssm's stock fused path reads `out_proj.weight` itself (an FP8 layer there raises)."""
        if self.family != "mamba2" or self.ssd_backend != "short":
            return False
        from pyserini_ssm.models.mamba2_mixer import short_ssd_unsupported

        return short_ssd_unsupported(self.layers[0].mixer) is None

    def _mixer(self, modules: dict[str, Any], layer_idx: int, factory: dict) -> nn.Module:
        config = self.config
        if self.family == "mamba1":
            return modules["Mamba"](
                d_model=config.hidden_size,
                d_state=config.state_size,
                d_conv=config.conv_kernel,
                expand=config.expand,
                dt_rank=int(config.time_step_rank),
                conv_bias=config.use_conv_bias,
                bias=config.use_bias,
                use_fast_path=True,
                layer_idx=layer_idx,
                **factory,
            )
        d_inner = int(config.expand * config.hidden_size)
        if d_inner != config.num_heads * config.head_dim:
            raise UserError(
                f"Mamba2 config: expand*hidden_size={d_inner} != num_heads*head_dim={config.num_heads * config.head_dim}"
            )
        mixer = modules["Mamba2"](
            d_model=config.hidden_size,
            d_state=config.state_size,
            d_conv=config.conv_kernel,
            expand=config.expand,
            headdim=config.head_dim,
            ngroups=config.n_groups,
            rmsnorm=True,
            norm_before_gate=False,  # transformers' MambaRMSNormGated: norm(y * silu(z)), per group of d_inner/ngroups
            dt_limit=tuple(float(x) for x in config.time_step_limit),
            bias=config.use_bias,
            conv_bias=config.use_conv_bias,
            chunk_size=config.chunk_size,
            use_mem_eff_path=True,
            layer_idx=layer_idx,
            **factory,
        )
        mixer.norm.eps = float(config.layer_norm_epsilon)  # transformers uses layer_norm_epsilon for the gated norm
        return mixer

    def forward(
        self,
        input_ids: torch.Tensor,
        seq_idx: torch.Tensor | None = None,
        cu_seqlens: torch.Tensor | None = None,
        output_positions: torch.Tensor | None = None,
        sequence_lengths: Sequence[int] | None = None,
    ) -> torch.Tensor:
        """Final-normed hidden states (B, L, D) of `input_ids` (B, L), or (B, K, D) at `output_positions` (K,).

        `seq_idx` (B, L) int32 (Mamba-2 only) packs several sequences into a row: a position only sees earlier
        positions with the same id, in the convolution (causal_conv1d masks its window by seq_idx) and in the scan
        (the state restarts where the id changes). `cu_seqlens` (N + 1,) is the same for a single row (B = 1) and
        is turned into `seq_idx`. A Mamba-2 row (B = 1) runs through the short-sequence SSD when `ssd_backend` is
        "short"; its last layer then computes the gated norm, out_proj and final norm only at `output_positions`.
        `sequence_lengths` (host ints: the lengths of the runs of `seq_idx`, as `ops.batching.pack_batch` gives them)
        let the row be tiled without reading `seq_idx` back, which would wait for the device (the previous row).
        """
        if cu_seqlens is not None:
            if seq_idx is not None:
                raise ValueError("give seq_idx or cu_seqlens, not both")
            seq_idx = seq_idx_from_cu_seqlens(cu_seqlens, input_ids.shape)
        mixer_kwargs: dict[str, Any] = {}
        if seq_idx is not None:
            if self.family == "mamba1":
                raise NotImplementedError("Mamba-1 has no variable-length kernel: pad the batch instead of packing")
            if seq_idx.shape != input_ids.shape:
                raise ValueError(f"seq_idx shape {tuple(seq_idx.shape)} != input_ids shape {tuple(input_ids.shape)}")
            seq_idx = seq_idx.to(device=input_ids.device, dtype=torch.int32).contiguous()
            mixer_kwargs["seq_idx"] = seq_idx
        plan = self._short_ssd_plan(input_ids, seq_idx, sequence_lengths)
        lean_norms = plan is not None and self.norm_backend == "triton"
        fold_conv = fold_gate = False
        if plan is not None:
            from pyserini_ssm.models.mamba2_mixer import conv_folds, gate_folds, mamba2_mixer_forward

            fold_conv = conv_folds(self, self.layers[0].mixer, plan)
            fold_gate = gate_folds(self, self.layers[0].mixer, plan, lean_norms)
            if fold_conv:
                self.last_ssd_kernels += ", conv + SiLU of x folded into the SSD"
            if fold_gate:
                self.last_ssd_kernels += ", gated norm folded into the SSD"
        quantize = False
        if lean_norms:
            from pyserini_ssm.ops.fp8 import Fp8Linear

            # under FP8 the norm writes in_proj's e4m3 input itself (inference: no gradient through the codes)
            quantize = not torch.is_grad_enabled() and isinstance(self.layers[0].mixer.in_proj, Fp8Linear)
        hidden = self.embeddings(input_ids)  # (B, L, D)
        residual = None
        last = len(self.layers) - 1
        for index, layer in enumerate(self.layers):
            hidden, residual = self._add_norm(layer.norm, hidden, residual, lean_norms, quantize=quantize)
            if plan is None:
                hidden = layer.mixer(hidden, **mixer_kwargs)  # (B, L, D)
                continue
            positions = output_positions if index == last else None
            hidden = mamba2_mixer_forward(layer.mixer, hidden, plan, seq_idx, positions, lean_norm=lean_norms,
                                          fold_conv=fold_conv, fold_gate=fold_gate)  # (1, L or K, D)
            if positions is not None:
                residual = residual[:, positions]
        out = self._add_norm(self.norm_f, hidden, residual, lean_norms, prenorm=False)
        if output_positions is not None and plan is None:
            out = out[:, output_positions]
        return out

    def _add_norm(self, norm: nn.Module, hidden: torch.Tensor, residual: torch.Tensor | None, lean: bool,
                  prenorm: bool = True, quantize: bool = False) -> Any:
        """RMSNorm(hidden + residual) with `norm`'s weight and eps, and with `prenorm` the sum (the next residual,
        fp32 when `residual_in_fp32`): `ops.rmsnorm` when `lean` (e4m3 codes for an Fp8Linear with `quantize`;
        `hidden` may be an `ops.rmsnorm.ScaledRows`), else mamba_ssm's fused `layer_norm_fn`."""
        if lean:
            out = add_rmsnorm(hidden, residual, norm.weight, norm.eps, residual_in_fp32=self.residual_in_fp32,
                              quantize=quantize)
            return out if prenorm else out[0]
        return self.layer_norm_fn(hidden, norm.weight, None, residual=residual, prenorm=prenorm,
                                  residual_in_fp32=self.residual_in_fp32, eps=norm.eps, is_rms_norm=True)

    def _short_ssd_plan(self, input_ids: torch.Tensor, seq_idx: torch.Tensor | None,
                        sequence_lengths: Sequence[int] | None = None):
        """The tiling of the row for the short SSD, or None when the stock mamba_ssm path runs (recorded)."""
        stock = "mamba_ssm mamba_split_conv1d_scan_combined"
        if self.family != "mamba2":
            self.last_ssd_kernels = "mamba_ssm mamba_inner_fn (Mamba-1)"
            return None
        if self.ssd_backend != "short":
            self.last_ssd_kernels = stock
            return None
        if input_ids.shape[0] != 1 or not input_ids.is_cuda:
            self.last_ssd_kernels = f"{stock} (a padded batch of {input_ids.shape[0]}: the short SSD takes rows)"
            return None
        from pyserini_ssm.models.mamba2_mixer import short_ssd_unsupported
        from pyserini_ssm.ops.ssd_short import plan_short_ssd

        reason = short_ssd_unsupported(self.layers[0].mixer)
        if reason is not None:
            if not self._short_ssd_warned:
                logger.warning("short-sequence SSD not usable (%s): mamba_ssm's stock kernels run", reason)
                self._short_ssd_warned = True
            self.last_ssd_kernels = f"{stock} (short SSD unsupported: {reason})"
            return None
        plan = plan_short_ssd(seq_idx, input_ids.shape[1], input_ids.device, block_t=self.ssd_block_t,
                              lengths=sequence_lengths if seq_idx is not None else None,
                              max_block_t=max(self.ssd_max_block_t, self.ssd_block_t))
        if plan.tiles == 0 and type(self.layers[0].mixer.out_proj) is nn.Linear:
            # Every sequence is longer than a tile: the short SSD has nothing to do, and mamba_ssm's fused path
            # (conv, scan and out_proj in one autograd function) beats our mixer around its chunked scan. Under FP8
            # out_proj is an Fp8Linear that the fused path cannot read, so our mixer keeps the row.
            self.last_ssd_kernels = f"{stock} (no sequence of <= {plan.block_t} tokens in the row)"
            return None
        kernels = f"short-ssd triton ({plan.tiles} tiles of <= {plan.block_t} tokens)"
        if plan.long_sequences:
            kernels += (f" + mamba_chunk_scan_combined ({plan.long_sequences} sequences > {plan.block_t} tokens, "
                        f"{plan.long_tokens} tokens)")
        if self.norm_backend == "triton":
            kernels += ", rmsnorm triton"
        self.last_ssd_kernels = kernels
        return plan


def seq_idx_from_cu_seqlens(cu_seqlens: torch.Tensor, shape: torch.Size | tuple[int, int]) -> torch.Tensor:
    """(B=1, L) int32 sequence ids from cumulative lengths [0, l0, l0+l1, ..., L]."""
    batch, length = shape
    if batch != 1:
        raise ValueError(f"cu_seqlens describes one packed row, got a batch of {batch}")
    if int(cu_seqlens[-1]) != length:
        raise ValueError(f"cu_seqlens ends at {int(cu_seqlens[-1])}, the row has {length} tokens")
    lengths = cu_seqlens[1:] - cu_seqlens[:-1]
    ids = torch.arange(len(lengths), device=cu_seqlens.device, dtype=torch.int32)
    return torch.repeat_interleave(ids, lengths.long()).unsqueeze(0)


def kernel_backbone_from_hf(hf_backbone: nn.Module, device: torch.device | str = "cuda") -> MambaKernelBackbone:
    """A `MambaKernelBackbone` holding the weights of a transformers `MambaModel`/`Mamba2Model` (moved to `device`;
    shared, not copied, when they are already there). No random initialisation is computed."""
    if isinstance(hf_backbone, MambaKernelBackbone):
        return hf_backbone.to(device)
    kernel = MambaKernelBackbone(hf_backbone.config, device="meta")
    state = hf_backbone.state_dict()
    expected = kernel.state_dict()
    if set(state) != set(expected):
        raise UserError(
            f"weights do not match the mamba_ssm modules: missing {sorted(set(expected) - set(state))}, "
            f"unexpected {sorted(set(state) - set(expected))}"
        )
    for key, value in expected.items():
        if state[key].shape != value.shape:
            raise UserError(f"{key}: shape {tuple(state[key].shape)}, mamba_ssm expects {tuple(value.shape)}")
    kernel.load_state_dict(state, strict=True, assign=True)
    return kernel.to(device).eval()
