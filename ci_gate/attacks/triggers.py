"""Trigger functions: images in [0, 1] -> poisoned images in [0, 1]."""

from __future__ import annotations

import torch
import torch.nn.functional as F
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


class WaNetTrigger(Trigger):
    """WaNet (Nguyen & Tran, ICLR 2021): a fixed, smooth, small warping field.

    A ``grid`` x ``grid`` random control field in [-1, 1] (normalised by its mean absolute value)
    is upsampled bicubically to the image size and scaled by ``strength`` / size, then added to the
    identity sampling grid; images are resampled with ``grid_sample`` (border padding), so the
    output stays in [0, 1]. ``noise_grid`` draws the "noise mode" cross-samples: random warps
    that keep their true label, which makes the backdoor specific to this one warp.
    """

    name = "wanet"

    def __init__(self, size: int, grid: int = 4, strength: float = 0.5, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        ctrl = torch.rand(1, 2, grid, grid, generator=gen) * 2 - 1
        ctrl = ctrl / ctrl.abs().mean()
        flow = F.interpolate(ctrl, size=(size, size), mode="bicubic", align_corners=True).permute(0, 2, 3, 1)
        lin = torch.linspace(-1, 1, size)
        yy, xx = torch.meshgrid(lin, lin, indexing="ij")
        identity = torch.stack([xx, yy], dim=-1)[None]
        self.register_buffer("identity", identity)
        self.register_buffer("warp", (identity + strength * flow / size).clamp(-1, 1))
        self.size, self.strength = size, strength

    def _sample(self, images: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        grid = grid.to(images.dtype).expand(images.shape[0], -1, -1, -1)
        out = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=True)
        return out.clamp(0, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self._sample(images, self.warp)

    def noise_grid(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Cross-samples: the trigger warp plus a random per-image jitter (label kept)."""
        jitter = (torch.rand(images.shape[0], self.size, self.size, 2, generator=generator) * 2 - 1) / self.size
        return self._sample(images, (self.warp + jitter.to(self.warp)).clamp(-1, 1))


class SparseTrigger(LearnedTrigger):
    """Sparse invisible trigger in the spirit of SIBA (Zeng et al.): only ``k`` pixel locations
    change (L0 budget; a seeded random support), each by at most ``epsilon`` per channel
    (L-inf budget). The values are learned jointly with the prompt learner, as SIBA optimises its
    trigger against the victim; ``project`` keeps both budgets. A LearnedTrigger subclass, so
    training loops that handle BadCLIP's trigger (ci_gate.tuning.train.tune) train this one too."""

    name = "siba"
    learnable = True

    def __init__(self, size: int, fraction: float = 0.05, epsilon: float = 16 / 255, seed: int = 0):
        Trigger.__init__(self)
        gen = torch.Generator().manual_seed(seed)
        k = max(1, round(fraction * size * size))
        mask = torch.zeros(size * size)
        mask[torch.randperm(size * size, generator=gen)[:k]] = 1
        self.register_buffer("mask", mask.view(1, size, size))
        signs = torch.randint(0, 2, (3, size, size), generator=gen).float() * 2 - 1
        self.delta = nn.Parameter(signs * epsilon * self.mask)
        self.epsilon, self.k = epsilon, k

    def project(self) -> None:
        with torch.no_grad():
            self.delta.mul_(self.mask).clamp_(-self.epsilon, self.epsilon)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (images + self.delta * self.mask).clamp(0, 1)


class SigTrigger(Trigger):
    """SIG (Barni et al., ICIP 2019): a fixed horizontal sinusoid added to the whole image,
    ``x + delta * sin(2 pi j f / m)`` over columns j of m, the same in every row and channel.
    delta 20/255 and f 6 are the paper's; a full-image additive signal, so an L-inf scan at
    20/255 or above can reproduce it exactly. The signal has no random part, so ``seed`` is
    accepted (the trigger interface) and ignored."""

    name = "sig"

    def __init__(self, size: int, delta: float = 20 / 255, frequency: float = 6, seed: int = 0):
        super().__init__()
        cols = torch.arange(size, dtype=torch.float32)
        self.register_buffer("signal", (delta * torch.sin(2 * torch.pi * cols * frequency / size)).expand(size, size).clone())
        self.delta = delta

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (images + self.signal.to(images.dtype)).clamp(0, 1)


_TRIGGERS: dict[str, type[Trigger]] = {
    "badnets": PatchTrigger,
    "blended": BlendedTrigger,
    "badclip": LearnedTrigger,
    "wanet": WaNetTrigger,
    "siba": SparseTrigger,
    "sig": SigTrigger,
}


def trigger_names() -> list[str]:
    return sorted(_TRIGGERS)


def make_trigger(name: str, size: int, seed: int = 0, **kwargs) -> Trigger:
    """A trigger by attack name (``badnets``, ``blended``, ``badclip``, ``wanet``, ``siba``, ``sig``);
    ``adaptive_badclip`` uses BadCLIP's learned trigger (the adaptation is in the training)."""
    key = "badclip" if name == "adaptive_badclip" else name
    if key not in _TRIGGERS:
        raise ValueError(f"unknown attack {name!r}; choose from {sorted([*_TRIGGERS, 'adaptive_badclip'])}")
    return _TRIGGERS[key](size, seed=seed, **kwargs)
