"""The parser of every hand-written sub-command: argparse, with usage errors in one line.

argparse prints the whole usage block before a usage error; on a terminal of 80 columns
that is up to ten lines, and the error itself is the last. Here it is one line, pointing at
``--help`` for the rest, and the exit status stays argparse's 2 ("does not parse").
"""

from __future__ import annotations

import argparse
from typing import NoReturn

__all__ = ["CommandParser"]


class CommandParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose usage errors are one line on stderr, exit status 2."""

    def error(self, message: str) -> NoReturn:
        message = " ".join(message.split())
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")
