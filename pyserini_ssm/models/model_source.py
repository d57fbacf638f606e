"""What a `--model` value names, decided without loading anything (stdlib only, so that `rerank` can check it
before torch is imported): `load_checkpoint` dispatches on the same answer, so the early check and the load agree.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, Union

from pyserini_ssm.errors import UserError
from pyserini_ssm.models.gguf import find_gguf_file
from pyserini_ssm.models.registry import REGISTRY, ModelSpec, get_spec

SourceKind = Literal["gguf", "folder", "registry"]


def model_source(name_or_path: str | os.PathLike) -> tuple[SourceKind, Union[Path, ModelSpec]]:
    """("gguf", file) for a .gguf file or a folder holding one (and no config.json), ("folder", path) for a
    checkpoint folder, ("registry", spec) for a registry name; a UserError for a plain file, a missing folder, or an
    unknown name (with the close matches)."""
    text = str(name_or_path)
    path = Path(text).expanduser()
    gguf_path = find_gguf_file(path)
    if gguf_path is not None:
        return "gguf", gguf_path
    if path.is_dir():
        return "folder", path
    if path.exists():
        raise UserError(f"{path} is a file; --model takes a registry name, a checkpoint folder or a .gguf file")
    if text in REGISTRY:
        return "registry", REGISTRY[text]
    if os.sep in text and (text.startswith((".", "~", os.sep)) or text.count("/") > 1):
        raise UserError(f"checkpoint folder not found: {path}")
    get_spec(text)  # raises with the close matches
    raise AssertionError("unreachable")
