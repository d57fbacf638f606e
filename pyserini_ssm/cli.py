"""What every `python -m pyserini_ssm.X` driver shares: turning user errors into one line and exit status 2."""

from __future__ import annotations

import sys
from typing import Callable, Sequence

from pyserini_ssm.errors import UserError

EXIT_USER_ERROR = 2


def run_main(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> int:
    """Call a driver's `main(argv)`; a `UserError` becomes `error: <message>` on stderr and exit status 2.

    Python warnings are logged as one line each (`warning: ...`), without the source line Python prints under them.
    """
    from pyserini_ssm.console import routed_warnings

    with routed_warnings():
        return _run(main, argv)


def _run(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None) -> int:
    try:
        status = main(argv)
    except UserError as error:
        message = " ".join(str(error).split())  # one line, whatever the message held
        print(f"error: {message}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0 if status is None else int(status)
