"""Randomness: every draw that shapes a result takes an explicit ``torch.Generator``.

What cannot take one are module constructors (``nn.Linear``, open_clip's ``CLIP``): they draw
their initial weights from torch's global generator. :func:`global_rng` runs them on a fork of
it, so the caller's generator is the same afterwards and nothing in ci-gate depends on what a
caller (a notebook, a test, another library) did with it before.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def global_rng(seed: int | None = None) -> Iterator[None]:
    """Torch's global CPU generator, forked for the block and restored after it; seeded with
    ``seed`` inside when one is given (for module initialisations that must be reproducible).

    Only the CPU generator is forked and seeded: ci-gate builds and initialises modules on the
    CPU and draws no CUDA random numbers from a global generator.
    """
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.random.default_generator.manual_seed(seed)
        yield
