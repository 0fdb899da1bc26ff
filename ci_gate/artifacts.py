"""Images and tensors a scan leaves next to result.json for reporters (which never import torch)."""

from __future__ import annotations

import io
import json
import re
import struct
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save as st_save

from ci_gate.io import atomic_write_bytes
from ci_gate.report.artifacts import trigger_gain

MIN_PNG_SIDE = 128
# The index prefix makes a slug unique; the name part is only a hint for people browsing the
# folder. Bounded, so a 10,000-character class name cannot exceed the filesystem's name limit.
SLUG_NAME_LIMIT = 48


def slug(index: int, name: str) -> str:
    hint = re.sub(r"[^A-Za-z0-9]+", "-", name[: SLUG_NAME_LIMIT * 4]).strip("-").lower()[:SLUG_NAME_LIMIT].strip("-")
    return f"{index:03d}_{hint or 'class'}"


def safetensors_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """safetensors bytes whose header is canonical: the library writes its metadata map in hash
    order, so two saves of the same tensors differed. Keys sorted, compact JSON, the same
    8-byte space padding the format asks for; tensor offsets are relative to the data section and
    do not move."""
    raw = st_save(tensors, metadata=metadata)
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + raw[8 + n :]


def png_bytes(image01: torch.Tensor) -> bytes:
    arr = (image01.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    img = Image.fromarray(arr)
    side = img.size[0]
    if side < MIN_PNG_SIDE:  # small models: upscale with nearest so pixels stay honest
        factor = -(-MIN_PNG_SIDE // side)
        img = img.resize((side * factor, side * factor), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def save_image(path: Path, image: Image.Image) -> None:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def write_png(path: Path, image01: torch.Tensor) -> None:
    atomic_write_bytes(path, png_bytes(image01))


def amplify(delta: torch.Tensor, epsilon: float) -> torch.Tensor:
    """Map [-eps, eps] to [0, 1] so a 4/255 trigger is visible (grey = no change). The reports
    state this gain next to the images, so it is defined once, in the torch-free reporter."""
    return delta * trigger_gain(epsilon) + 0.5


def trigger_paths(index: int, name: str) -> tuple[str, str]:
    """Where a class's trigger PNG and tensor sit in a report folder (relative paths)."""
    base = f"triggers/{slug(index, name)}"
    return f"{base}.png", f"{base}.safetensors"


def example_paths(index: int, name: str, i: int) -> tuple[str, str]:
    """The i-th clean/triggered example pair of a class (relative paths)."""
    base = f"examples/{slug(index, name)}_{i}"
    return f"{base}_clean.png", f"{base}_triggered.png"


def trigger_png_bytes(delta: torch.Tensor, epsilon: float) -> bytes:
    return png_bytes(amplify(delta, epsilon))


def trigger_tensor_bytes(delta: torch.Tensor, name: str, epsilon: float, mask: torch.Tensor | None = None, pattern: torch.Tensor | None = None) -> bytes:
    if mask is None:
        return safetensors_bytes({"delta": delta.contiguous()}, {"class": name, "epsilon": repr(epsilon)})
    # patch family: x' = (1 - mask) x + mask pattern; "delta" is its change to a mid-grey image
    tensors = {"delta": delta.contiguous(), "mask": mask.contiguous(), "pattern": pattern.contiguous()}
    return safetensors_bytes(tensors, {"class": name, "family": "patch"})


def write_trigger(out_dir: Path, index: int, name: str, delta: torch.Tensor, epsilon: float) -> tuple[str, str]:
    png, tensor = trigger_paths(index, name)
    atomic_write_bytes(out_dir / png, trigger_png_bytes(delta, epsilon))
    atomic_write_bytes(out_dir / tensor, trigger_tensor_bytes(delta, name, epsilon))
    return png, tensor
