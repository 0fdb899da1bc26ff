"""The ``ci-gate`` command line. Each command lives in ``ci_gate/commands/<name>.py``.

Exit codes: 0 clean / success, 1 backdoor detected or policy violated, 2 bad input or
configuration (one line naming the file and the problem; a traceback only with ``--debug``).
"""

from __future__ import annotations

import sys

import typer

from ci_gate import __version__
from ci_gate.errors import CiGateError

app = typer.Typer(
    name="ci-gate",
    help="Backdoor gate for prompt-tuned CLIP checkpoints (CLIP-Inspector trigger inversion).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

_state = {"debug": False}


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


def main(argv: list[str] | None = None) -> None:
    _register()
    try:
        # With standalone_mode=False click does not exit: it *returns* the code of a
        # `raise typer.Exit(n)` (typer.Exit is not click's Exit, so the handler below never sees it).
        code = app(args=argv, standalone_mode=False)
    except CiGateError as exc:
        if _state["debug"]:
            raise
        typer.echo(f"ci-gate: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        typer.echo("ci-gate: aborted", err=True)
        sys.exit(130)
    except Exception as exc:  # click usage errors and friends
        import click

        # typer >= 0.20 vendors click: its usage errors (unknown option, missing argument) derive
        # from typer.TyperException, not click's ClickException. Both are bad input: exit 2.
        usage_errors = (click.exceptions.ClickException, *([typer.TyperException] if hasattr(typer, "TyperException") else []))
        if isinstance(exc, usage_errors):
            if hasattr(exc, "show"):
                exc.show()
            else:
                typer.echo(f"ci-gate: error: {exc}", err=True)
            sys.exit(2)
        if isinstance(exc, click.exceptions.Exit):
            sys.exit(exc.exit_code)
        raise
    sys.exit(code if isinstance(code, int) else 0)
