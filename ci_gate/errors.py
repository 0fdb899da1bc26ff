"""Errors that map onto the CLI's exit codes.

Exit codes (every command): 0 success / the gate passes, 1 backdoor detected or policy violated
(:class:`GateFailure` or a deliberate ``typer.Exit(1)``, nothing else), 2 bad input or
configuration (:class:`InputError`, usage errors), 3 internal error: a bug in ci-gate, not a
verdict on the model (any other exception, or :class:`InternalError`); the CLI prints one line
and writes the traceback to a crash log. 130: interrupted; 141: standard output was closed
(broken pipe) before the command finished.

Every stage raises :class:`InputError` for bad user input (a file that is missing, truncated or
of the wrong kind, an invalid policy value). The CLI turns it into exit code 2 with a one-line
message that names the file and the problem.
"""

from __future__ import annotations

from pathlib import Path

EXIT_OK = 0
EXIT_GATE_FAILS = 1
EXIT_BAD_INPUT = 2
EXIT_INTERNAL = 3
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a writer whose reader went away


class CiGateError(Exception):
    """Base class for errors ci-gate reports without a traceback."""

    exit_code = EXIT_BAD_INPUT


class InputError(CiGateError):
    """A user-supplied file or value is unusable. Exit code 2."""

    def __init__(self, path: str | Path | None, problem: str):
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


class GateFailure(CiGateError):
    """The gate refuses (e.g. a repair that does not verify). Exit code 1."""

    exit_code = EXIT_GATE_FAILS


class InternalError(CiGateError):
    """ci-gate caught itself in a state its own code should never reach (not the input's fault).
    Exit code 3, like an unexpected exception; raise it where a plain assert would do."""

    exit_code = EXIT_INTERNAL
