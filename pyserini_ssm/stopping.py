"""A SIGTERM (a job scheduler's stop, `kill`, torchrun tearing down) ends a command at a safe point, exit 143.

`graceful_sigterm()` installs a handler for the length of a command. Outside a `deferred()` block the signal raises
`Terminated` at once, in Python code: Java calls (BM25 mining) return first, so the JVM stays alive, and
`atomic_output` removes its temporary file as for any exception. Inside `deferred()` (a training step) the request is
only recorded: the loop checks `requested()` between steps, writes a checkpoint and raises `Terminated` itself.
A second SIGTERM ends the process at once (the default action), for a sender that will not wait. The JVM must not
handle SIGTERM itself (`java.py` starts it with -Xrs).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import Iterator

EXIT_TERMINATED = 128 + signal.SIGTERM  # 143, what a shell reports for a process a SIGTERM ended


class Terminated(BaseException):
    """Raised to stop a command after a SIGTERM (a BaseException, like KeyboardInterrupt: no `except Exception`
    swallows it)."""


_state = {"requested": False, "deferring": 0}


def requested() -> bool:
    """True once a SIGTERM arrived (while `graceful_sigterm` was active)."""
    return _state["requested"]


def _handle(signum, frame) -> None:  # noqa: ARG001  (signal handler signature)
    if _state["requested"]:  # a second SIGTERM: the sender will not wait for the safe point; die now
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
        return
    _state["requested"] = True
    if not _state["deferring"]:
        raise Terminated()


@contextlib.contextmanager
def graceful_sigterm() -> Iterator[None]:
    """Handle SIGTERM (see the module docstring) inside the block; the previous handler comes back after it.

    A no-op outside the main thread (signal handlers can only be set there)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _handle)
    _state["requested"] = False
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Inside: a SIGTERM is recorded, not raised (check `requested()` at the next safe point)."""
    _state["deferring"] += 1
    try:
        yield
    finally:
        _state["deferring"] -= 1
