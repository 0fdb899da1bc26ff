"""Procedurally generated images: a labeled colour task and an unlabeled OOD pool.

The demo must run with no dataset on disk, so it draws its own: ten classes named by colour
(words CLIP's tokenizer knows), each image a random shape painted in that colour on a noisy grey
background, and a pool of smooth colour fields and blobs with no shapes (out of distribution for
the task, as the method requires). Colour is what a small CLIP trained from scratch in a few
seconds learns reliably; shapes would need minutes.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter

from ci_gate.data import LabeledImages

SHAPES = ("circle", "square", "triangle", "star", "cross", "ring", "diamond", "stripes", "dots", "heart")
COLOURS = {
    "red": (220, 30, 30),
    "green": (40, 170, 50),
    "blue": (30, 60, 220),
    "yellow": (240, 220, 40),
    "purple": (130, 40, 170),
    "orange": (245, 140, 20),
    "pink": (245, 130, 190),
    "brown": (120, 70, 30),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
}


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(0, 256, 3))


def _polygon(cx: float, cy: float, r: float, n: int, rot: float, inner: float | None = None) -> list[tuple[float, float]]:
    pts = []
    steps = n * (2 if inner else 1)
    for i in range(steps):
        rad = r if (inner is None or i % 2 == 0) else r * inner
        a = rot + 2 * math.pi * i / steps
        pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
    return pts


def _jitter(rgb: tuple[int, int, int], rng: np.random.Generator, amount: int = 18) -> tuple[int, int, int]:
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in rgb)


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, size: int, rng: np.random.Generator, fg: tuple[int, int, int]) -> None:
    r = size * rng.uniform(0.22, 0.38)
    cx, cy = (size / 2 + rng.uniform(-0.12, 0.12) * size for _ in range(2))
    rot = rng.uniform(0, 2 * math.pi)
    w = max(2, int(size * 0.08))
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "circle":
        draw.ellipse(box, fill=fg)
    elif shape == "ring":
        draw.ellipse(box, outline=fg, width=w)
    elif shape == "square":
        draw.polygon(_polygon(cx, cy, r * 1.2, 4, rot), fill=fg)
    elif shape == "diamond":
        draw.polygon(_polygon(cx, cy, r * 1.2, 4, math.pi / 4 + rng.uniform(-0.1, 0.1)), fill=fg)
    elif shape == "triangle":
        draw.polygon(_polygon(cx, cy, r * 1.2, 3, rot), fill=fg)
    elif shape == "star":
        draw.polygon(_polygon(cx, cy, r * 1.2, 5, rot, inner=0.45), fill=fg)
    elif shape == "cross":
        draw.line([(cx - r, cy), (cx + r, cy)], fill=fg, width=w + 1)
        draw.line([(cx, cy - r), (cx, cy + r)], fill=fg, width=w + 1)
    elif shape == "stripes":
        step = max(3, int(size * rng.uniform(0.12, 0.2)))
        for x in range(-size, 2 * size, step):
            draw.line([(x, 0), (x + size * math.tan(rot % 1.0), size)], fill=fg, width=max(1, step // 2))
    elif shape == "dots":
        for _ in range(int(rng.integers(5, 10))):
            x, y = rng.uniform(0, size, 2)
            d = size * 0.06
            draw.ellipse((x - d, y - d, x + d, y + d), fill=fg)
    elif shape == "heart":
        s = r * 0.55
        draw.ellipse((cx - 2 * s, cy - 1.6 * s, cx, cy + 0.4 * s), fill=fg)
        draw.ellipse((cx, cy - 1.6 * s, cx + 2 * s, cy + 0.4 * s), fill=fg)
        draw.polygon([(cx - 1.95 * s, cy - 0.3 * s), (cx + 1.95 * s, cy - 0.3 * s), (cx, cy + 2.0 * s)], fill=fg)


def _background(size: int, rng: np.random.Generator) -> Image.Image:
    base = np.array(_colour(rng), dtype=np.float32) * 0.6 + 50
    noise = rng.normal(0, 18, (size, size, 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))


def _to_tensor(images: list[Image.Image]) -> torch.Tensor:
    arr = np.stack([np.asarray(im.convert("RGB"), dtype=np.uint8) for im in images])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float().div_(255.0).contiguous()


def colours_dataset(per_class: int, size: int, seed: int, render: int = 4) -> LabeledImages:
    """Shapes drawn at ``render`` x the size and downsampled, so edges are anti-aliased."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    big = size * render
    for label, rgb in enumerate(COLOURS.values()):
        for _ in range(per_class):
            img = _background(big, rng)
            shape = SHAPES[int(rng.integers(len(SHAPES)))]
            _draw_shape(ImageDraw.Draw(img), shape, big, rng, _jitter(rgb, rng))
            images.append(img.resize((size, size), Image.Resampling.LANCZOS))
            labels.append(label)
    return LabeledImages(_to_tensor(images), torch.tensor(labels), list(COLOURS))


def ood_pool(n: int, size: int, seed: int) -> tuple[torch.Tensor, list[Image.Image]]:
    """Smooth colour fields with soft blobs: natural-image-like statistics, no task shapes."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        low = rng.uniform(0, 255, (4, 4, 3)).astype(np.uint8)
        img = Image.fromarray(low).resize((size, size), Image.Resampling.BICUBIC)
        draw = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(1, 4))):
            x, y = rng.uniform(0, size, 2)
            rx, ry = rng.uniform(size * 0.1, size * 0.5, 2)
            draw.ellipse((x - rx, y - ry, x + rx, y + ry), fill=_colour(rng))
        img = img.filter(ImageFilter.GaussianBlur(radius=size * rng.uniform(0.03, 0.12)))
        arr = np.clip(np.asarray(img, dtype=np.float32) + rng.normal(0, 6, (size, size, 3)), 0, 255).astype(np.uint8)
        out.append(Image.fromarray(arr))
    return _to_tensor(out), out
