"""What a command shows the user: warnings as one log line (no source line), quiet third-party loaders.

- `routed_warnings()`: Python warnings go through `logging` as `warning: <message>`, without the line of our source
  code that `warnings.showwarning` prints under them (`return cls.from_loaded(...`).
- `quiet_loading()`: while a model loads, no huggingface_hub/transformers warnings or retry messages, and no
  "Loading weights" progress bars.
- `silence_truncation_warning()`: transformers warns "Token indices sequence length is longer than the specified
  maximum sequence length" when a document is tokenized whole; the pair encoder truncates it to the template's
  budget right after, on purpose, so the warning is dropped.

Stdlib only (transformers is touched only when it is already imported or a model is being loaded).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from typing import Iterator

_THIRD_PARTY_LOADERS = ("huggingface_hub", "transformers", "sentence_transformers", "filelock", "urllib3")
_TRUNCATION_PREFIX = "Token indices sequence length is longer than the specified maximum sequence length"
warnings_logger = logging.getLogger("py.warnings")


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ARG001
    warnings_logger.warning("warning: %s", message)


@contextlib.contextmanager
def routed_warnings() -> Iterator[None]:
    """Inside the block, Python warnings become one logged line each (`warning: ...`), no file name or source
    line; the previous `warnings.showwarning` is restored after it."""
    previous = warnings.showwarning
    warnings.showwarning = _show_warning
    try:
        yield
    finally:
        if warnings.showwarning is _show_warning:
            warnings.showwarning = previous


class _DropTruncationWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_TRUNCATION_PREFIX)


_truncation_filter = _DropTruncationWarning()


def silence_truncation_warning() -> None:
    """Drop transformers' "sequence length > maximum" warning (we truncate to the template's budget on purpose)."""
    for name in ("transformers.tokenization_utils_base", "transformers.tokenization_utils_fast",
                 "transformers.tokenization_python", "transformers.tokenization_utils_tokenizers"):
        logger = logging.getLogger(name)
        if _truncation_filter not in logger.filters:
            logger.addFilter(_truncation_filter)


@contextlib.contextmanager
def quiet_loading(bars: bool = False) -> Iterator[None]:
    """No hub/transformers warnings or retry messages inside the block, and no progress bars ("Loading weights")
    unless `bars` (a download is coming: its progress is worth showing)."""
    loggers = [logging.getLogger(name) for name in _THIRD_PARTY_LOADERS]
    levels = [logger.level for logger in loggers]
    previous_bars = os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS")
    if not bars:
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    transformers_logging = None
    with contextlib.suppress(ImportError):
        from transformers.utils import logging as transformers_logging  # type: ignore[no-redef]
    verbosity = bars_were_enabled = None
    if transformers_logging is not None:
        verbosity = transformers_logging.get_verbosity()
        transformers_logging.set_verbosity_error()
        with contextlib.suppress(AttributeError):
            bars_were_enabled = transformers_logging.is_progress_bar_enabled()
            if not bars:
                transformers_logging.disable_progress_bar()
    hub_utils = sys.modules.get("huggingface_hub.utils")
    hub_bars_were_enabled = False
    if not bars and hub_utils is not None and hasattr(hub_utils, "are_progress_bars_disabled"):
        hub_bars_were_enabled = not hub_utils.are_progress_bars_disabled()
        hub_utils.disable_progress_bars()
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module="huggingface_hub")
            warnings.filterwarnings("ignore", module="transformers")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
        if transformers_logging is not None and verbosity is not None:
            transformers_logging.set_verbosity(verbosity)
            if bars_were_enabled:
                transformers_logging.enable_progress_bar()
        if hub_bars_were_enabled:
            hub_utils.enable_progress_bars()
        if previous_bars is None:
            os.environ.pop("HF_HUB_DISABLE_PROGRESS_BARS", None)
        else:
            os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = previous_bars
