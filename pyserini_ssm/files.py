"""Small file helpers: gzip-transparent reading and all-or-nothing writing."""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator

from pyserini_ssm.errors import UserError


def open_text(path: str | os.PathLike) -> IO[str]:
    """Open a text file for reading, gunzipping when the name ends in .gz. Missing files are a UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"file not found: {path}")
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return open(path, encoding="utf-8")


def check_output_path(path: str | os.PathLike) -> Path:
    """Fail early, before any work, when an output file cannot be created where the user asked."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise UserError(f"output folder does not exist: {parent} (create it first, or choose another --output)")
    if path.is_dir():
        raise UserError(f"output path is a folder: {path} (give a file name)")
    return path


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
    """Write to a temporary file beside `path` and rename it into place only if the block completes.

    A crash or an error midway leaves no half-written file behind (and an older complete file untouched).
    """
    path = check_output_path(path)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    try:
        with os.fdopen(descriptor, mode, encoding=None if "b" in mode else "utf-8") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
