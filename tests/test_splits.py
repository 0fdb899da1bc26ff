"""ci_gate.splits: the one seeded, stratified split (repair and canary hold-out, the repair
benchmark's clean set, the zoo's k-shot sets)."""

import pytest
import torch

from ci_gate.bench.repair import _split
from ci_gate.bench.zoo import _kshot
from ci_gate.data import LabeledImages
from ci_gate.repair.core import split_holdout
from ci_gate.splits import stratified_split


def _data(counts=(5, 0, 8, 3)):
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    labels = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(1))]
    images = torch.arange(len(labels), dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 3, 2, 2).contiguous()
    return LabeledImages(images, labels, ["a", "b", "c", "d"])


def _ids(part):
    return sorted(int(i) for i in part.images[:, 0, 0, 0])


def test_parts_are_stratified_disjoint_complete_and_seeded():
    data = _data()
    seen = []
    first, rest = stratified_split(data, lambda c, n: seen.append((c, n)) or min(n, 2), seed=3)
    assert seen == [(0, 5), (1, 0), (2, 8), (3, 3)]  # class order, empty classes included
    assert torch.bincount(first.labels, minlength=4).tolist() == [2, 0, 2, 2]
    assert torch.bincount(rest.labels, minlength=4).tolist() == [3, 0, 6, 1]
    assert sorted(_ids(first) + _ids(rest)) == list(range(len(data)))
    again, _ = stratified_split(data, lambda c, n: min(n, 2), seed=3)
    other, _ = stratified_split(data, lambda c, n: min(n, 2), seed=4)
    assert _ids(again) == _ids(first) and _ids(other) != _ids(first)


def test_the_three_callers_are_that_split():
    data = _data()
    train, held = split_holdout(data, 0.3, seed=7)
    h, t = stratified_split(data, lambda c, n: min(n - 1, max(1, round(0.3 * n))) if n else 0, 7)
    assert (_ids(train), _ids(held)) == (_ids(t), _ids(h))
    assert torch.bincount(held.labels, minlength=4).tolist() == [2, 0, 2, 1]  # >= 1 on each side
    shots, rest = _kshot(data, 4, seed=2)
    s, r = stratified_split(data, lambda c, n: 4, 2)
    assert (_ids(shots), _ids(rest)) == (_ids(s), _ids(r))
    full = LabeledImages(data.images[data.labels != 1], data.labels[data.labels != 1], ["a", "c", "d"])
    full.labels[full.labels > 1] -= 1
    clean, test = _split(full, 2, 0, "src")
    c, t = stratified_split(full, lambda _c, _n: 2, 0)
    assert (_ids(clean), _ids(test)) == (_ids(c), _ids(t))


def test_a_caller_refuses_a_class_too_small():
    def take(c, n):
        if n < 4:
            raise ValueError(f"class {c}: {n} images")
        return 1

    with pytest.raises(ValueError, match="class 1: 0 images"):
        stratified_split(_data(), take, 0)
