"""The OOD image pool: a folder (recursive), a glob, or a .tar of unlabeled images.

Images are decoded with Pillow, converted to RGB (greyscale and palette files are common in
scraped pools), resized so the short side matches the model's input and centre-cropped, and kept
in [0, 1] pixel space: normalisation belongs to the classifier, after the perturbation. Files
that do not decode are skipped and counted; a tar is read in memory and never extracted.
"""

from __future__ import annotations

import glob
import hashlib
import io
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ci_gate.errors import InputError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


@dataclass
class Pool:
    images: torch.Tensor  # (N, 3, S, S) float32 in [0, 1]
    names: list[str]
    source: str
    sha256: str
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return self.images.shape[0]


def to_model_input(img: Image.Image, size: int, interpolation: str = "bicubic") -> np.ndarray:
    """Resize the short side to ``size`` and centre-crop, as open_clip's 'shortest' mode does."""
    img = img.convert("RGB")
    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((nw, nh), _RESAMPLE[interpolation])
    left, top = (nw - size) // 2, (nh - size) // 2
    img = img.crop((left, top, left + size, top + size))
    return np.asarray(img, dtype=np.uint8)


def _iter_sources(spec: str) -> tuple[str, list[tuple[str, bytes]]]:
    path = Path(spec)
    if path.is_file() and tarfile.is_tarfile(path):
        items = []
        with tarfile.open(path) as tar:
            for member in tar:
                if member.isfile() and Path(member.name).suffix.lower() in IMAGE_SUFFIXES:
                    fh = tar.extractfile(member)
                    if fh is not None:
                        items.append((member.name, fh.read()))
        return "tar", items
    if path.is_dir():
        files = [p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
        return "folder", [(p.relative_to(path).as_posix(), p.read_bytes()) for p in files]
    if path.is_file():
        raise InputError(spec, "pool must be a folder, a glob or a .tar of images")
    matches = [Path(m) for m in glob.glob(spec, recursive=True)]
    files = [p for p in matches if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    if not matches:
        raise InputError(spec, "pool not found (no such folder, tar or glob matches)")
    return "glob", [(p.as_posix(), p.read_bytes()) for p in files]


def load_pool(
    spec: str | Path,
    image_size: int,
    min_images: int,
    max_images: int,
    interpolation: str = "bicubic",
    seed: int = 0,
) -> Pool:
    """Decode the pool deterministically; raise InputError when fewer than ``min_images`` are usable.

    When the source holds more than ``max_images`` usable files, a seeded sample is taken so a
    large pool costs no more than the policy allows and the same seed picks the same images.
    """
    spec = str(spec)
    _, items = _iter_sources(spec)
    items.sort(key=lambda kv: kv[0])
    if len(items) > max_images:
        # decode a seeded subset (plus headroom for unreadable files) rather than the whole source
        order = np.random.default_rng(seed).permutation(len(items))
        items = [items[i] for i in order]
    arrays: list[np.ndarray] = []
    names: list[str] = []
    skipped: list[tuple[str, str]] = []
    digest_rows: list[str] = []
    for name, data in items:
        if len(arrays) >= max_images:
            break
        try:
            with Image.open(io.BytesIO(data)) as img:
                img.load()
                arr = to_model_input(img, image_size, interpolation)
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
            skipped.append((name, type(exc).__name__))
            continue
        arrays.append(arr)
        names.append(name)
        digest_rows.append(f"{name}\t{hashlib.sha256(data).hexdigest()}")
    if len(arrays) < min_images:
        raise InputError(spec, f"pool has {len(arrays)} usable images ({len(skipped)} unreadable), the policy needs at least {min_images}")
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div_(255.0)
    sha = hashlib.sha256("\n".join(sorted(digest_rows)).encode()).hexdigest()
    return Pool(images=images.contiguous(), names=names, source=spec, sha256=sha, skipped=skipped)
