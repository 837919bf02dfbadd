"""Command-line errors: a mistake the user can fix is a one-line message, not a traceback."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable

# Raised for things the user can fix: missing or corrupt files, bad values, no network.
USER_ERRORS = (ValueError, OSError, KeyError)


def user_errors_as_messages(prog: str) -> Callable[[Callable[..., int]], Callable[..., int]]:
    """Decorate a ``main(argv) -> int``: print ``prog: error: ...`` and return 1 on USER_ERRORS."""

    def decorate(main: Callable[..., int]) -> Callable[..., int]:
        @functools.wraps(main)
        def wrapper(argv: list[str] | None = None) -> int:
            try:
                return main(argv)
            except USER_ERRORS as err:
                message = err.args[0] if isinstance(err, KeyError) and err.args else err
                print(f"{prog}: error: {message}", file=sys.stderr)
                return 1

        return wrapper

    return decorate
