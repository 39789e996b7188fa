"""Errors raised for user mistakes (bad files, bad configs).

The CLI turns a `UserError` into one line on stderr and exit status 2; anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake the user can fix: the message says where (file, line, field) and what was expected."""


class DataError(UserError):
    """A malformed data record. `where` is e.g. 'data/valid.txt:12' or 'gsm.json record 3'."""

    def __init__(self, where: str, field: str | None, problem: str):
        self.where, self.field, self.problem = where, field, problem
        location = f"{where}, field '{field}'" if field else where
        super().__init__(f"{location}: {problem}")


class ConfigError(UserError):
    """A bad configuration value; the message names the field and the accepted values."""
