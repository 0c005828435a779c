"""Errors a user can act on.

Every command ends a user error with one line (``Error: <message>``) and a non-zero exit; a
traceback is shown only with ``maskgen --debug``. Raise these (or let an ``OSError`` from a read
or write escape: the CLI names its file and reason) rather than printing and exiting.
"""

from __future__ import annotations


class MaskgenError(Exception):
    """An error caused by the input, the options or the environment, not by a bug.

    The message is shown as is, on one line: say what failed, on which file, and what to do.
    """

    exit_code = 1


class InputError(MaskgenError):
    """An input cannot be used (missing, unreadable, malformed, unsafe)."""


class OutputError(MaskgenError):
    """An output cannot be written where asked (a folder maskgen does not own, a lock held,
    a read-only or full file system)."""


class OptionError(MaskgenError):
    """An option or config value is invalid."""

    exit_code = 2
