"""The one base class of errors a user can fix: `terminus` prints them as one line and exits 2.

A user error names the thing (key, file, directory, endpoint) and what to do about it; anything
else that escapes a command is a bug and keeps its traceback.
"""
from __future__ import annotations


class UserError(Exception):
    """A mistake in what the user gave (config, path, file, endpoint); the message says how to fix it."""


def one_line(e: BaseException) -> str:
    """The message on one line: later lines (e.g. a parser's context) joined with ' | '."""
    lines = [x.strip() for x in str(e).splitlines() if x.strip()]
    return " | ".join(lines) or type(e).__name__


class ConfigError(UserError, ValueError):
    """A config that cannot be used; the message says which key, where from, and how to fix it."""
