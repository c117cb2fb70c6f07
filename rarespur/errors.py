"""Errors a user can fix from the command line, as opposed to bugs.

``run.py`` and ``python -m rarespur`` print a :class:`UserError` as one
message (what is wrong, the value, the fix) and exit non-zero; any other
exception keeps its traceback, because then the traceback is what helps.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input: the message alone tells the user what to change."""


class ConfigError(UserError, ValueError):
    """A config value that cannot work (unknown name, out of range, impossible with this dataset)."""


class DataError(UserError):
    """The data on disk cannot be used as it is (missing or corrupt files)."""


class TrainingDiverged(UserError, RuntimeError):
    """Training produced a non-finite loss: the run fails instead of storing meaningless numbers."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder named in the config or on the command line does not exist."""


class SchedulerError(UserError):
    """The cluster's scheduler did not answer or refused a submission: the message says what to check."""
