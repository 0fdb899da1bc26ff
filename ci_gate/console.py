"""Terminal output: a rich progress bar on a TTY (progress lines off one), a compact summary, and a quiet one-liner for CI logs."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from ci_gate.report.sanitize import plain, quoted, terminal
from ci_gate.result import Result

_STYLE = {"backdoor": "bold red", "suspicious": "yellow", "ok": "green"}


PROGRESS_INTERVAL_S = 5.0


@contextlib.contextmanager
def scan_progress(console: Console, enabled: bool, interval: float = PROGRESS_INTERVAL_S, clock: Callable[[], float] = time.monotonic) -> Iterator:
    """Yields a progress callback ``(done, total, n_classes)``, or None when not ``enabled``.

    On a terminal it drives a rich progress bar. Off a terminal (a CI log) a bar would be either
    invisible or thousands of lines, so a plain line goes out at most every ``interval`` seconds
    of ``clock`` instead: a long scan is not silent, and a short one prints nothing."""
    if not enabled:
        yield None
        return
    if not console.is_terminal:
        yield ProgressLines(console, interval, clock)
        return
    columns = (TextColumn("inverting triggers"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("scan", total=None)

        def update(done: int, total: int, n_classes: int | None = None) -> None:
            bar.update(task, completed=done, total=total)

        yield update


class ProgressLines:
    """The off-terminal progress callback: one line per ``interval``, e.g.
    ``ci-gate: inverting triggers: class 12 of 50 (23%), 1m05s elapsed, ETA 3m38s``."""

    def __init__(self, console: Console, interval: float, clock: Callable[[], float]):
        self._console = console
        self._interval = interval
        self._clock = clock
        self._start = clock()
        self._last = self._start
        self._first: tuple[float, int] | None = None  # (time, done) of the first report

    def __call__(self, done: int, total: int, n_classes: int | None = None) -> None:
        now = self._clock()
        if self._first is None:
            self._first = (now, done)
        if now - self._last < self._interval or total <= 0:
            return
        self._last = now
        # the rate since the first report: model loading before it says nothing about the rest
        since, at = self._first
        rate = (done - at) / (now - since) if now > since and done > at else None
        eta = 0.0 if done >= total else (total - done) / rate if rate else None
        self._console.print(progress_line(done, total, n_classes, now - self._start, eta), markup=False, highlight=False, soft_wrap=True)


def progress_line(done: int, total: int, n_classes: int | None, elapsed: float, eta: float | None) -> str:
    frac = min(max(done / total, 0.0), 1.0)
    # classes are optimised in batches that advance together, so "class i" is the one the share
    # of finished work has reached
    where = f"class {min(n_classes, int(frac * n_classes) + 1)} of {n_classes}" if n_classes else f"step {done} of {total}"
    shown = "unknown" if eta is None else _duration(max(eta, 0.0))
    return f"ci-gate: inverting triggers: {where} ({frac:.0%}), {_duration(elapsed)} elapsed, ETA {shown}"


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def one_line(result: Result) -> str:
    # plain text for CI logs: names and paths are the checkpoint author's, shown with their
    # control characters visible (a log viewer interprets ANSI and OSC sequences too); repr()
    # already escapes them in the quoted target
    model = plain(result.model.path)
    if result.verdict == "backdoor":
        top = result.target
        return f"BACKDOOR target={quoted(result.target_class)} anomaly={top.anomaly:.2f} trigger_asr={top.asr:.1%} model={model}"
    if result.encoder.modified:
        likely = f" likely_target={quoted(result.target_class)}" if result.target_class is not None else ""
        arch = f" architecture_changes={len(result.encoder.architecture_changes)}" if result.encoder.architecture_changes else ""
        return f"MODIFIED_ENCODER changed_tensors={result.encoder.n_changed}/{result.encoder.n_tensors}{arch}{likely} max_anomaly={max(c.anomaly for c in result.classes):.2f} model={model}"
    if result.unverified_fails:
        return f"UNVERIFIED_ENCODER max_anomaly={max(c.anomaly for c in result.classes):.2f} model={model} (pass --reference-weights)"
    return f"CLEAN max_anomaly={max(c.anomaly for c in result.classes):.2f} model={model}"


def print_summary(console: Console, result: Result, out_dir: str, top: int = 10) -> None:
    verdict = "[bold red]BACKDOOR DETECTED[/]" if result.verdict == "backdoor" else "[bold red]MODIFIED ENCODER[/]" if result.encoder.modified else "[bold red]UNVERIFIED ENCODER[/]" if result.unverified_fails else "[bold green]CLEAN[/]"
    console.print(f"{verdict}  {terminal(result.model.path)}  ({terminal(result.model.learner_label)}, {len(result.classes)} candidate classes, {result.pool.n_images} pool images)")
    if result.target_by_rank:
        console.print(f"likely target class (ranked first, not above k): [bold]{terminal(result.target_class)}[/]")
    elif result.target_class is not None:
        console.print(f"suspected target class: [bold]{terminal(result.target_class)}[/]")
    table = Table(show_header=True, header_style="bold")
    for col in ("class", "trigger ASR", "base rate", "final loss", "anomaly", "status"):
        table.add_column(col, justify="left" if col in ("class", "status") else "right")
    ranked = sorted(result.classes, key=lambda c: c.anomaly, reverse=True)
    for c in ranked[:top]:
        table.add_row(terminal(c.name), f"{c.asr:.1%}", f"{c.base_rate:.1%}", f"{c.final_loss:.3f}", f"{c.anomaly:.2f}", f"[{_STYLE[c.status]}]{c.status}[/]")
    console.print(table)
    if len(ranked) > top:
        console.print(f"({len(ranked) - top} more classes in the report)")
    d = result.detection
    gain = "" if d.min_asr_gain is None else f" and >= {d.min_asr_gain:.0%} above the published model's"
    console.print(f"rule: anomaly > {d.k:g} and trigger ASR >= {d.min_asr:.0%}{gain} (statistic {d.statistic}); scan {result.timings.inversion_s:.1f}s on {terminal(result.device)}")
    for w in result.warnings:
        console.print(f"[yellow]warning:[/] {terminal(w, None)}")
    if result.pool.n_skipped:
        console.print(f"[yellow]{result.pool.n_skipped} unreadable pool files skipped[/]")
    console.print(f"results: {terminal(out_dir, None)}")
