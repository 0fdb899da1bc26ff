"""``verify --format json --output -|FILE``: the result as one JSON document for scripts.

Conventions of trivy (``--format``/``--output``) and ModelScan (``-r json -o``): the machine
format goes to stdout unless ``--output`` names a file, and then stdout carries nothing else, so
``ci-gate verify ... --format json | jq .verdict`` works; the human summary, progress and errors
go to stderr. The document is result.json's own text (same schema, same bytes), so
``ci-gate report`` can re-render it. A file is written atomically.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ci_gate.errors import InputError
from ci_gate.result import Result

FORMATS = ("text", "json")
STDOUT = "-"


def check_output_args(fmt: str, output: str | None, report_folder: Path, inputs: list[tuple[str, str | os.PathLike | None]],
                      pool: str | None = None) -> Path | None:
    """Validates ``--format``/``--output`` before any work; returns the output file, None for stdout."""
    from ci_gate.report.folder import check_not_input, check_out_path, pool_root

    if fmt not in FORMATS:
        raise InputError("--format", f"expected {' or '.join(FORMATS)}, got {fmt!r}")
    if output is None or output == STDOUT:
        return None
    if fmt != "json":
        raise InputError("--output", "writes the machine-readable result: use it with --format json (text goes to the terminal)")
    path = check_out_path(output, "--output")
    if path.is_dir():
        raise InputError("--output", f"{path}: is a folder; give a file name (the report folder is --out)")
    check_not_input(path, inputs, "--output", folder=False)
    root = pool_root(pool) if pool else None
    real = Path(os.path.realpath(path))
    if root is not None and (real == root or real.is_relative_to(root)):
        # a .tar pool would be overwritten by the JSON; a pool folder is an input too
        raise InputError("--output", f"{path}: is the OOD pool {root} or inside it; inputs are never modified")
    if path.is_relative_to(report_folder):
        # the report folder is replaced as a whole, and holds result.json already
        raise InputError("--output", f"{path}: is inside the report folder {report_folder}; write it elsewhere")
    return path


def write_result(result: Result, path: Path | None) -> None:
    from ci_gate.io import atomic_write_text
    from ci_gate.report.folder import output_errors

    text = result.to_json() + "\n"
    if path is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    with output_errors(path):
        atomic_write_text(path, text)
