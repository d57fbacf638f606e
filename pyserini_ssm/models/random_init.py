"""Randomly initialised rerankers of any registry architecture, in memory or written in our format.

`build_random_reranker` builds one in memory (benchmarks build full-size models this way, on the GPU);
`init_checkpoint` writes one to a folder (what `python -m pyserini_ssm.init` runs). `tiny`: 2 layers, small width, the
vocabulary sized to the tokenizer; `full`: the real architecture (vocabulary grown if the tokenizer is bigger).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from pyserini_ssm.errors import UserError

SCALES = ("tiny", "full")


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def sized_architecture(spec: Any, scale: str, tokenizer_size: int) -> dict[str, Any]:
    """The architecture to build: the registry's (`full`) or its tiny override, with a vocabulary that holds every
    token of the tokenizer (tiny: exactly the tokenizer, rounded up to a multiple of 8)."""
    from pyserini_ssm.models.registry import tiny_architecture

    if scale not in SCALES:
        raise UserError(f"unknown scale {scale!r} (use tiny or full)")
    architecture = tiny_architecture(spec) if scale == "tiny" else dict(spec.architecture)
    vocab_size = int(architecture.get("vocab_size", 0))
    if scale == "tiny":
        architecture["vocab_size"] = _round_up(tokenizer_size, 8)
    elif tokenizer_size > vocab_size:
        architecture["vocab_size"] = _round_up(tokenizer_size, 8)
    return architecture


def _align_special_tokens(architecture: dict[str, Any], tokenizer: Any) -> None:
    """Point the config's pad/bos/eos ids at the tokenizer's (a tiny model may pair an architecture with another
    family's tokenizer); RoBERTa-style position ids depend on the pad id being the tokenizer's."""
    for key, token_id in (("pad_token_id", tokenizer.pad_token_id), ("bos_token_id", tokenizer.bos_token_id),
                          ("eos_token_id", tokenizer.eos_token_id)):
        if key in architecture and token_id is not None:
            architecture[key] = int(token_id)
    if "bos_token_id" in architecture and tokenizer.bos_token_id is None and tokenizer.eos_token_id is not None:
        # A tokenizer without BOS (e.g. a synthetic one): keep the config's BOS id inside the vocabulary.
        architecture["bos_token_id"] = int(tokenizer.eos_token_id)


def build_random_backbone(spec: Any, architecture: dict[str, Any], dtype: Any = None, device: Any = None) -> Any:
    """A randomly initialised Hugging Face backbone (`MambaModel`, `Mamba2Model` or `AutoModel`): the family
    adapter's `build_random_backbone`."""
    from pyserini_ssm.models.families import family_adapter

    return family_adapter(spec.family).build_random_backbone(architecture, dtype=dtype, device=device)


def build_random_reranker(model: Any, scale: str = "tiny", tokenizer: Any = None, *, seed: int = 0,
                          device: Any = None, dtype: Any = None, backend: str = "auto") -> Any:
    """A `Reranker` with random weights, in memory (benchmarks build full-size models this way, on the GPU).

    `model` is a registry name or a `ModelSpec` (the bench's own architectures)."""
    import torch

    from pyserini_ssm.models.checkpoints import LoadedCheckpoint
    from pyserini_ssm.models.registry import ModelSpec, get_spec
    from pyserini_ssm.models.reranker import Reranker, resolve_device, resolve_precision
    from pyserini_ssm.models.templates import ensure_added_tokens, get_template

    spec = model if isinstance(model, ModelSpec) else get_spec(model)
    if tokenizer is None or isinstance(tokenizer, (str, Path)):
        tokenizer = _tokenizer_or_hint(tokenizer, spec)
    ensure_added_tokens(tokenizer, get_template(spec.template))
    architecture = sized_architecture(spec, scale, len(tokenizer))
    _align_special_tokens(architecture, tokenizer)
    resolved_device = resolve_device(device)
    resolved_dtype, fp8 = resolve_precision(dtype, resolved_device)  # fp8: bf16 weights, FP8 Linear layers
    torch.manual_seed(seed)
    backbone = build_random_backbone(spec, architecture, dtype=resolved_dtype, device=resolved_device)
    head = torch.nn.Linear(_hidden_size(backbone.config), 1)
    loaded = LoadedCheckpoint(replace(spec, architecture=architecture), backbone, tokenizer,
                              {"weight": head.weight.detach(), "bias": head.bias.detach()}, False, "random",
                              f"random {spec.name} ({scale})")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a random model is untrained by construction: no need to say so
        return Reranker.from_loaded(loaded, device=resolved_device, dtype=resolved_dtype, backend=backend, fp8=fp8)


def _hidden_size(config: Any) -> int:
    from pyserini_ssm.models.scoring import output_hidden_size

    return output_hidden_size(config)


def _tokenizer_or_hint(tokenizer: Any, spec: Any) -> Any:
    from pyserini_ssm.models.checkpoints import load_tokenizer

    source = tokenizer if tokenizer is not None else spec.tokenizer
    if tokenizer is None:
        from pyserini_ssm.hub import require_available

        try:  # offline and not cached: say so at once, not after a minute of hub retries
            require_available(spec.tokenizer, f"the tokenizer of {spec.name}")
        except UserError as error:
            raise UserError(f"{error}; or pass --tokenizer with a local tokenizer folder (or a .gguf file)") from None
    try:
        from pyserini_ssm.console import quiet_loading

        with quiet_loading():
            return load_tokenizer(source)
    except UserError as error:
        if tokenizer is None:
            raise UserError(f"{error}; no tokenizer can be downloaded here: pass --tokenizer with a local tokenizer "
                            f"folder (or a .gguf file)") from None
        raise


def init_checkpoint(model: str, scale: str, output: str | Path, tokenizer: Any = None, seed: int = 0) -> Path:
    """Write a random `model` at `scale` into `output` (our reranker format); returns the folder."""
    import warnings

    import torch

    from pyserini_ssm.files import check_output_folder
    from pyserini_ssm.models.checkpoints import write_reranker_dir
    from pyserini_ssm.models.registry import get_spec
    from pyserini_ssm.models.reranker import init_untrained_head
    from pyserini_ssm.models.scoring import output_hidden_size
    from pyserini_ssm.models.templates import ensure_added_tokens, get_template

    spec = get_spec(model)
    if scale not in SCALES:
        raise UserError(f"unknown scale {scale!r} (use tiny or full)")
    output = Path(output)
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise UserError(f"output {output} already exists and is not an empty folder; choose another --output")
    check_output_folder(output.parent if str(output.parent) else Path("."))  # before any tokenizer or model work
    if tokenizer is None or isinstance(tokenizer, (str, Path)):
        tokenizer = _tokenizer_or_hint(tokenizer, spec)
    ensure_added_tokens(tokenizer, get_template(spec.template))
    architecture = sized_architecture(spec, scale, len(tokenizer))
    _align_special_tokens(architecture, tokenizer)
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        backbone = build_random_backbone(spec, architecture)
    head = torch.nn.Linear(output_hidden_size(backbone.config), 1)
    init_untrained_head(head, seed)
    if output.is_dir():
        output.rmdir()  # empty: replaced atomically by the finished folder
    return write_reranker_dir(output, spec=replace(spec, architecture=architecture), backbone_hf=backbone,
                              head=head, tokenizer=tokenizer, head_trained=False,
                              extra={"init": {"scale": scale, "seed": seed}})
