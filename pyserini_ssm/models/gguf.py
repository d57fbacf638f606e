"""GGUF checkpoints (llama.cpp's single-file format) as decoder backbones.

`--model path/to/model.gguf`, or a folder holding exactly one `.gguf` file (and no `config.json`), loads through
transformers' GGUF support: the config, the weights (dequantised to the requested dtype: Q4_1, Q8_0, F16 ... become
ordinary float tensors) and the tokenizer all come from the file. The model is a decoder (causal LM) and gets the
decoder defaults of every folder without a registry entry: the `ssm` template (document first, query last, EOS) and
last-token pooling, a fresh untrained score head.

Reading GGUF needs the `gguf` package (`pip install 'pyserini-ssm[gguf]'`). Saving a fine-tuned model writes our
reranker folder (safetensors), never GGUF: a model only leaves this format.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pyserini_ssm.errors import UserError, first_line

GGUF_SUFFIX = ".gguf"
GGUF_MAGIC = b"GGUF"
INSTALL_HINT = "pip install 'pyserini-ssm[gguf]' (or pip install gguf)"


def find_gguf_file(path: str | os.PathLike) -> Path | None:
    """The GGUF file that `path` names: the file itself, or the one `.gguf` in a folder without `config.json`.

    None when `path` is neither; a folder with several `.gguf` files is a UserError (which one is meant?).
    """
    path = Path(path)
    if path.is_file():
        return path if path.suffix.lower() == GGUF_SUFFIX else None
    if not path.is_dir() or (path / "config.json").is_file():
        return None
    found = sorted(item for item in path.iterdir() if item.is_file() and item.suffix.lower() == GGUF_SUFFIX)
    if len(found) > 1:
        raise UserError(f"{path} holds {len(found)} GGUF files ({', '.join(item.name for item in found[:4])}); "
                        f"pass the one you mean: --model {found[0]}")
    return found[0] if found else None


def require_gguf_package() -> Any:
    """The `gguf` module, or a UserError saying how to install it."""
    try:
        import gguf
    except ImportError:
        raise UserError(f"reading a GGUF checkpoint needs the gguf package, which is not installed: "
                        f"{INSTALL_HINT}") from None
    return gguf


def check_gguf_file(path: Path) -> None:
    """A UserError unless `path` is a complete GGUF file (magic, header, metadata and every tensor inside the file).

    Done before transformers reads it, whose errors on a truncated or foreign file are tracebacks from numpy.
    """
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic != GGUF_MAGIC:
        raise UserError(f"{path} is not a GGUF file (it starts with {magic!r}, not b'GGUF'); pass a .gguf model "
                        f"file or a checkpoint folder")
    gguf = require_gguf_package()
    try:
        reader = gguf.GGUFReader(str(path))
        size = path.stat().st_size
        for tensor in reader.tensors:
            if int(tensor.data_offset) + int(tensor.n_bytes) > size:
                raise ValueError(f"tensor {tensor.name} runs past the end of the file")
    except UserError:
        raise
    except Exception as error:  # truncated or corrupt: struct/numpy errors, not the user's to read
        raise UserError(f"cannot read the GGUF file {path} (corrupt or truncated?): {first_line(error)}; "
                        f"download it again") from None


def load_gguf(path: Path, dtype: Any = None, tokenizer: Any = None) -> Any:
    """A `LoadedCheckpoint` of a GGUF decoder: backbone (`AutoModel`, SDPA), its tokenizer, no trained head."""
    from pyserini_ssm.models.checkpoints import LoadedCheckpoint, load_tokenizer, spec_for_config
    from pyserini_ssm.models.families import family_adapter

    check_gguf_file(path)
    from transformers import AutoConfig

    folder, name = str(path.parent), path.name
    try:
        config = AutoConfig.from_pretrained(folder, gguf_file=name)
    except (ValueError, KeyError, OSError) as error:  # an architecture transformers cannot convert from GGUF
        raise UserError(f"cannot load {path} through transformers' GGUF support: {first_line(error)}") from None
    spec = spec_for_config(config, path.stem, str(path), str(path))
    if not family_adapter(spec.family).reads_gguf:
        raise UserError(f"{path} holds a {config.model_type} model; GGUF checkpoints are read as decoder (causal "
                        f"LM) backbones only")
    if tokenizer is None:
        tokenizer = load_tokenizer(path)
    backbone = dense_backbone(folder, name, dtype)
    return LoadedCheckpoint(spec, backbone, tokenizer, None, False, "gguf", str(path))


def dense_backbone(folder: str, name: str, dtype: Any = None) -> Any:
    """`AutoModel` (SDPA attention) of GGUF file `name` in `folder`, every weight dequantised to a float tensor.

    Newer transformers can keep GGUF blocks packed behind a quantizer (for inference kernels); we train and save
    these models, so the weights are always unpacked and the quantizer is removed: the result is an ordinary
    dense model that `save_pretrained` writes as safetensors.
    """
    from transformers import AutoModel

    from pyserini_ssm.models.dtypes import torch_dtype

    kwargs: dict[str, Any] = {"gguf_file": name, "attn_implementation": "sdpa"}
    if dtype is not None:
        kwargs["dtype"] = torch_dtype(dtype)
    try:
        from transformers import GgufConfig  # transformers >= 5.2x: packed GGUF blocks unless told to dequantise

        kwargs["quantization_config"] = GgufConfig(dequantize=True)
    except ImportError:  # older transformers always dequantise GGUF weights at load time
        pass
    model = AutoModel.from_pretrained(folder, **kwargs)
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        tensors = [*model.parameters(), *model.buffers()]
        if any(not tensor.is_floating_point() for tensor in tensors if tensor.numel() > 1):
            model = model.dequantize()
        else:
            quantizer.remove_quantization_config(model)
    return model
