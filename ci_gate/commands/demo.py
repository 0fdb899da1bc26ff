"""``ci-gate demo``: the main job, offline, on an embedded default."""

from __future__ import annotations

from pathlib import Path

import typer


def demo(
    out: Path = typer.Option(Path("ci-gate-demo"), "--out", "-o", help="Folder for the demo's models, pool and reports."),
    seed: int = typer.Option(0, "--seed", help="Seed for data generation, training and scans."),
) -> None:
    """Build a small CLIP, tune a clean and a backdoored CoCoOp model on generated data, verify both.

    Exit 0 when ci-gate gets both verdicts right, 1 otherwise.
    """
    from ci_gate.demo.run import run_demo
    from ci_gate.report import render

    outcomes = run_demo(out, seed=seed, log=typer.echo)
    typer.echo("")
    for o in outcomes:
        render(o.result, o.out_dir, ["html", "sarif", "md"])
        verdict = o.result.verdict.upper() + (f" (target '{o.result.target_class}')" if o.result.target_class else "")
        mark = "correct" if o.correct else "WRONG"
        typer.echo(f"{o.name:>10} model: {verdict:<28} expected {o.expected:<8} [{mark}]  report: {o.out_dir / 'report.html'}")
    if not all(o.correct for o in outcomes):
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
