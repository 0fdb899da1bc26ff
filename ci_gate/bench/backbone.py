"""The benchmark's backbone: a small open_clip CLIP pretrained here, from scratch, seeded.

Recipe (all in code, cached outside the repository under ``<cache>/backbone-<digest>/``):
- corpus: ``tiny-imagenet/train`` (202 classes x 150 images) plus ``cifar10/train`` (10 classes x
  200 images), all resized to 32 px. The CIFAR captions widen the vocabulary: a CLIP trained
  only on Tiny-ImageNet captions never saw words like "automobile" or "airplane", and prompt
  tuning cannot teach a class name (see ../shared/data/README.md);
- captions "a photo of a {name}." and three other templates, one random template per class and
  step; each image is scored against every class caption (class-caption contrastive CE);
- architecture ``tiny-32`` (ci_gate.model.small), AdamW, one-cycle LR, flip + shift augmentation.

Text encoding is truncated to the longest caption (exact for CLIP's causal text tower, see
ci_gate/model/text.py); that makes a pretraining step about 4x cheaper than open_clip's
77-token ``encode_text``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from open_clip.model import CLIP
from open_clip.tokenizer import SimpleTokenizer
from safetensors.torch import load_file, save_file

from ci_gate.data import LabeledImages, load_labeled_folder
from ci_gate.model.small import small_config
from ci_gate.tuning.pretrain import MEAN, STD, TEMPLATES, _augment

Log = Callable[[str], None]


@dataclass(frozen=True)
class BackboneRecipe:
    config: str = "tiny-32"
    image_size: int = 32
    epochs: int = 24
    lr: float = 3e-3
    weight_decay: float = 0.1
    batch_size: int = 128
    seed: int = 0
    with_cifar_captions: bool = True

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


def tiny_imagenet_names(root: Path) -> dict[str, str]:
    """wnid -> unique readable class name (first comma-separated name of words.txt)."""
    words = {}
    for line in (root / "words.txt").read_text(encoding="utf-8").splitlines():
        wnid, _, names = line.partition("\t")
        words[wnid] = names.split(",")[0].strip()
    wnids = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
    out, seen = {}, set()
    for w in wnids:
        name = words.get(w, w)
        if name.lower() in seen:
            name = f"{name} {w}"
        seen.add(name.lower())
        out[w] = name
    return out


def _cached_folder(root: Path, size: int, cache: Path, per_class: int | None = None, seed: int = 0) -> LabeledImages:
    """load_labeled_folder with a tensor cache (decoding 30k JPEGs takes a while)."""
    key = hashlib.sha256(f"{root.resolve()}|{size}|{per_class}|{seed}".encode()).hexdigest()[:12]
    path = cache / "data" / f"{root.name}-{root.parent.name}-{size}-{key}.pt"
    if path.is_file():
        d = torch.load(path, weights_only=True)
        return LabeledImages(d["images"].float().div(255), d["labels"], list(d["names"].split("\n")))
    data = load_labeled_folder(root, size, per_class=per_class, seed=seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    images_u8 = data.images.mul(255).round().to(torch.uint8)
    torch.save({"images": images_u8, "labels": data.labels, "names": "\n".join(data.class_names)}, tmp)
    tmp.replace(path)
    return data


def tiny_imagenet(data_root: Path, split: str, size: int, cache: Path) -> LabeledImages:
    """Tiny-ImageNet split with readable class names (wnid folders renamed)."""
    names = tiny_imagenet_names(data_root / "tiny-imagenet")
    d = _cached_folder(data_root / "tiny-imagenet" / split, size, cache)
    return LabeledImages(d.images, d.labels, [names.get(w, w) for w in d.class_names])


def cifar10(data_root: Path, split: str, size: int, cache: Path) -> LabeledImages:
    return _cached_folder(data_root / "cifar10" / split, size, cache)


def pretraining_corpus(data_root: Path, recipe: BackboneRecipe, cache: Path) -> LabeledImages:
    tin = tiny_imagenet(data_root, "train", recipe.image_size, cache)
    if not recipe.with_cifar_captions:
        return tin
    cif = cifar10(data_root, "train", recipe.image_size, cache)
    names = list(tin.class_names)
    lower = {n.lower(): i for i, n in enumerate(names)}
    remap = []
    for n in cif.class_names:
        if n.lower() in lower:
            remap.append(lower[n.lower()])
        else:
            lower[n.lower()] = len(names)
            remap.append(len(names))
            names.append(n)
    labels = torch.tensor(remap)[cif.labels]
    return LabeledImages(torch.cat([tin.images, cif.images]), torch.cat([tin.labels, labels]), names)


def encode_text_truncated(clip: CLIP, tokens: torch.Tensor) -> torch.Tensor:
    """open_clip's encode_text on the shortest prefix holding every EOS (exact; causal mask)."""
    eos = tokens.argmax(dim=-1)
    length = int(eos.max()) + 1
    x = clip.token_embedding(tokens[:, :length]) + clip.positional_embedding[:length]
    x = clip.transformer(x, attn_mask=clip.attn_mask[:length, :length])
    x = clip.ln_final(x)
    return x[torch.arange(x.shape[0]), eos] @ clip.text_projection


def pretrain(clip: CLIP, tokenizer, data: LabeledImages, recipe: BackboneRecipe, log: Log | None = None) -> CLIP:
    torch.manual_seed(recipe.seed)
    gen = torch.Generator().manual_seed(recipe.seed)
    clip.train()
    captions = tokenizer([t.format(n.replace("_", " ")) for n in data.class_names for t in TEMPLATES])
    n_t, n_c = len(TEMPLATES), len(data.class_names)
    steps = recipe.epochs * ((len(data) + recipe.batch_size - 1) // recipe.batch_size)
    opt = torch.optim.AdamW(clip.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.lr, total_steps=steps, pct_start=0.1)
    for epoch in range(recipe.epochs):
        t0 = time.perf_counter()
        perm = torch.randperm(len(data), generator=gen)
        correct, total = 0, 0.0
        for idx in perm.split(recipe.batch_size):
            x, y = _augment(data.images[idx], gen), data.labels[idx]
            img = F.normalize(clip.encode_image((x - MEAN) / STD), dim=-1)
            rows = torch.arange(n_c) * n_t + torch.randint(0, n_t, (n_c,), generator=gen)
            txt = F.normalize(encode_text_truncated(clip, captions[rows]), dim=-1)
            logits = clip.logit_scale.exp() * img @ txt.t()
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            with torch.no_grad():
                clip.logit_scale.clamp_(0, 4.6052)
            correct += int((logits.argmax(1) == y).sum())
            total += float(loss.detach()) * len(idx)
        if log:
            log(f"pretrain epoch {epoch + 1}/{recipe.epochs} loss {total / len(data):.3f} train acc {correct / len(data):.3f} ({time.perf_counter() - t0:.0f} s)")
    clip.eval()
    for p in clip.parameters():
        p.requires_grad_(False)
    return clip


def zero_shot(clip: CLIP, tokenizer, data: LabeledImages, batch_size: int = 512) -> float:
    with torch.no_grad():
        txt = F.normalize(encode_text_truncated(clip, tokenizer([TEMPLATES[0].format(n.replace("_", " ")) for n in data.class_names])), dim=-1)
        correct = 0
        for x, y in zip(data.images.split(batch_size), data.labels.split(batch_size)):
            img = F.normalize(clip.encode_image((x - MEAN) / STD), dim=-1)
            correct += int(((img @ txt.t()).argmax(1) == y).sum())
    return correct / len(data)


@dataclass
class CachedBackbone:
    config: dict
    state: dict[str, torch.Tensor]
    info: dict
    path: Path


def get_backbone(data_root: Path, cache: Path, recipe: BackboneRecipe = BackboneRecipe(), log: Log | None = None) -> CachedBackbone:
    """Load the cached backbone for this recipe, or pretrain it (seeded) and cache it."""
    folder = cache / f"backbone-{recipe.digest()}"
    weights, info_path = folder / "backbone.safetensors", folder / "info.json"
    config = small_config(recipe.config)
    if weights.is_file() and info_path.is_file():
        return CachedBackbone(config, load_file(str(weights)), json.loads(info_path.read_text()), folder)
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    corpus = pretraining_corpus(data_root, recipe, cache)
    if log:
        log(f"pretraining corpus: {len(corpus)} images, {len(corpus.class_names)} captioned classes")
    torch.manual_seed(recipe.seed)
    clip = CLIP(**copy.deepcopy(config))
    tok = SimpleTokenizer()
    pretrain(clip, tok, corpus, recipe, log)
    t_train = time.perf_counter() - t0
    val = tiny_imagenet(data_root, "val", recipe.image_size, cache)
    info = {
        "recipe": asdict(recipe),
        "pretrain_s": round(t_train, 1),
        "corpus_images": len(corpus),
        "corpus_classes": len(corpus.class_names),
        "zero_shot_tiny_imagenet_val": zero_shot(clip, tok, val),
        "zero_shot_cifar10_test": zero_shot(clip, tok, cifar10(data_root, "test", recipe.image_size, cache)),
    }
    state = {k: v.detach().clone().contiguous() for k, v in clip.state_dict().items()}
    save_file(state, str(folder / "backbone.tmp"))
    (folder / "backbone.tmp").replace(weights)
    info_path.write_text(json.dumps(info, indent=2))
    if log:
        log(f"backbone cached at {folder}: {json.dumps(info)}")
    return CachedBackbone(config, state, info, folder)
