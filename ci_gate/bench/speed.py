"""``ci-gate bench speed``: reference vs fast inversion, side by side (see speed_run.py).

Only typer and the standard library at import time: ``ci-gate --help`` registers this command
and must not pay for importing torch.
"""

from __future__ import annotations

from pathlib import Path

import typer

_MODELS = ("tiny-32", "small-64", "ViT-B-16")


def speed(
    model: str = typer.Option("small-64", "--model", help=f"Backbone with random weights: {', '.join(_MODELS)}."),
    learner: str = typer.Option("cocoop", "--learner", help="Prompt learner kind (ci_gate.learners), e.g. coop or cocoop."),
    classes: int = typer.Option(50, "--classes", min=2, help="Number of candidate classes."),
    pool_size: int = typer.Option(256, "--pool-size", min=1, help="Number of (random) pool images."),
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="Inversion batch size."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:N or auto."),
    dtype: str = typer.Option("fp32", "--dtype", help="Fast path precision: fp32, bf16 or fp16 (the reference is always fp32)."),
    class_batch: int = typer.Option(0, "--class-batch", min=0, help="Classes optimised together; 0 chooses from the memory bound."),
    reference: bool = typer.Option(True, "--reference/--no-reference", help="Also run the straightforward reference (slow)."),
    flops_only: bool = typer.Option(False, "--flops-only", help="Only count FLOPs and give the FLOP floor (e.g. the ViT-B/16 GPU target on a CPU)."),
    threads: int = typer.Option(0, "--threads", min=0, help="torch CPU threads (0 leaves torch's default)."),
    peak_tflops: float = typer.Option(None, "--peak-tflops", help="Device peak for the FLOP floor (default: datasheet table on GPUs, measured GEMM on CPUs)."),
    seed: int = typer.Option(0, "--seed", help="Seed for weights, pool and batch order."),
    out: Path = typer.Option(Path("bench-speed"), "--out", "-o", help="Folder for speed.json and speed.md."),
) -> None:
    """Time the fast inversion against the straightforward reference on one model and pool."""
    from ci_gate.bench.speed_run import DTYPES, SpeedOptions, run_speed_bench, to_markdown, write_report
    from ci_gate.errors import InputError
    from ci_gate.learners import tuned_kinds

    if model not in _MODELS:
        raise InputError("--model", f"expected one of {', '.join(_MODELS)}, got {model!r}")
    if learner not in tuned_kinds():
        raise InputError("--learner", f"expected one of {', '.join(tuned_kinds())}, got {learner!r}")
    if dtype not in DTYPES:
        raise InputError("--dtype", f"expected one of {', '.join(DTYPES)}, got {dtype!r}")
    opts = SpeedOptions(
        model=model, learner=learner, classes=classes, pool_size=pool_size, batch_size=batch_size, device=device,
        dtype=dtype, class_batch=class_batch or None, seed=seed, reference=reference, threads=threads, peak_tflops=peak_tflops,
        run=not flops_only,
    )  # fmt: skip
    try:
        report = run_speed_bench(opts, log=lambda m: typer.echo(m, err=True))
    except ValueError as exc:  # unknown device and the like
        raise InputError("bench speed", str(exc)) from None
    write_report(report, out)
    typer.echo(to_markdown(report))
    typer.echo(f"written: {out / 'speed.json'}, {out / 'speed.md'}")


def register(bench: typer.Typer) -> None:
    bench.command("speed")(speed)
