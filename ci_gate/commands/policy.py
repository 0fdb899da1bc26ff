"""``ci-gate policy schema``: the JSON Schema of policy files, for editors and validators."""

from __future__ import annotations

import typer


def schema_command(
    out: str = typer.Option(None, "--out", "-o", help="Write the schema to this file (atomically) instead of stdout."),
) -> None:
    """Print the JSON Schema of policy files (generated from the policy model; the same file ships
    with ci-gate as policies/policy.schema.json)."""
    from ci_gate.errors import InputError
    from ci_gate.io import atomic_write_text
    from ci_gate.policy_schema import policy_json_schema_text
    from ci_gate.report.folder import check_out_path, output_errors

    text = policy_json_schema_text()
    if out is None or out == "-":
        typer.echo(text, nl=False)
        return
    path = check_out_path(out, "--out")
    if path.is_dir():
        raise InputError("--out", f"{path}: is a folder; give a file name")
    with output_errors(path):
        atomic_write_text(path, text)


def register(root: typer.Typer) -> None:
    group = typer.Typer(name="policy", help="Policy files: their JSON Schema.", no_args_is_help=True)
    group.command("schema")(schema_command)
    root.add_typer(group, name="policy")
