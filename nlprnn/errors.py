"""One exception type for every problem a user can fix: bad input files, configs and checkpoints.

The CLI prints these as one line and exits non-zero; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class NlprnnError(Exception):
    """A user-fixable problem, described in one message that names the file (and line) and what was expected."""


def located(path, line: int | None, message: str) -> NlprnnError:
    """Build an error that starts with `path:line:` the way compilers do, so editors can jump to it."""
    where = f"{path}:{line}" if line is not None else f"{path}"
    return NlprnnError(f"{where}: {message}")
