"""Labeled image folders (one sub-folder per class), for prompt tuning, repair and the canary."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ci_gate.errors import InputError
from ci_gate.pool import IMAGE_SUFFIXES, to_model_input


@dataclass
class LabeledImages:
    images: torch.Tensor  # (N, 3, S, S) in [0, 1]
    labels: torch.Tensor  # (N,) int64 indices into class_names
    class_names: list[str]

    def __len__(self) -> int:
        return self.images.shape[0]

    def subset(self, idx: torch.Tensor) -> "LabeledImages":
        return LabeledImages(self.images[idx], self.labels[idx], self.class_names)


def load_labeled_folder(
    root: str | Path,
    image_size: int,
    class_names: list[str] | None = None,
    per_class: int | None = None,
    seed: int = 0,
) -> LabeledImages:
    """Read ``root/<class>/*.jpg``. With ``class_names`` the folders must match those names
    (underscores and spaces are interchangeable); ``per_class`` takes a seeded k-shot sample."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(root, "labeled data folder not found")
    folders = {p.name: p for p in sorted(root.iterdir()) if p.is_dir()}
    if not folders:
        raise InputError(root, "no class sub-folders (expected ROOT/<class name>/<images>)")
    if class_names is None:
        class_names = list(folders)
    key = {n.replace("_", " ").lower(): n for n in folders}
    missing = [c for c in class_names if c.replace("_", " ").lower() not in key]
    if missing:
        raise InputError(root, f"no folder for classes {missing[:5]} (found {list(folders)[:5]}...)")
    unknown = [n for n in folders if n.replace("_", " ").lower() not in {c.replace('_', ' ').lower() for c in class_names}]
    if unknown:
        raise InputError(root, f"folders {unknown[:5]} are not classes of this model")
    rng = np.random.default_rng(seed)
    arrays, labels = [], []
    for label, name in enumerate(class_names):
        files = sorted(p for p in folders[key[name.replace("_", " ").lower()]].rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if per_class is not None and len(files) > per_class:
            files = [files[i] for i in sorted(rng.choice(len(files), per_class, replace=False))]
        for f in files:
            try:
                with Image.open(f) as img:
                    arrays.append(to_model_input(img, image_size))
                    labels.append(label)
            except (UnidentifiedImageError, OSError):
                continue
    if not arrays:
        raise InputError(root, "no readable images")
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div_(255.0).contiguous()
    return LabeledImages(images, torch.tensor(labels), list(class_names))
