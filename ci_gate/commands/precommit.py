"""``ci-gate precommit FILE...``: the pre-commit hook's entry (see .pre-commit-hooks.yaml).

pre-commit passes all changed ``*.safetensors`` at once; each gets one ``ci-gate verify`` with its
own report folder (``OUT_ROOT/<its path>``), one after another (one GPU), and the hook fails when
any of them exits non-zero. The verifies run in this process, so torch and the model stack load
once for all files; each still gets exactly the CLI's handling (its one error line, its exit code).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import typer

from ci_gate.errors import EXIT_BAD_INPUT, EXIT_GATE_FAILS, EXIT_INTERNAL, EXIT_OK

_OUTCOME = {EXIT_OK: "gate passes", EXIT_GATE_FAILS: "gate fails", EXIT_BAD_INPUT: "not scanned", EXIT_INTERNAL: "tool failure"}


def report_folder(out_root: Path, checkpoint: str) -> Path:
    """``OUT_ROOT/models/a.safetensors/`` for ``models/a.safetensors``: one folder per checkpoint,
    mirroring the repository, so two checkpoints never share (and replace) one report. A path
    outside the working folder gets a name made unique by a hash of its absolute path."""
    absolute = os.path.abspath(checkpoint)
    relative = os.path.relpath(absolute)
    if os.path.isabs(relative) or relative == os.pardir or relative.startswith(os.pardir + os.sep):
        tag = hashlib.sha256(absolute.encode("utf-8", "surrogateescape")).hexdigest()[:12]
        return out_root / "_outside" / f"{tag}-{Path(absolute).name}"
    return out_root / relative


def hook_exit_code(codes: list[int]) -> int:
    """The hook's exit code: 0 when every verify passed, else the most serious code (3 tool
    failure > 2 not scanned > 1 gate fails), so a crash is not reported as a verdict."""
    return max(codes, default=EXIT_OK)


def option_shaped_files(ctx: typer.Context) -> list[str]:
    """Staged files that the option parser took for options. pre-commit appends the file names
    after the hook's args with no ``--``, so a checkpoint named ``--out-root=x.safetensors`` (or
    ``-px.safetensors``) sets an option instead of being scanned; were it the only file, the hook
    would pass having scanned nothing. Such a token is an option value ending in .safetensors
    that, written back in its attached form, names an existing file."""
    found = []
    for param in ctx.command.params:  # typer vendors click: options are told by their dashed flags
        value = ctx.params.get(param.name)
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if item is None or not str(item).lower().endswith(".safetensors"):
                continue
            for flag in (f for f in param.opts if f.startswith("-")):
                token = f"{flag}={item}" if flag.startswith("--") else f"{flag}{item}"
                if os.path.lexists(token):
                    found.append(token)
    return found


def precommit(
    ctx: typer.Context,
    files: list[str] = typer.Argument(None, help="Checkpoints to verify (pre-commit passes the changed *.safetensors)."),
    policy: str = typer.Option("default", "--policy", "-p", help="Policy file or bundled name (default, strict, permissive)."),
    pool: str = typer.Option(None, "--pool", help="OOD image pool: folder, glob or .tar (overrides pool.path)."),
    out_root: Path = typer.Option(Path("ci-gate-reports"), "--out-root", help="Each checkpoint's report folder is OUT_ROOT/<its path> (keep it out of git: .gitignore)."),
    overrides: list[str] = typer.Option([], "--set", help="Override one policy field, e.g. --set detection.k=2.5"),
    fail_on: str = typer.Option(None, "--fail-on", help="What fails the gate: backdoor, suspicious or never (default from policy)."),
    backbone_weights: Path = typer.Option(None, "--backbone-weights", help="Local backbone weights file (instead of the pretrained tag)."),
    reference_weights: Path = typer.Option(None, "--reference-weights", help="Published backbone weights for the clean reference (checkpoints that embed their backbone)."),
) -> None:
    """Verify each FILE with `ci-gate verify`, one report folder each; exit non-zero if any fails."""
    from ci_gate import cli

    shared = ["--policy", policy, "--quiet"]
    if pool:
        shared += ["--pool", pool]
    for item in overrides:
        shared += ["--set", item]
    if fail_on is not None:
        shared += ["--fail-on", fail_on]
    if backbone_weights is not None:
        shared += ["--backbone-weights", str(backbone_weights)]
    if reference_weights is not None:
        shared += ["--reference-weights", str(reference_weights)]
    debug = ["--debug"] if ctx.find_root().params.get("debug") else []
    hidden = option_shaped_files(ctx)
    if hidden:
        from ci_gate.errors import InputError

        raise InputError(hidden[0], "a checkpoint whose name starts with '-' is read as an option, not scanned; rename it")

    codes: list[int] = []
    for name in files or []:
        # "--": a name that starts with "-" is a checkpoint, never an option of verify
        argv = [*debug, "verify", "--out", str(report_folder(out_root, name)), "--display-path", name, *shared, "--", name]
        try:
            cli.main(argv)
            code = EXIT_OK
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else EXIT_INTERNAL
        if code not in _OUTCOME:  # interrupted (130) or stdout closed (141): stop here, as verify would
            raise typer.Exit(code)
        codes.append(code)
        shown = cli.one_line(name)
        typer.echo(f"ci-gate precommit: {shown}: {_OUTCOME[code]}" + (f" (exit {code})" if code else ""), err=True)
    raise typer.Exit(hook_exit_code(codes))


def register(app: typer.Typer) -> None:
    app.command("precommit")(precommit)
