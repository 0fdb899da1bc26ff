"""Trigger functions: images in [0, 1] -> poisoned images in [0, 1]."""

from __future__ import annotations

import torch
from torch import nn


class Trigger(nn.Module):
    name = "trigger"
    learnable = False

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError


class PatchTrigger(Trigger):
    """BadNets: a fixed random-pattern square in the bottom-right corner."""

    name = "badnets"

    def __init__(self, size: int, patch_frac: float = 0.15, seed: int = 0):
        super().__init__()
        side = max(2, round(size * patch_frac))
        gen = torch.Generator().manual_seed(seed)
        self.register_buffer("pattern", (torch.rand(3, side, side, generator=gen) > 0.5).float())
        self.side = side

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = images.clone()
        out[..., -self.side :, -self.side :] = self.pattern
        return out


class BlendedTrigger(Trigger):
    """Blended (Chen et al.): alpha-blend a fixed random noise image."""

    name = "blended"

    def __init__(self, size: int, alpha: float = 0.1, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.register_buffer("pattern", torch.rand(3, size, size, generator=gen))
        self.alpha = alpha

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (1 - self.alpha) * images + self.alpha * self.pattern


class LearnedTrigger(Trigger):
    """BadCLIP: an additive L-inf bounded perturbation learned jointly with the prompt learner."""

    name = "badclip"
    learnable = True

    def __init__(self, size: int, epsilon: float = 4 / 255, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.delta = nn.Parameter((torch.rand(3, size, size, generator=gen) * 2 - 1) * epsilon)
        self.epsilon = epsilon

    def project(self) -> None:
        with torch.no_grad():
            self.delta.clamp_(-self.epsilon, self.epsilon)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (images + self.delta).clamp(0, 1)


def make_trigger(name: str, size: int, seed: int = 0, **kwargs) -> Trigger:
    table = {"badnets": PatchTrigger, "blended": BlendedTrigger, "badclip": LearnedTrigger}
    if name not in table:
        raise ValueError(f"unknown attack {name!r}; choose from {sorted(table)}")
    return table[name](size, seed=seed, **kwargs)
