"""``ci-gate bench``: benchmarks that measure ci-gate itself (speed, detection quality).

Benchmark modules import torch and the model stack at module level; they load only when a
``ci-gate bench ...`` command line runs, so building the CLI (``ci-gate --help``, ``ci-gate
report``) stays fast. Add a benchmark module name to _BENCHMARKS; it exposes ``register(app)``.
"""

from __future__ import annotations

import importlib

import typer
from typer.core import TyperGroup

_BENCHMARKS: tuple[str, ...] = ("detection", "speed", "repair")


class _LazyBenchGroup(TyperGroup):
    """A command group whose commands come from the benchmark modules, imported on first lookup."""

    _loaded: dict | None = None

    def _bench_commands(self) -> dict:
        if self._loaded is None:
            bench = typer.Typer()
            for name in _BENCHMARKS:
                importlib.import_module(f"ci_gate.bench.{name}").register(bench)
            bench.callback()(lambda: None)  # keeps typer from collapsing a lone command into the group
            self._loaded = dict(typer.main.get_command(bench).commands)
        return self._loaded

    def list_commands(self, ctx) -> list[str]:
        return list(self._bench_commands())

    def get_command(self, ctx, name: str):
        return self._bench_commands().get(name)


def register(app: typer.Typer) -> None:
    bench = typer.Typer(
        cls=_LazyBenchGroup, help="Benchmarks: speed and detection quality (not part of the test suite).", no_args_is_help=True
    )
    app.add_typer(bench, name="bench")
