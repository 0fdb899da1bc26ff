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
from open_clip.model import CLIP
from open_clip.tokenizer import SimpleTokenizer
from safetensors.torch import load_file, save_file

from ci_gate.data import LabeledImages, load_labeled_folder
from ci_gate.model.architecture import CONFIG_FILE, write_config_file
from ci_gate.model.small import small_config
from ci_gate.rng import global_rng
from ci_gate.tuning.pretrain import PretrainSettings, pretrain_clip, truncated_text, zero_shot_accuracy

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
        # the published architecture beside the published weights: what a scan with
        # --reference-weights checks the zoo's inline configs against
        if not (folder / CONFIG_FILE).is_file():
            write_config_file(folder, config)
        return CachedBackbone(config, load_file(str(weights)), json.loads(info_path.read_text()), folder)
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    corpus = pretraining_corpus(data_root, recipe, cache)
    if log:
        log(f"pretraining corpus: {len(corpus)} images, {len(corpus.class_names)} captioned classes")
    with global_rng(recipe.seed):  # open_clip's CLIP draws its initial weights from the global generator
        clip = CLIP(**copy.deepcopy(config))
    tok = SimpleTokenizer()
    settings = PretrainSettings(epochs=recipe.epochs, lr=recipe.lr, weight_decay=recipe.weight_decay, batch_size=recipe.batch_size, seed=recipe.seed)
    pretrain_clip(clip, tok, corpus, settings, log, encode_text=truncated_text)
    t_train = time.perf_counter() - t0
    val = tiny_imagenet(data_root, "val", recipe.image_size, cache)
    info = {
        "recipe": asdict(recipe),
        "pretrain_s": round(t_train, 1),
        "corpus_images": len(corpus),
        "corpus_classes": len(corpus.class_names),
        "zero_shot_tiny_imagenet_val": zero_shot_accuracy(clip, tok, val, encode_text=truncated_text),
        "zero_shot_cifar10_test": zero_shot_accuracy(clip, tok, cifar10(data_root, "test", recipe.image_size, cache), encode_text=truncated_text),
    }
    state = {k: v.detach().clone().contiguous() for k, v in clip.state_dict().items()}
    save_file(state, str(folder / "backbone.tmp"))
    (folder / "backbone.tmp").replace(weights)
    info_path.write_text(json.dumps(info, indent=2))
    write_config_file(folder, config)
    if log:
        log(f"backbone cached at {folder}: {json.dumps(info)}")
    return CachedBackbone(config, state, info, folder)
