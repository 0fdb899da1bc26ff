"""Per-sample inversion losses. Margin is the paper's choice (91.1% trigger ASR vs 81.5% for
cross-entropy and 77.7% for the raw logit); it is deliberately not clamped at 0, so the
optimiser keeps pushing the target past the runner-up."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def margin(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    tgt = logits.gather(1, target[:, None]).squeeze(1)
    others = logits.scatter(1, target[:, None], float("-inf"))
    return others.max(dim=1).values - tgt


def target_loss(kind: str, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample loss, lower means the target class is more strongly predicted."""
    if kind == "margin":
        return margin(logits, target)
    if kind == "cross_entropy":
        return F.cross_entropy(logits, target, reduction="none")
    if kind == "logit":
        return -logits.gather(1, target[:, None]).squeeze(1)
    raise ValueError(f"unknown loss {kind!r}")
