"""Neural Cleanse adapted to prompt-tuned CLIP (see ci_gate.baselines)."""

from __future__ import annotations

import torch

from ci_gate.baselines.common import BaselineResult, BaselineSettings, run_baseline
from ci_gate.model.classifier import PromptedClassifier

_EPS = 1e-7


def _mask(p: torch.Tensor) -> torch.Tensor:
    return torch.tanh(p) / (2 - _EPS) + 0.5


def neural_cleanse(classifier: PromptedClassifier, images: torch.Tensor, settings: BaselineSettings = BaselineSettings(), classes: list[int] | None = None) -> BaselineResult:
    """One (mask, pattern) per candidate class; statistic: L1 norm of the mask (pixels)."""

    def make_params(k: int, size: int, device: torch.device) -> list[torch.Tensor]:
        gen = torch.Generator().manual_seed(settings.seed)
        # NC initialises mask and pattern uniformly at random (in tanh space)
        mask = torch.atanh((torch.rand(k, 1, size, size, generator=gen) * 2 - 1) * 0.5).to(device)
        pattern = torch.atanh((torch.rand(k, 3, size, size, generator=gen) * 2 - 1) * 0.5).to(device)
        return [mask.requires_grad_(True), pattern.requires_grad_(True)]

    def apply(x: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
        m, p = _mask(params[0]), _mask(params[1])
        return (1 - m[:, None]) * x[None] + (m * p)[:, None]

    def reg(params: list[torch.Tensor]) -> torch.Tensor:
        # NC's L1 term is the mask sum; normalised by the image area so init_cost is size-independent
        return _mask(params[0]).flatten(1).mean(1)

    def measure(params: list[torch.Tensor]) -> torch.Tensor:
        return _mask(params[0]).flatten(1).sum(1)

    return run_baseline("neural_cleanse", classifier, images, settings, make_params, apply, reg, measure, classes)
