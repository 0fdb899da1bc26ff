"""The ``ci-gate`` command line. Each command lives in ``ci_gate/commands/<name>.py``.

Exit codes (see ci_gate.errors): 0 clean / success, 1 backdoor detected or policy violated,
2 bad input or configuration (one line naming the file and the problem), 3 internal error (one
line; the traceback goes to a crash log in the temp folder). ``--debug`` also prints tracebacks.
Exit 1 comes only from a command's deliberate ``typer.Exit(1)`` or GateFailure: in CI it reads
as "backdoor", so nothing else may produce it.
"""

from __future__ import annotations

import errno
import os
import re
import sys
import tempfile
import traceback
from typing import NoReturn

import typer

from ci_gate import __version__
from ci_gate.errors import EXIT_BAD_INPUT, EXIT_BROKEN_PIPE, EXIT_INTERNAL, EXIT_INTERRUPTED, CiGateError, InternalError

app = typer.Typer(
    name="ci-gate",
    help="Backdoor gate for prompt-tuned CLIP checkpoints (CLIP-Inspector trigger inversion).",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
)

_state = {"debug": False}
_MAX_DETAIL = 400
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"ci-gate {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    _state["debug"] = debug


def _register() -> None:
    from ci_gate.commands import registered_commands

    if app.registered_commands:  # main() may run more than once in one process (tests)
        return
    for register in registered_commands():
        register(app)


def _redact(text: str) -> str:
    """Registered secrets (the GitHub token, once a github command has read it) never reach an
    error line, a traceback or a crash log, all of which may end up in a CI artifact."""
    try:
        from ci_gate.github.redact import redact
    except Exception:  # the error path must not fail on its own imports
        return text
    return redact(text)


def _traceback(exc: BaseException) -> str:
    return _redact("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))


def one_line(text: str) -> str:
    """Messages are one line: a line break in a file name or value could otherwise forge
    further lines in a CI log (a line starting with ``::`` is a GitHub workflow command, and so
    is ``##[...]`` anywhere in a line)."""
    flat = " ".join(_redact(text).split())
    flat = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", flat)
    try:
        from ci_gate.report.sanitize import log_safe, visible
    except Exception:  # the error path must not fail on its own imports
        return flat
    # bidi and zero-width characters visible too, and no "##[...]" workflow command anywhere in
    # the line (GitHub's runner honours that legacy form mid-line): a class name quoted in an
    # error message must not mask the log or forge an annotation
    return log_safe(visible(flat), unwrapped_line=True)


def _describe(exc: BaseException) -> str:
    try:
        detail = str(exc)
    except Exception:  # an exception whose __str__ fails must not hide the first one
        detail = "<unprintable>"
    detail = one_line(detail)
    if len(detail) > _MAX_DETAIL:
        detail = detail[:_MAX_DETAIL] + "..."
    return detail


def _save_crash_log(exc: BaseException, argv: list[str]) -> str | None:
    """Writes the traceback to a new file; mkstemp creates it exclusively, readable by the owner
    only, so nothing can be planted at or read from the name in a shared temp folder."""
    try:
        fd, name = tempfile.mkstemp(prefix="ci-gate-crash-", suffix=".log")
        with os.fdopen(fd, "w", encoding="utf-8", errors="backslashreplace") as fh:
            fh.write(_redact(f"ci-gate {__version__} on Python {sys.version.split()[0]}\nargv: {argv!r}\n\n"))
            fh.write(_traceback(exc))
        return name
    except Exception:  # a full or read-only temp folder must not mask the crash itself
        return None


def _internal_error(exc: BaseException, argv: list[str]) -> NoReturn:
    log = _save_crash_log(exc, argv)
    if _state["debug"]:
        sys.stderr.write(_traceback(exc))
    where = f"traceback in {log}" if log else "no crash log could be written; rerun with --debug for the traceback"
    head = f"ci-gate: internal error: {_describe(exc)}" if isinstance(exc, InternalError) else f"ci-gate: internal error: {type(exc).__name__}: {_describe(exc)}"
    typer.echo(f"{head} ({where})", err=True)
    sys.exit(EXIT_INTERNAL)


def _broken_pipe() -> NoReturn:
    # The interpreter flushes stdout once more at exit; with the reader gone that flush fails
    # again and prints its own error, so stdout goes to /dev/null first.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass
    sys.exit(EXIT_BROKEN_PIPE)


def _is_click_broken_pipe(exc: SystemExit) -> bool:
    # typer's main turns EPIPE into sys.exit(1), which would read as "backdoor"; it does so
    # inside its `except OSError` block, so the OSError is the SystemExit's context.
    ctx = exc.__context__
    return exc.code == 1 and isinstance(ctx, OSError) and ctx.errno == errno.EPIPE


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    _state["debug"] = False
    try:
        _register()
        # With standalone_mode=False click does not exit: it *returns* the code of a
        # `raise typer.Exit(n)` (typer.Exit is not click's Exit, so the handler below never sees it).
        code = app(args=args, prog_name="ci-gate", standalone_mode=False)
    except CiGateError as exc:
        if exc.exit_code == EXIT_INTERNAL:
            _internal_error(exc, args)
        if _state["debug"]:
            sys.stderr.write(_traceback(exc))
        typer.echo(one_line(f"ci-gate: error: {exc}"), err=True)
        sys.exit(exc.exit_code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        typer.echo("ci-gate: aborted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except SystemExit as exc:
        if _is_click_broken_pipe(exc):
            _broken_pipe()
        if exc.code in (None, 0):
            raise
        # click does not exit in this mode, so this is code under a command calling sys.exit(n)
        # (a library, say): its n means nothing in ci-gate's contract and 1 would read as "backdoor"
        _internal_error(exc, args)
    except BrokenPipeError:
        _broken_pipe()
    except Exception as exc:
        import click

        # typer >= 0.20 vendors click: its usage errors (unknown option, missing argument) derive
        # from typer.TyperException, not click's ClickException. Both are bad input: exit 2.
        usage_errors = (click.exceptions.ClickException, *([typer.TyperException] if hasattr(typer, "TyperException") else []))
        if isinstance(exc, usage_errors):
            if hasattr(exc, "show"):
                exc.show()
            else:
                typer.echo(one_line(f"ci-gate: error: {exc}"), err=True)
            sys.exit(EXIT_BAD_INPUT)
        if isinstance(exc, click.exceptions.Exit):
            sys.exit(exc.exit_code)
        if isinstance(exc, click.exceptions.Abort):
            typer.echo("ci-gate: aborted", err=True)
            sys.exit(EXIT_INTERRUPTED)
        _internal_error(exc, args)
    # a command's return value is not an exit code (True would read as exit 1)
    sys.exit(code if type(code) is int else 0)
