"""``ci-gate bench``: benchmarks that measure ci-gate itself (speed, detection quality)."""

from __future__ import annotations

import importlib

import typer

_BENCHMARKS: tuple[str, ...] = ("detection", "speed")


def register(app: typer.Typer) -> None:
    bench = typer.Typer(help="Benchmarks: speed and detection quality (not part of the test suite).", no_args_is_help=True)
    for name in _BENCHMARKS:
        importlib.import_module(f"ci_gate.bench.{name}").register(bench)
    app.add_typer(bench, name="bench")
