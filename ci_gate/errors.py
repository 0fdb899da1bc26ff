"""Errors that map onto the CLI's exit codes.

Every stage raises :class:`InputError` for bad user input (a file that is missing, truncated or
of the wrong kind, an invalid policy value). The CLI turns it into exit code 2 with a one-line
message that names the file and the problem.
"""

from __future__ import annotations

from pathlib import Path


class CiGateError(Exception):
    """Base class for errors ci-gate reports without a traceback."""

    exit_code = 2


class InputError(CiGateError):
    """A user-supplied file or value is unusable. Exit code 2."""

    def __init__(self, path: str | Path | None, problem: str):
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


class GateFailure(CiGateError):
    """The gate refuses (e.g. a repair that does not verify). Exit code 1."""

    exit_code = 1
