"""The one exception type for bad user input.

Library code raises `UserError` with a message that names the bad value and how to fix it; every CLI turns it into
one line on stderr and exit status 2 (see `pyserini_ssm.cli.run_main`). Internal invariants use `assert` instead.
"""


class UserError(Exception):
    """Bad input from the user (a path, a name, a malformed line). The message is shown to them as is."""


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none): Java exceptions carry whole stack
    traces, which do not belong in a one-line error."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
