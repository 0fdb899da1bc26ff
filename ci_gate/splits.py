"""The one seeded, stratified split of a labeled set (repair's held-out part, the canary's, the
repair benchmark's clean set, the zoo's k-shot tuning sets)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ci_gate.data import LabeledImages

Take = Callable[[int, int], int]  # (class index, images of that class) -> how many go to the first part


def stratified_split(data: LabeledImages, take: Take, seed: int) -> tuple[LabeledImages, LabeledImages]:
    """(first, rest): per class, in class order, a permutation of its images drawn from one
    generator seeded with ``seed``; its first ``take(class, n)`` images go to the first part.

    ``take`` may raise (a class too small for the split is the caller's input error) and sees
    empty classes too (n = 0). The same data and seed give the same parts on every machine.
    """
    gen = torch.Generator().manual_seed(seed)
    first: list[torch.Tensor] = []
    rest: list[torch.Tensor] = []
    for c in range(len(data.class_names)):
        idx = torch.nonzero(data.labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        k = take(c, len(idx))
        first.append(idx[:k])
        rest.append(idx[k:])
    none = torch.zeros(0, dtype=torch.long)
    return data.subset(torch.cat(first) if first else none), data.subset(torch.cat(rest) if rest else none)
