"""`--dtype fp8`: a scoring model's bf16 backbone with its Linear layers swapped for `ops.fp8.Fp8Linear`.

What converts, per family (the layers are found by module type, never by the model's name):
- transformers encoders and decoders: every `nn.Linear` of the backbone (attention and MLP projections, BERT's
  pooler); the score head stays fp32 and the embeddings are not Linear layers;
- Mamba-2 on the mamba-ssm kernels: `in_proj` (mamba_ssm's `Mamba2` calls it as a module). Its `out_proj` stays bf16
  on the stock memory-efficient path, which hands `out_proj.weight` to the fused `mamba_split_conv1d_scan_combined`;
  a forward that calls `out_proj` as a module says so with `calls_out_proj_as_module = True` on the mixer or on
  the backbone, and then it converts too;
- Mamba-1 on the kernels: nothing (`mamba_inner_fn` reads every projection's weight), so fp8 is refused;
- the Mamba torch backend (transformers' code): every Linear but Mamba-1's `dt_proj` (its weight is read directly).
Layers whose in/out features are not multiples of 16 stay bf16 (`torch._scaled_mm` needs that).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from pyserini_ssm.errors import UserError

FP8 = "fp8"
FP8_MIN_CAPABILITY = (8, 9)  # Ada and Hopper have FP8 tensor cores


@dataclass
class Fp8Conversion:
    """What `convert_to_fp8` did: the Linear layers swapped (names under the backbone), those kept in bf16 and why,
    and the input quantiser that runs ("triton" or "torch")."""

    converted: list[str]
    kept: dict[str, str] = field(default_factory=dict)
    quantizer: str = "torch"

    def summary(self) -> str:
        return (f"FP8: {len(self.converted)} Linear layers converted, {len(self.kept)} kept in bf16, "
                f"{self.quantizer} input quantiser")


def check_fp8_device(device: torch.device) -> None:
    """UserError unless `device` is a CUDA GPU with compute capability >= 8.9."""
    wanted = ".".join(map(str, FP8_MIN_CAPABILITY))
    if device.type != "cuda":
        raise UserError(f"--dtype fp8 needs a CUDA GPU with compute capability >= {wanted} (Ada, Hopper), and the "
                        f"model is to run on {device}; use --dtype bf16 or fp32 here")
    capability = torch.cuda.get_device_capability(device)
    if tuple(capability) < FP8_MIN_CAPABILITY:
        raise UserError(f"--dtype fp8 needs compute capability >= {wanted} (Ada, Hopper); "
                        f"{torch.cuda.get_device_name(device)} has {capability[0]}.{capability[1]}; use --dtype bf16")


def _is_class(module: nn.Module, module_prefix: str, name: str) -> bool:
    kind = type(module)
    return kind.__name__ == name and kind.__module__.startswith(module_prefix)


def weight_read_linears(backbone: nn.Module) -> dict[str, str]:
    """Linear layers under `backbone` whose `.weight` a fused kernel or a torch forward reads directly (name -> why):
    they must stay bf16."""
    calls_out_proj = bool(getattr(backbone, "calls_out_proj_as_module", False)) or any(
        getattr(module, "calls_out_proj_as_module", False) for module in backbone.modules())
    kept: dict[str, str] = {}
    for name, module in backbone.named_modules():
        prefix = f"{name}." if name else ""
        if _is_class(module, "mamba_ssm", "Mamba"):
            for child in ("in_proj", "x_proj", "dt_proj", "out_proj"):
                kept[prefix + child] = "mamba_ssm's Mamba passes the weight to mamba_inner_fn"
        elif _is_class(module, "mamba_ssm", "Mamba2") and getattr(module, "use_mem_eff_path", False) \
                and not (calls_out_proj or getattr(module, "calls_out_proj_as_module", False)):
            kept[prefix + "out_proj"] = "mamba_ssm's fused Mamba2 path passes out_proj.weight to its kernel"
        elif _is_class(module, "transformers", "MambaMixer"):
            kept[prefix + "dt_proj"] = "transformers' Mamba forward multiplies dt_proj.weight directly"
    return kept


def convert_to_fp8(model: nn.Module) -> Fp8Conversion:
    """Swap the Linear layers of `model.backbone` (a `ScoringModel`'s) for `Fp8Linear`, in place; the head stays.

    The model must already be on its device in bf16. Raises UserError when no layer can run in FP8."""
    from pyserini_ssm.ops.fp8 import convert_linears_to_fp8, fp8_shape_ok, quantizer_name

    backbone = model.backbone
    kept = weight_read_linears(backbone)
    for name, child in backbone.named_modules():
        if type(child) is nn.Linear and name not in kept and not fp8_shape_ok(child):
            kept[name] = (f"{child.in_features} -> {child.out_features} features: torch._scaled_mm needs multiples "
                          f"of 16")
    converted = convert_linears_to_fp8(backbone, lambda name, _: name not in kept)
    device = next(backbone.parameters()).device
    if not converted:
        why = "; ".join(sorted(set(kept.values()))) or "it has no Linear layer"
        raise UserError(f"--dtype fp8: no Linear layer of this model can run in FP8 ({why}); use --dtype bf16")
    return Fp8Conversion(converted, {name: why for name, why in kept.items() if _exists(backbone, name)},
                         quantizer_name(device))


def _exists(module: nn.Module, name: str) -> bool:
    try:
        module.get_submodule(name)
    except AttributeError:
        return False
    return True


__all__ = ["FP8", "FP8_MIN_CAPABILITY", "Fp8Conversion", "check_fp8_device", "convert_to_fp8", "weight_read_linears"]
