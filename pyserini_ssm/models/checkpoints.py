"""Checkpoint formats: what a `--model` value is, and loading/saving each kind.

`load_checkpoint(name_or_path)` recognises, in this order:

1. our reranker directory: `reranker.json` + backbone in Hugging Face format (`config.json`, `model.safetensors`)
   + `head.safetensors` + tokenizer files (written by `save_reranker`, `init` and training);
2. the state-spaces format: `config.json` with `d_model`/`n_layer`/`ssm_cfg` + `pytorch_model.bin` with mamba_ssm
   parameter names (converted through `models.mamba`);
3. RankMamba's released fine-tuned checkpoints: `pytorch_model.bin` of their `SequenceRegressionModel`
   (`base_model.*` over a Hugging Face backbone, `regressor.classifier.{weight,bias}`);
4. a Hugging Face folder: `config.json` + weights (`MambaForCausalLM`, `Mamba2ForCausalLM`, any `AutoModel`);
5. a registry name (`mamba2-780m`): its Hugging Face checkpoint, downloaded on first use;
6. a GGUF file, or a folder holding one `.gguf` and no `config.json` (`models.gguf`): a decoder backbone.

The family of a folder comes from its own `config.json` (`model_type`), never from its name.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pyserini_ssm.errors import UserError, first_line
from pyserini_ssm.files import check_output_folder, make_temporary_folder, writing
from pyserini_ssm.models.dtypes import torch_dtype
# family_of_config is re-exported: callers ask this module what family a checkpoint's config is.
from pyserini_ssm.models.families import family_adapter, family_of_config, family_of_state_spaces  # noqa: F401
from pyserini_ssm.models.registry import REGISTRY, ModelSpec

logger = logging.getLogger(__name__)

FORMAT_NAME = "pyserini_ssm-reranker"
FORMAT_VERSION = 1
RERANKER_FILE = "reranker.json"
HEAD_FILE = "head.safetensors"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "spm.model",
                   "tokenizer.model", "sentencepiece.bpe.model")
HF_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                   "pytorch_model.bin.index.json")
FORMATS = """a registry name (e.g. mamba2-780m, minilm-l6), or a folder holding one of: reranker.json + config.json \
+ model.safetensors + head.safetensors (pyserini_ssm); config.json with d_model + pytorch_model.bin (state-spaces); \
pytorch_model.bin with base_model.* and regressor.* weights (RankMamba); config.json + model.safetensors or \
pytorch_model.bin (Hugging Face); or a .gguf file (a decoder, read with the gguf package)"""


@dataclass
class LoadedCheckpoint:
    """Everything needed to build a `ScoringModel` and a `PairEncoder`.

    `backbone` is a Hugging Face model: `MambaForCausalLM`/`Mamba2ForCausalLM` for the Mamba families (turned into
    the chosen backend by `models.mamba.build_mamba_backbone`), an `AutoModel` otherwise. `head_state` holds the
    head's `weight` (1, D) and `bias` (1,) when the checkpoint has a head.
    """

    spec: ModelSpec
    backbone: Any
    tokenizer: Any
    head_state: dict[str, Any] | None
    head_trained: bool
    source_format: str
    path: str


# ---------------------------------------------------------------------------------------------------------------
# Families and specs from a checkpoint's own config


def spec_for_config(config: Any, name: str, checkpoint: str, tokenizer: str) -> ModelSpec:
    """A ModelSpec for a folder that carries no registry entry: its family adapter's default template, pooling and
    max length."""
    adapter = family_adapter(family_of_config(config))
    architecture = config.to_dict()
    return ModelSpec(name=name, family=adapter.name, checkpoint=checkpoint, tokenizer=tokenizer,
                     template=adapter.default_template(config), pooling=adapter.default_pooling,
                     max_length=adapter.default_max_length(config), architecture=_jsonable(architecture))


def _jsonable(data: Any) -> Any:
    return json.loads(json.dumps(data, default=str))


def hf_config_for_spec(spec: ModelSpec, architecture: dict[str, Any] | None = None) -> Any:
    """The Hugging Face config of a registry architecture (no download)."""
    architecture = spec.architecture if architecture is None else architecture
    return family_adapter(spec.family).hf_config(architecture, spec.name)


# ---------------------------------------------------------------------------------------------------------------
# Tokenizers


def _has_tokenizer(directory: Path) -> bool:
    return any((directory / name).is_file() for name in TOKENIZER_FILES)


def load_tokenizer(source: str | os.PathLike, gguf_file: str | None = None) -> Any:
    """A fast tokenizer from a folder, a Hugging Face id (downloaded) or a GGUF file."""
    from transformers import AutoTokenizer

    source = str(source)
    path = Path(source)
    if path.is_file() and path.suffix == ".gguf":
        gguf_file, source = path.name, str(path.parent)
    try:
        if gguf_file:
            return AutoTokenizer.from_pretrained(source, gguf_file=gguf_file)
        return AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as error:
        if path.exists():
            raise UserError(f"cannot load a tokenizer from {source}: {str(error).splitlines()[0]}") from None
        raise UserError(f"cannot load the tokenizer {source!r} (no local folder of that name, and it could not be "
                        f"downloaded: {str(error).splitlines()[0]}); point at a local tokenizer folder") from None


def pad_token_id(tokenizer: Any) -> int:
    for token_id in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if token_id is not None:
            return int(token_id)
    return 0


# ---------------------------------------------------------------------------------------------------------------
# Loading


def check_safetensors(path: Path) -> None:
    """A UserError naming `path` when it is not a complete safetensors file (truncated by a full disk or an
    interrupted copy): the header (8-byte length, then JSON) must parse and every tensor's bytes must be there.
    Cheap: reads the header only, before a load would fail with safetensors' own opaque error."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as handle:
            header_length = int.from_bytes(handle.read(8), "little")
            if size < 8 or header_length > size - 8:
                raise ValueError("the header is cut off")
            header = json.loads(handle.read(header_length))
        ends = [entry["data_offsets"][1] for name, entry in header.items() if name != "__metadata__"]
    except (ValueError, KeyError, TypeError, IndexError) as error:
        raise UserError(f"{path} is not a valid safetensors file ({error}); copy it again or re-save the "
                        "model") from None
    needed = 8 + header_length + max(ends, default=0)
    if size < needed:
        raise UserError(f"{path} is truncated: {size} bytes, its header needs {needed}; copy it again (or free disk "
                        "space and re-save the model)")


def _check_folder_files(directory: Path) -> None:
    """config.json parses and the single-file safetensors weights are complete, checked before the tokenizer or the
    model is loaded (whose errors would name the wrong file)."""
    config = directory / "config.json"
    if config.is_file():
        try:
            json.loads(config.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise UserError(f"{config} is not valid JSON ({error}); restore it from the original checkpoint") from None
    for name in ("model.safetensors", HEAD_FILE):
        if (directory / name).is_file():
            check_safetensors(directory / name)


def _load_head(path: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    head = load_file(str(path))
    if set(head) != {"weight", "bias"}:
        raise UserError(f"{path} must hold exactly 'weight' and 'bias', found {sorted(head)}")
    return head


def _require(directory: Path, *names: str, what: str) -> None:
    missing = [name for name in names if not (directory / name).is_file()]
    if missing:
        raise UserError(f"{what} folder {directory} is missing {', '.join(missing)}")


def _first_weights(directory: Path) -> Path | None:
    for name in HF_WEIGHT_FILES:
        if (directory / name).is_file():
            return directory / name
    return None


def load_ours(directory: Path, dtype: Any = None, tokenizer: Any = None) -> LoadedCheckpoint:
    _require(directory, RERANKER_FILE, "config.json", what="reranker")
    _check_folder_files(directory)
    try:
        meta = json.loads((directory / RERANKER_FILE).read_text())
    except json.JSONDecodeError as error:
        raise UserError(f"{directory / RERANKER_FILE} is not valid JSON: {error}") from None
    if meta.get("format") != FORMAT_NAME:
        raise UserError(f"{directory / RERANKER_FILE} is not a {FORMAT_NAME} file (format={meta.get('format')!r})")
    if int(meta.get("version", 0)) > FORMAT_VERSION:
        raise UserError(f"{directory} was written by a newer pyserini_ssm (format version {meta['version']}); "
                        f"upgrade pyserini_ssm")
    if _first_weights(directory) is None:
        raise UserError(f"reranker folder {directory} is missing model.safetensors")
    spec = ModelSpec.from_dict(meta["spec"])
    head_trained = bool(meta.get("head_trained", False))
    head_state = _load_head(directory / HEAD_FILE) if (directory / HEAD_FILE).is_file() else None
    if head_state is None and head_trained:
        raise UserError(f"reranker folder {directory} is missing {HEAD_FILE}")
    if tokenizer is None:
        if not _has_tokenizer(directory):
            raise UserError(f"reranker folder {directory} is missing its tokenizer files (tokenizer.json)")
        tokenizer = load_tokenizer(directory)
    backbone = family_adapter(spec.family).load_backbone(str(directory), dtype)
    return LoadedCheckpoint(spec, backbone, tokenizer, head_state, head_trained and head_state is not None,
                            "pyserini_ssm", str(directory))


def _tokenizer_for_folder(directory: Path, fallback_id: str, tokenizer: Any) -> Any:
    if tokenizer is not None:
        return tokenizer
    if _has_tokenizer(directory):
        return load_tokenizer(directory)
    try:
        return load_tokenizer(fallback_id)
    except UserError:
        raise UserError(f"checkpoint folder {directory} has no tokenizer files (tokenizer.json) and the tokenizer "
                        f"{fallback_id!r} could not be downloaded; copy the tokenizer files into the folder") from None


def load_state_spaces(directory: Path, config: dict[str, Any], dtype: Any = None,
                      tokenizer: Any = None) -> LoadedCheckpoint:
    _require(directory, "config.json", "pytorch_model.bin", what="state-spaces checkpoint")
    from pyserini_ssm.models.mamba import load_state_spaces_checkpoint

    import torch

    backbone = load_state_spaces_checkpoint(str(directory), dtype=torch_dtype(dtype) or torch.float32)
    adapter = family_adapter(family_of_state_spaces(config))
    spec = _registry_match(adapter.name, config) or ModelSpec(
        name=directory.name, family=adapter.name, checkpoint=str(directory),
        tokenizer=adapter.fallback_tokenizer(backbone.config), template=adapter.default_template(backbone.config),
        pooling=adapter.default_pooling, max_length=adapter.default_max_length(backbone.config),
        architecture=dict(config))
    tokenizer = _tokenizer_for_folder(directory, spec.tokenizer, tokenizer)
    return LoadedCheckpoint(spec, backbone, tokenizer, None, False, "state-spaces", str(directory))


def _registry_match(family: str, config: dict[str, Any]) -> ModelSpec | None:
    """The registry entry with exactly this state-spaces shape, renamed nothing: used for its tokenizer/template."""
    for spec in REGISTRY.values():
        if spec.family == family and all(spec.architecture.get(key) == config.get(key)
                                         for key in ("d_model", "n_layer")):
            return replace(spec, architecture=dict(config))
    return None


def _load_torch_state(path: Path) -> dict[str, Any]:
    import torch

    try:
        return torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # a truncated or foreign file: say which one
        raise UserError(f"cannot read {path}: {error}") from None


def is_rankmamba_state(state: dict[str, Any]) -> bool:
    return "regressor.classifier.weight" in state and any(key.startswith("base_model.") for key in state)


def load_rankmamba(directory: Path, state: dict[str, Any], dtype: Any = None, tokenizer: Any = None) -> LoadedCheckpoint:
    """RankMamba's `SequenceRegressionModel` state dict over a Hugging Face backbone.

    The backbone's config comes from `config.json` in the folder when present; a Mamba-1 backbone without one is
    recognised from its weight shapes (RankMamba's Mamba rerankers are state-spaces/mamba-*-hf fine-tunes).
    """
    import torch

    extra = sorted({key.split(".")[1] for key in state if key.startswith("regressor.")} - {"classifier"})
    if extra:
        raise UserError(f"{directory}: RankMamba head with {', '.join(extra)} layers (DistilBERT head) is not supported")
    backbone_state = {key[len("base_model."):]: value for key, value in state.items() if key.startswith("base_model.")}
    config = _rankmamba_config(directory, backbone_state)
    adapter = family_adapter(family_of_config(config))
    embedding_key = next((key for key in ("embeddings.weight", "embeddings.word_embeddings.weight", "embed_in.weight",
                                          "embed_tokens.weight", "decoder.embed_tokens.weight", "wte.weight")
                          if key in backbone_state), None)
    if embedding_key is not None:
        config.vocab_size = int(backbone_state[embedding_key].shape[0])  # encoders grew by [passage], [query]
    backbone = target = adapter.backbone_from_config(config)
    expected = set(target.state_dict())
    unexpected = sorted(set(backbone_state) - expected)
    missing = sorted(expected - set(backbone_state))
    # Position-id buffers and the unused BERT pooler may be absent or present depending on the transformers version.
    tolerable = ("position_ids", "pooler.", "rotary_emb", "token_type_ids")
    missing = [key for key in missing if not any(part in key for part in tolerable)]
    unexpected = [key for key in unexpected if not any(part in key for part in tolerable)]
    if missing or unexpected:
        raise UserError(f"{directory / 'pytorch_model.bin'} does not match a {config.model_type} backbone: "
                        f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    target.load_state_dict(backbone_state, strict=False)
    if dtype is not None:
        backbone = backbone.to(torch_dtype(dtype))
    weight = state["regressor.classifier.weight"].float().reshape(1, -1)
    bias = state["regressor.classifier.bias"].float().reshape(1) if "regressor.classifier.bias" in state else \
        torch.zeros(1)
    head_state = {"weight": weight.contiguous(), "bias": bias.contiguous()}
    checkpoint_id = str(directory)
    base = spec_for_config(config, directory.name, checkpoint_id, checkpoint_id)
    spec = replace(base, template=adapter.rankmamba_template, max_length=adapter.rankmamba_max_length)
    tokenizer = _tokenizer_for_folder(directory, adapter.fallback_tokenizer(config), tokenizer)
    return LoadedCheckpoint(spec, backbone, tokenizer, head_state, True, "rankmamba", str(directory))


def _rankmamba_config(directory: Path, backbone_state: dict[str, Any]) -> Any:
    if (directory / "config.json").is_file():
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(str(directory))
    if "embeddings.weight" in backbone_state and "layers.0.mixer.A_log" in backbone_state:
        from transformers import MambaConfig

        vocab_size, d_model = backbone_state["embeddings.weight"].shape
        n_layer = 1 + max(int(key.split(".")[1]) for key in backbone_state if key.startswith("layers."))
        a_log = backbone_state["layers.0.mixer.A_log"]
        if a_log.dim() == 2:  # Mamba-1: (d_inner, d_state)
            d_inner, d_state = a_log.shape
            conv_kernel = backbone_state["layers.0.mixer.conv1d.weight"].shape[-1]
            return MambaConfig(vocab_size=int(vocab_size), hidden_size=int(d_model), num_hidden_layers=n_layer,
                               state_size=int(d_state), expand=int(d_inner) // int(d_model),
                               conv_kernel=int(conv_kernel), time_step_rank=int(
                                   backbone_state["layers.0.mixer.dt_proj.weight"].shape[1]))
    raise UserError(f"RankMamba checkpoint folder {directory} is missing config.json: copy the config.json of the "
                    f"Hugging Face backbone it was fine-tuned from (e.g. bert-base-uncased) into the folder")


def load_hf_folder(directory: Path, config_data: dict[str, Any], dtype: Any = None,
                   tokenizer: Any = None) -> LoadedCheckpoint:
    from transformers import AutoConfig

    if _first_weights(directory) is None:
        raise UserError(f"checkpoint folder {directory} is missing model.safetensors (or pytorch_model.bin)")
    _check_folder_files(directory)
    config = AutoConfig.from_pretrained(str(directory))
    spec = spec_for_config(config, directory.name, str(directory), str(directory))
    tokenizer = _tokenizer_for_folder(directory, getattr(config, "_name_or_path", "") or str(directory), tokenizer)
    backbone = family_adapter(spec.family).load_backbone(str(directory), dtype)
    return LoadedCheckpoint(spec, backbone, tokenizer, None, False, "huggingface", str(directory))


def load_folder(directory: Path, dtype: Any = None, tokenizer: Any = None) -> LoadedCheckpoint:
    if (directory / RERANKER_FILE).is_file():
        return load_ours(directory, dtype, tokenizer)
    config_data: dict[str, Any] | None = None
    if (directory / "config.json").is_file():
        try:
            config_data = json.loads((directory / "config.json").read_text())
        except json.JSONDecodeError as error:
            raise UserError(f"{directory / 'config.json'} is not valid JSON: {error}") from None
        if "d_model" in config_data and "n_layer" in config_data and "model_type" not in config_data:
            return load_state_spaces(directory, config_data, dtype, tokenizer)
    if (directory / "pytorch_model.bin").is_file() and (config_data is None or
                                                       not (directory / "model.safetensors").is_file()):
        state = _load_torch_state(directory / "pytorch_model.bin")
        if is_rankmamba_state(state):
            return load_rankmamba(directory, state, dtype, tokenizer)
        del state
    if config_data is None:
        present = sorted(path.name for path in directory.iterdir())[:10]
        raise UserError(f"checkpoint folder {directory} is missing config.json (found: {', '.join(present) or 'nothing'}"
                        f"); expected {FORMATS}")
    if "model_type" not in config_data:
        raise UserError(f"{directory / 'config.json'} has neither model_type (Hugging Face) nor d_model/n_layer "
                        f"(state-spaces)")
    return load_hf_folder(directory, config_data, dtype, tokenizer)


def load_registry_checkpoint(spec: ModelSpec, dtype: Any = None, tokenizer: Any = None) -> LoadedCheckpoint:
    """A registry model's pretrained backbone from the Hugging Face Hub (cached after the first download)."""
    from pyserini_ssm.hub import require_registry_model

    # Offline (HF_HUB_OFFLINE, or the hub unreachable) and not cached: one line at once, no minute of retries.
    require_registry_model(spec.checkpoint, spec.tokenizer if tokenizer is None else "", spec.name)
    try:
        backbone, tokenizer = family_adapter(spec.family).load_registry_backbone(spec, dtype, tokenizer)
        if tokenizer is None:
            tokenizer = load_tokenizer(spec.tokenizer)
    except UserError:
        raise
    except Exception as error:  # network, gated repo, missing file: all mean the weights are not here
        raise UserError(
            f"cannot download the weights of {spec.name} ({spec.checkpoint}): {first_line(error)}. Without internet, "
            f"download the checkpoint elsewhere and pass its folder to --model, or write random weights with "
            f"`python -m pyserini_ssm.init --model {spec.name} --scale full --output DIR --tokenizer TOKENIZER`"
        ) from None
    return LoadedCheckpoint(spec, backbone, tokenizer, None, False, "registry", spec.checkpoint)


def load_checkpoint(name_or_path: str | os.PathLike, dtype: Any = None, tokenizer: Any = None) -> LoadedCheckpoint:
    """Load whatever `name_or_path` names (see the module docstring); errors name the problem and the fix."""
    from pyserini_ssm.models.model_source import model_source

    kind, target = model_source(name_or_path)
    if kind == "gguf":
        from pyserini_ssm.models.gguf import load_gguf

        return load_gguf(target, dtype, tokenizer)
    if kind == "folder":
        return load_folder(target, dtype, tokenizer)
    return load_registry_checkpoint(target, dtype, tokenizer)


# ---------------------------------------------------------------------------------------------------------------
# Saving (our directory format)


def write_reranker_dir(directory: str | os.PathLike, *, spec: ModelSpec, backbone_hf: Any, head: Any, tokenizer: Any,
                       head_trained: bool, extra: dict[str, Any] | None = None) -> Path:
    """Write our reranker folder atomically: into a temporary sibling folder, then renamed into place.

    `backbone_hf` is a Hugging Face model (saved with `save_pretrained`); `head` an `nn.Linear(D, 1)`.
    An existing folder at `directory` is replaced only once the new one is complete.
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    parent = directory.parent if str(directory.parent) else Path(".")
    if not parent.is_dir():
        raise UserError(f"output folder's parent does not exist: {parent}")
    if directory.exists() and not directory.is_dir():
        raise UserError(f"output path is a file, not a folder: {directory}")
    check_output_folder(parent)
    staging = make_temporary_folder(parent, prefix=f".{directory.name}.tmp-")  # the umask's mode, not mkdtemp's 0700
    try:
        with writing(directory):  # a full disk or a file-size limit: one line, and the staging folder removed
            backbone_hf.save_pretrained(str(staging), safe_serialization=True)
            tokenizer.save_pretrained(str(staging))
            save_file({"weight": head.weight.detach().float().cpu().contiguous(),
                       "bias": head.bias.detach().float().cpu().contiguous()}, str(staging / HEAD_FILE))
            meta = {
                "format": FORMAT_NAME,
                "version": FORMAT_VERSION,
                "spec": spec.to_dict(),
                "template": spec.template,
                "pooling": spec.pooling,
                "max_length": spec.max_length,
                "head_trained": bool(head_trained),
            }
            if extra:
                meta.update(_jsonable(extra))
            (staging / RERANKER_FILE).write_text(json.dumps(meta, indent=2) + "\n")
            if directory.exists():
                retired = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".old", dir=parent))
                os.replace(directory, retired / "previous")
                os.replace(staging, directory)
                shutil.rmtree(retired, ignore_errors=True)
            else:
                os.replace(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return directory
