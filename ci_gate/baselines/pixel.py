"""Pixel Backdoor adapted to prompt-tuned CLIP (see ci_gate.baselines)."""

from __future__ import annotations

import torch

from ci_gate.baselines.common import BaselineResult, BaselineSettings, run_baseline
from ci_gate.model.classifier import PromptedClassifier

_EPS = 1e-7
CHANGED = 1e-2  # a pixel counts as part of the trigger when some channel moves by more than this


def _pos(p: torch.Tensor) -> torch.Tensor:
    return torch.tanh(p) / (2 - _EPS) + 0.5  # in [0, 1]


def pixel_backdoor(classifier: PromptedClassifier, images: torch.Tensor, settings: BaselineSettings = BaselineSettings(), classes: list[int] | None = None) -> BaselineResult:
    """One signed pattern (positive and negative parts) per candidate class; statistic: the
    number of changed pixels of the smallest successful trigger."""

    def make_params(k: int, size: int, device: torch.device) -> list[torch.Tensor]:
        start = torch.full((k, 3, size, size), -3.0, device=device)  # both parts start near 0
        return [start.clone().requires_grad_(True), start.clone().requires_grad_(True)]

    def pattern(params: list[torch.Tensor]) -> torch.Tensor:
        return _pos(params[0]) - _pos(params[1])

    def apply(x: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
        return (x[None] + pattern(params)[:, None]).clamp(0, 1)

    def reg(params: list[torch.Tensor]) -> torch.Tensor:
        return (_pos(params[0]) + _pos(params[1])).flatten(1).mean(1)

    def measure(params: list[torch.Tensor]) -> torch.Tensor:
        return (pattern(params).abs().amax(1) > CHANGED).flatten(1).sum(1).float()

    return run_baseline("pixel_backdoor", classifier, images, settings, make_params, apply, reg, measure, classes)
