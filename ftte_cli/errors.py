"""One flat error hierarchy; every error knows its exit code and prints as one line."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Documented exit codes of every `ftte` command (README, "Exit codes")."""

    OK = 0
    FAILURE = 1  # unexpected internal error, or a run that failed
    USAGE = 2  # bad flag, bad recipe, bad inventory, missing file
    INFEASIBLE = 3  # the memory budget cannot hold even the classifier head
    UNREACHABLE = 4  # some device could not be reached (the others went on)
    AUTH_FAILED = 5  # some device refused our key
    HOSTKEY_MISMATCH = 6  # some device presented an unknown or changed host key
    TIMEOUT = 7  # some device timed out (connect or command)
    DEVICE_FAILED = 8  # some device ran the step and it failed
    BUSY = 9  # some device is in use by another run (its lock is held)
    INTERRUPTED = 130  # Ctrl-C


class FtteError(Exception):
    """Base of every error ftte reports to a user; `str(err)` is the one-line message."""

    exit_code: ExitCode = ExitCode.FAILURE


class ConfigError(FtteError):
    """A recipe, inventory, plan or flag is invalid; the message names the file and field."""

    exit_code = ExitCode.USAGE


class DataError(ConfigError):
    """A dataset file is missing or malformed; the message names the file."""


class BudgetInfeasible(FtteError):
    """Even the smallest plan (head only) does not fit the memory budget."""

    exit_code = ExitCode.INFEASIBLE

    def __init__(self, message: str, smallest_bytes: int) -> None:
        super().__init__(message)
        self.smallest_bytes = smallest_bytes


class FleetError(FtteError):
    """A fleet command ended with some devices not ok; carries the whole per-device map."""

    def __init__(self, message: str, exit_code: ExitCode, results: object = None) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.results = results


class RunError(FtteError):
    """A training or simulation run could not start or continue."""
