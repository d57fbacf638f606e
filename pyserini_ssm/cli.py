"""What every `python -m pyserini_ssm.X` driver shares: turning user errors into one line and exit status 2."""

from __future__ import annotations

import os
import sys
from typing import Callable, Sequence

from pyserini_ssm.errors import UserError

EXIT_USER_ERROR = 2


def is_reporting_rank() -> bool:
    """False in the non-zero ranks of a torchrun job: one line per error, from rank 0, not one per process."""
    return os.environ.get("RANK", "0") in ("", "0")


def run_main(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> int:
    """Call a driver's `main(argv)`; a `UserError` becomes `error: <message>` on stderr and exit status 2.

    A full disk, a quota, a file-size limit or a read-only/forbidden path that escaped the writers' own checks
    (`files.writing`) is one such line too. Under torchrun only rank 0 prints it; every rank exits 2. A SIGTERM
    stops the command at a safe point (`pyserini_ssm.stopping`) with exit status 143. Python warnings are logged as
    one line each (`warning: ...`), without the source line Python prints under them.
    """
    from pyserini_ssm.console import routed_warnings

    with routed_warnings():
        return _run(main, argv)


def _run(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None) -> int:
    from pyserini_ssm.stopping import EXIT_TERMINATED, Terminated, graceful_sigterm  # stdlib only: --help stays fast

    try:
        with graceful_sigterm():
            status = main(argv)
    except Terminated:
        _report("terminated by SIGTERM (stopped at a safe point; nothing half-written was left)", prefix="")
        return EXIT_TERMINATED
    except UserError as error:
        _report(str(error))
        return EXIT_USER_ERROR
    except OSError as error:
        from pyserini_ssm.files import storage_error_message

        message = storage_error_message(error, verb="use")
        if message is None:
            raise
        _report(message)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0 if status is None else int(status)


def _report(message: str, prefix: str = "error: ") -> None:
    if is_reporting_rank():
        message = " ".join(message.split())  # one line, whatever the message held
        print(f"{prefix}{message}", file=sys.stderr)
