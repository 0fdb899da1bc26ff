"""Shared machinery of the inversion baselines: a per-class regularised trigger optimisation with
Neural Cleanse's cost schedule, run for several candidate classes in one batch (losses summed, so
each class's trigger gets only its own gradient, as in ci_gate.inversion), and a lower-tail MAD
anomaly index over the classes' trigger sizes."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ci_gate.model.classifier import PromptedClassifier
from ci_gate.scoring.robust import robust_z


@dataclass(frozen=True)
class BaselineSettings:
    epochs: int = 5  # passes over the pool (the paper ran both baselines for 5 epochs)
    batch_size: int = 32
    lr: float = 0.1
    init_cost: float = 1e-3
    success_threshold: float = 0.99  # NC: a trigger "works" at this ASR on a window of steps
    patience: int = 2  # windows above/below the threshold before lambda moves
    cost_up: float = 1.5
    cost_down: float = 1.5**1.5
    windows_per_epoch: int = 4
    class_batch: int = 10
    seed: int = 0
    k: float = 2.0  # anomaly index threshold (NC's)
    eval_batch_size: int = 64


@dataclass
class BaselineClass:
    index: int
    size: float  # the statistic: mask L1 (NC) or changed pixels (Pixel)
    asr: float  # of the smallest successful trigger (or the last one) on the pool
    cost: float  # final lambda


@dataclass
class BaselineResult:
    method: str
    classes: list[BaselineClass]
    anomaly: list[float]  # lower-tail MAD index per class, larger = smaller trigger than the rest
    flagged: bool
    target: int | None
    score: float  # model-level score: max anomaly index
    seconds: float
    extra: dict = field(default_factory=dict)


def lower_tail_anomaly(sizes: list[float]) -> list[float]:
    return robust_z(sizes, 1e-12, tail="lower")[0]


# A trigger model: (params) -> function images (B,3,S,S) x class k -> triggered images, and size per class
Apply = Callable[[torch.Tensor, list[torch.Tensor]], torch.Tensor]  # x (B,...) -> (K, B, ...)
Size = Callable[[list[torch.Tensor]], torch.Tensor]  # -> (K,) differentiable regulariser
Measure = Callable[[list[torch.Tensor]], torch.Tensor]  # -> (K,) reported statistic


def optimise_triggers(
    classifier: PromptedClassifier,
    images: torch.Tensor,
    targets: list[int],
    params: list[torch.Tensor],
    apply: Apply,
    reg: Size,
    measure: Measure,
    settings: BaselineSettings,
) -> list[BaselineClass]:
    device = classifier.mean.device
    k = len(targets)
    tgt = torch.tensor(targets, device=device)
    opt = torch.optim.Adam(params, lr=settings.lr, betas=(0.5, 0.9))
    cost = torch.full((k,), settings.init_cost, device=device)
    gen = torch.Generator().manual_seed(settings.seed)
    n = images.shape[0]
    steps_per_epoch = max(1, -(-n // settings.batch_size))
    window = max(1, steps_per_epoch // settings.windows_per_epoch)
    hits = torch.zeros(k, device=device)
    seen = 0
    up = torch.zeros(k, device=device)
    down = torch.zeros(k, device=device)
    best_size = torch.full((k,), float("inf"), device=device)
    best = [p.detach().clone() for p in params]
    step = 0
    for _ in range(settings.epochs):
        for idx in torch.randperm(n, generator=gen).split(settings.batch_size):
            x = images[idx].to(device)
            xs = apply(x, params)  # (K, B, 3, S, S)
            b = x.shape[0]
            logits = classifier(xs.flatten(0, 1)).view(k, b, -1)
            ce = F.cross_entropy(logits.flatten(0, 1), tgt.repeat_interleave(b), reduction="none").view(k, b).mean(1)
            loss = (ce + cost * reg(params)).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                hits += (logits.argmax(-1) == tgt[:, None]).float().sum(1)
                seen += b
                step += 1
                if step % window == 0:
                    acc = hits / seen
                    ok = acc >= settings.success_threshold
                    size_now = measure(params)
                    better = ok & (size_now < best_size)
                    for i in torch.nonzero(better).flatten().tolist():
                        best_size[i] = size_now[i]
                        for bp, p in zip(best, params):
                            bp[i] = p[i].detach()
                    up = torch.where(ok, up + 1, torch.zeros_like(up))
                    down = torch.where(ok, torch.zeros_like(down), down + 1)
                    raise_cost = up >= settings.patience
                    lower_cost = down >= settings.patience
                    cost = torch.where(raise_cost, cost * settings.cost_up, cost)
                    cost = torch.where(lower_cost, cost / settings.cost_down, cost)
                    up = torch.where(raise_cost, torch.zeros_like(up), up)
                    down = torch.where(lower_cost, torch.zeros_like(down), down)
                    hits.zero_()
                    seen = 0
    with torch.no_grad():
        never = torch.isinf(best_size)
        for i in torch.nonzero(never).flatten().tolist():  # no successful trigger: report the last one
            for bp, p in zip(best, params):
                bp[i] = p[i].detach()
        sizes = measure(best)
        asr = torch.zeros(k, device=device)
        for chunk in images.split(settings.eval_batch_size):
            x = chunk.to(device)
            xs = apply(x, best)
            logits = classifier(xs.flatten(0, 1)).view(k, x.shape[0], -1)
            asr += (logits.argmax(-1) == tgt[:, None]).float().sum(1)
        asr /= n
    return [BaselineClass(index=t, size=float(sizes[i]), asr=float(asr[i]), cost=float(cost[i])) for i, t in enumerate(targets)]


def run_baseline(
    method: str,
    classifier: PromptedClassifier,
    images: torch.Tensor,
    settings: BaselineSettings,
    make_params: Callable[[int, int, torch.device], list[torch.Tensor]],
    apply: Apply,
    reg: Size,
    measure: Measure,
    classes: list[int] | None = None,
) -> BaselineResult:
    t0 = time.perf_counter()
    classifier.freeze()
    classes = list(range(classifier.n_classes)) if classes is None else list(classes)
    device = classifier.mean.device
    out: list[BaselineClass] = []
    for start in range(0, len(classes), settings.class_batch):
        group = classes[start : start + settings.class_batch]
        params = make_params(len(group), images.shape[-1], device)
        out.extend(optimise_triggers(classifier, images, group, params, apply, reg, measure, settings))
    anomaly = lower_tail_anomaly([c.size for c in out])
    best = max(range(len(out)), key=lambda i: anomaly[i])
    flagged = anomaly[best] > settings.k
    return BaselineResult(
        method=method,
        classes=out,
        anomaly=anomaly,
        flagged=flagged,
        target=out[best].index if flagged else None,
        score=anomaly[best],
        seconds=time.perf_counter() - t0,
    )
