"""The errors a user can fix: each names what is wrong, and ``run.py`` prints it as one
message without a traceback and exits with ``exit_status``."""

from __future__ import annotations


class UserError(Exception):
    """Bad input or a state of the workdir the user must resolve; the message says how."""

    exit_status = 2


class ConfigError(UserError, ValueError):
    """A config value is invalid; the message names the key and what is allowed."""


class DataFormatError(UserError, ValueError):
    """Bad input data; the message names the file (or split), line (or row) and column."""
