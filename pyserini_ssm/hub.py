"""Offline as a first-class mode: know whether the Hugging Face Hub can be reached before anything calls it.

Compute nodes of many clusters have no internet. Without this, a model missing from the cache costs ~50 s of
huggingface_hub retries (and ~45 lines of warnings) before its error. Here, before any hub call:

- `hub_offline()`: `HF_HUB_OFFLINE` (or `TRANSFORMERS_OFFLINE`) set, or a TCP connection to the hub's host failing
  within `CONNECT_TIMEOUT_S` (checked once per process). When the hub is unreachable, huggingface_hub is switched
  to offline mode too, so that a cached model loads without a single network attempt.
- `cached_snapshot(repo_id)`: the folder of a repository in the HF cache (`HF_HUB_CACHE`, else `$HF_HOME/hub`,
  else `~/.cache/huggingface/hub`), or None; read from the cache layout, no hub call.
- `require_available(repo_id, ...)`: offline and not cached is one `UserError` line naming the model, the cache
  looked in and the fix (`huggingface-cli download <id>` on a login node, or a local folder).

Stdlib only: `models/` may import it, and `--help` stays fast.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from urllib.parse import urlparse

from pyserini_ssm.errors import UserError

DEFAULT_ENDPOINT = "https://huggingface.co"
CONNECT_TIMEOUT_S = 2.0
_TRUE = {"1", "on", "yes", "true"}
_reachable: dict[str, bool] = {}  # host -> whether a TCP connection succeeded (once per process)


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUE


def hub_cache_dir() -> Path:
    """Where huggingface_hub keeps downloaded repositories (the same rules as huggingface_hub.constants)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.path.expanduser(os.environ["HF_HUB_CACHE"]))
    if os.environ.get("HF_HOME"):
        return Path(os.path.expanduser(os.environ["HF_HOME"])) / "hub"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "huggingface" / "hub"


def host_reachable(url: str, timeout: float = CONNECT_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the URL's host opens within `timeout` seconds (cached per host)."""
    parsed = urlparse(url)
    host = parsed.hostname or ""
    port = parsed.port or (80 if parsed.scheme == "http" else 443)
    key = f"{host}:{port}"
    if key not in _reachable:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                _reachable[key] = True
        except OSError:
            _reachable[key] = False
    return _reachable[key]


def set_hub_offline() -> None:
    """Make every later huggingface_hub/transformers call use the cache only (no request, no retry)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        constants.HF_HUB_OFFLINE = True


_offline_reason: list[str] = []  # why the hub is off, once known (the environment, or no connection)


def hub_offline() -> bool:
    """True when the hub must not be called: offline by the environment, or unreachable (then switched off)."""
    if _offline_reason:
        return True
    constants = sys.modules.get("huggingface_hub.constants")
    if (_env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE")
            or (constants is not None and getattr(constants, "HF_HUB_OFFLINE", False) is True)):
        _offline_reason.append("HF_HUB_OFFLINE is set")
    else:
        endpoint = os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT
        if host_reachable(endpoint):
            return False
        _offline_reason.append(f"the Hugging Face Hub ({endpoint}) cannot be reached")
    set_hub_offline()
    return True


def repo_cache_folder(repo_id: str) -> Path:
    return hub_cache_dir() / ("models--" + repo_id.replace("/", "--"))


def cached_snapshot(repo_id: str, revision: str = "main") -> Path | None:
    """The cached snapshot folder of a model repository (the one `refs/<revision>` names, else the only one)."""
    folder = repo_cache_folder(repo_id)
    snapshots = folder / "snapshots"
    ref = folder / "refs" / revision
    if ref.is_file():
        candidate = snapshots / ref.read_text().strip()
        if candidate.is_dir() and any(candidate.iterdir()):
            return candidate
    found = sorted(p for p in snapshots.iterdir() if p.is_dir() and any(p.iterdir())) if snapshots.is_dir() else []
    return found[0] if len(found) == 1 else None


def offline_message(repo_id: str, what: str) -> str:
    reason = _offline_reason[0] if _offline_reason else "the Hugging Face Hub cannot be reached"
    return (f"{what} {repo_id!r} is not in the Hugging Face cache {hub_cache_dir()} and {reason}: on a machine with "
            f"internet (a login node) run `huggingface-cli download {repo_id}` with the same HF_HOME, or pass a "
            f"local folder instead")


def require_available(repo_id: str, what: str = "model") -> Path | None:
    """The cached snapshot of `repo_id` (None when the hub is reachable and it is not cached: it will download);
    offline and not cached: UserError."""
    snapshot = cached_snapshot(repo_id)
    if snapshot is None and hub_offline():
        raise UserError(offline_message(repo_id, what))
    return snapshot


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "tokenizer.model", "vocab.json")


def require_registry_model(checkpoint: str, tokenizer: str, name: str) -> None:
    """Offline: the checkpoint of a registry model, and its tokenizer when the checkpoint holds none, are cached."""
    snapshot = require_available(checkpoint, f"model {name}: checkpoint")
    if snapshot is not None and any((snapshot / file).is_file() for file in TOKENIZER_FILES):
        return
    if tokenizer and tokenizer != checkpoint:
        require_available(tokenizer, f"model {name}: tokenizer")
