"""Pretrain a small CLIP from scratch (no pretrained weights can be downloaded on air-gapped
runners, and the demo, the tests and the benchmark need a backbone that actually sees).

The objective is CLIP's image-to-text contrastive loss against the captions of every class in
the corpus ("a photo of a {name}." and other templates), which trains both towers. With few
classes per batch, the classic in-batch InfoNCE treats same-class pairs as negatives; scoring
each image against all class captions avoids that.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from open_clip.model import CLIP

from ci_gate.data import LabeledImages

TEMPLATES = ("a photo of a {}.", "a picture of a {}.", "an image of a {}.", "a photo of the {}.")
MEAN = torch.tensor((0.48145466, 0.4578275, 0.40821073)).view(1, 3, 1, 1)
STD = torch.tensor((0.26862954, 0.26130258, 0.27577711)).view(1, 3, 1, 1)


@dataclass(frozen=True)
class PretrainSettings:
    epochs: int = 10
    lr: float = 1e-3
    weight_decay: float = 0.1
    batch_size: int = 128
    seed: int = 0
    augment: bool = True


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    flip = torch.rand(x.shape[0], generator=gen) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    pad = max(1, x.shape[-1] // 8)
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    i, j = (int(v) for v in torch.randint(0, 2 * pad + 1, (2,), generator=gen))
    return padded[..., i : i + x.shape[-2], j : j + x.shape[-1]]


TextEncoder = Callable[[CLIP, torch.Tensor], torch.Tensor]


def full_text(clip: CLIP, tokens: torch.Tensor) -> torch.Tensor:
    return clip.encode_text(tokens)


def truncated_text(clip: CLIP, tokens: torch.Tensor) -> torch.Tensor:
    """open_clip's encode_text on the shortest prefix holding every EOS: the same features (the
    text tower is causal) for a fraction of the 77-token cost."""
    eos = tokens.argmax(dim=-1)
    length = int(eos.max()) + 1
    x = clip.token_embedding(tokens[:, :length]) + clip.positional_embedding[:length]
    x = clip.transformer(x, attn_mask=clip.attn_mask[:length, :length])
    x = clip.ln_final(x)
    return x[torch.arange(x.shape[0]), eos] @ clip.text_projection


def pretrain_clip(
    clip: CLIP,
    tokenizer,
    data: LabeledImages,
    settings: PretrainSettings,
    log: Callable[[str], None] | None = None,
    encode_text: TextEncoder = full_text,
) -> CLIP:
    gen = torch.Generator().manual_seed(settings.seed)  # every draw of the run; the global one is not read
    clip.train()
    for p in clip.parameters():
        p.requires_grad_(True)
    captions = tokenizer([t.format(n.replace("_", " ")) for n in data.class_names for t in TEMPLATES])
    n_t = len(TEMPLATES)
    steps = settings.epochs * ((len(data) + settings.batch_size - 1) // settings.batch_size)
    opt = torch.optim.AdamW(clip.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=settings.lr, total_steps=steps, pct_start=0.1)
    for epoch in range(settings.epochs):
        t0 = time.perf_counter()
        perm = torch.randperm(len(data), generator=gen)
        correct, total_loss = 0, 0.0
        for idx in perm.split(settings.batch_size):
            x, y = data.images[idx], data.labels[idx]
            if settings.augment:
                x = _augment(x, gen)
            img = F.normalize(clip.encode_image((x - MEAN) / STD), dim=-1)
            # one random template per class per step keeps the text pass small
            pick = torch.randint(0, n_t, (len(data.class_names),), generator=gen)
            rows = torch.arange(len(data.class_names)) * n_t + pick
            txt = F.normalize(encode_text(clip, captions[rows]), dim=-1)
            logits = clip.logit_scale.exp() * img @ txt.t()
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            with torch.no_grad():
                clip.logit_scale.clamp_(0, 4.6052)
            correct += int((logits.argmax(1) == y).sum())
            total_loss += float(loss.detach()) * len(idx)
        if log:
            log(f"pretrain epoch {epoch + 1}/{settings.epochs} loss {total_loss / len(data):.3f} train acc {correct / len(data):.3f} ({time.perf_counter() - t0:.0f} s)")
    clip.eval()
    for p in clip.parameters():
        p.requires_grad_(False)
    return clip


def zero_shot_accuracy(clip: CLIP, tokenizer, data: LabeledImages, batch_size: int = 256, encode_text: TextEncoder = full_text) -> float:
    with torch.no_grad():
        txt = F.normalize(encode_text(clip, tokenizer([TEMPLATES[0].format(n.replace("_", " ")) for n in data.class_names])), dim=-1)
        correct = 0
        for x, y in zip(data.images.split(batch_size), data.labels.split(batch_size)):
            img = F.normalize(clip.encode_image((x - MEAN) / STD), dim=-1)
            correct += int(((img @ txt.t()).argmax(1) == y).sum())
    return correct / len(data)
