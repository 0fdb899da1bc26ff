"""The OOD image pool: a folder (recursive), a glob, or a .tar of unlabeled images.

Images are decoded with Pillow and mapped into RGB, resized so the short side matches the model's
input and centre-cropped, and kept in [0, 1] pixel space: normalisation belongs to the classifier,
after the perturbation. Files that do not decode are skipped and counted; a tar is read in memory
and never extracted.

What the loader guarantees, and why:

- **Every mode Pillow opens means what the file says.** Pillow's own ``convert("RGB")`` clips
  16- and 32-bit integer images at 255 (a 16-bit PNG pool came out all white) and floors float
  images to 0, so those modes are scaled here: integer images by their bit depth (the TIFF
  ``BitsPerSample`` tag when present, 16 for PNG and other ``I;16`` sources, otherwise 16 or 32
  bits, whichever holds the largest value); float images (``F``) by the convention of float
  image files (Photoshop/GIMP 32-bit, tifffile, scikit-image: 0.0 is black and 1.0 is white),
  and a float image whose values are mostly outside [0, 1] (a depth map, a 0..255 float dump) is
  refused rather than guessed at. CMYK uses the embedded ICC profile when there is one (Pillow's
  naive formula otherwise). Transparency is composited over white (:data:`ALPHA_BACKGROUND`), the
  page a viewer shows a transparent image on, rather than dropped: dropping alpha exposes
  whatever colour an encoder left under transparent pixels, often black. Animated GIF/WebP/PNG
  files contribute their first frame.
- **List, sample, then read.** Sources (ci_gate/pool_sources/, one module per kind) are listed
  (names and sizes only) in sorted order, a seeded permutation picks the order, and only as many
  files are read and decoded as it takes to collect ``max_images`` usable ones. A tar's sampled members are read in archive order, so a compressed
  tar is streamed rather than re-decompressed for each member.
- **Bounded decoding.** JPEGs much larger than the model input are decoded at a reduced DCT scale
  (``Image.draft``); anything still above :data:`MAX_PIXELS` pixels, or a file above
  :data:`MAX_FILE_BYTES`, is skipped with a reason before its pixels are decoded.
- **No degenerate pools.** Constant images, byte-identical files and near-duplicates (the same
  picture re-encoded or rescaled) are skipped with reasons; if fewer than ``min_images`` distinct
  usable images remain, the pool is an input error. A scan over 200 copies of one image, or over
  blank frames, would otherwise look like a well-populated pool and could pass a backdoored model.
- **Folders are walked without following symlinked folders** (no cycles, no escape), and a
  symlinked file is read only when it resolves inside the pool. File names that are not UTF-8 are
  kept, shown with backslash escapes (``caf\\xe9.png``).
- Same listing and seed: the same images, names, order and ``sha256``.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ci_gate.errors import InputError
from ci_gate.pool_sources import IMAGE_SUFFIXES, MAX_FILE_BYTES, Entry, Listing, display_name, open_source  # noqa: F401  (IMAGE_SUFFIXES: ci_gate.data reads it here)

try:
    from PIL import ImageCms
except ImportError:  # Pillow built without littlecms: CMYK falls back to Pillow's formula
    ImageCms = None

_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}
# Content sniffing is limited to the formats the suffixes name (a .jpg that is really a PNG is common
# in scraped pools; JPEG covers MPO); plugins such as EPS would run external programs on untrusted files.
_FORMATS = ("JPEG", "PNG", "BMP", "GIF", "WEBP", "TIFF")

MAX_PIXELS = 50_000_000  # decoded pixels per image; a 50 MP RGB decode is 150 MB
ALPHA_BACKGROUND = (255, 255, 255)
# A JPEG is decoded at 1/2, 1/4 or 1/8 scale only while its short side stays >= this many times
# the model input: the antialiased bicubic resize then sees enough pixels that the result matches a
# full decode to within a grey level, and pools of ordinary photos decode exactly as open_clip does.
_DRAFT_HEADROOM = 4
# Pixel standard deviation (grey levels, per channel over the model-size image; the largest of the
# three) below which an image is blank:
# a re-encoded single-colour JPEG has about 0.5; the least varied photo of ImageNet-1k has 21.
CONSTANT_STD = 2.0
# Mean absolute difference (grey levels) between 16x16 thumbnails of the model inputs below which
# two images are the same picture. Measured at 224 and 32 px: JPEG re-encodes (quality 50..95) and
# half-resolution copies of ImageNet-1k photos are within 1.8, a copy brightened by 3 levels is at 3;
# the closest distinct pair of the 1000 ImageNet-1k photos is at 15.8, of the demo's synthetic pool 31.
NEAR_DUPLICATE_MAD = 4.0
_THUMB = 16


@dataclass
class Pool:
    images: torch.Tensor  # (N, 3, S, S) float32 in [0, 1]
    names: list[str]
    source: str
    sha256: str
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return self.images.shape[0]


class _Refused(ValueError):
    """An image that decodes but whose pixels have no agreed meaning (the reason is the message)."""


def _bit_depth(img: Image.Image, arr: np.ndarray) -> tuple[int, bool]:
    """(bits, signed) of an integer image, from the file where it says so."""
    tags = getattr(img, "tag_v2", None)
    if tags is not None:
        bps = tags.get(258)
        bps = bps[0] if isinstance(bps, tuple) and bps else bps
        fmt = tags.get(339)
        fmt = fmt[0] if isinstance(fmt, tuple) and fmt else fmt
        # trusted only when the pixels fit: a decoder may already have widened 12-bit samples
        if isinstance(bps, int) and 1 <= bps <= 32 and (arr.size == 0 or int(arr.max()) < 2**bps):
            return bps, fmt == 2
    if img.mode.startswith("I;16") or img.format == "PNG":
        return 16, False
    return (16 if arr.size == 0 or int(arr.max()) <= 65535 else 32), False


def _integer_to_l(img: Image.Image) -> Image.Image:
    arr = np.asarray(img)
    bits, signed = _bit_depth(img, arr)
    peak = float(2 ** (bits - 1) - 1 if signed else 2**bits - 1)
    scaled = np.clip(arr.astype(np.float64) / peak, 0.0, 1.0)
    return Image.fromarray(np.round(scaled * 255.0).astype(np.uint8))


def _float_to_l(img: Image.Image) -> Image.Image:
    arr = np.asarray(img, dtype=np.float64)
    if not np.isfinite(arr).all():
        raise _Refused("float image with NaN or infinite pixel values")
    outside = float(((arr < -0.01) | (arr > 1.01)).mean()) if arr.size else 0.0
    if outside > 0.01:
        raise _Refused(f"float pixel values span {arr.min():.4g}..{arr.max():.4g}, not the [0, 1] of float image files")
    return Image.fromarray(np.round(np.clip(arr, 0.0, 1.0) * 255.0).astype(np.uint8))


def _cmyk_to_rgb(img: Image.Image) -> Image.Image:
    icc = img.info.get("icc_profile")
    if icc and ImageCms is not None:
        try:
            profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            return ImageCms.profileToProfile(img, profile, ImageCms.createProfile("sRGB"), outputMode="RGB")
        except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
            pass  # a broken or non-CMYK profile: the naive formula is still a faithful rendering
    return img.convert("RGB")


def to_rgb(img: Image.Image) -> Image.Image:
    """Map any Pillow mode to 8-bit RGB as the file means it (see the module docstring)."""
    mode = img.mode
    if mode == "I" or mode.startswith("I;16"):
        return _integer_to_l(img).convert("RGB")
    if mode == "F":
        return _float_to_l(img).convert("RGB")
    if mode == "CMYK":
        return _cmyk_to_rgb(img)
    if img.has_transparency_data:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*ALPHA_BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def to_model_input(img: Image.Image, size: int, interpolation: str = "bicubic") -> np.ndarray:
    """Resize the short side to ``size`` and centre-crop, as open_clip's 'shortest' mode does.

    Returns (size, size, 3) uint8. An image not yet loaded is decoded at reduced scale when it is
    a JPEG far larger than ``size`` (see ``_DRAFT_HEADROOM``).
    """
    img.draft(None, (size * _DRAFT_HEADROOM, size * _DRAFT_HEADROOM))
    img = to_rgb(img)
    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    left, top = (nw - size) // 2, (nh - size) // 2
    resample = _RESAMPLE[interpolation]
    if nw * nh <= 16 * size * size:
        img = img.resize((nw, nh), resample).crop((left, top, left + size, top + size))
    else:
        # A sliver (1 x 10000) would be stretched into a huge intermediate; resizing only the
        # source region that the crop keeps is the same mapping without the allocation.
        box = (left * w / nw, top * h / nh, (left + size) * w / nw, (top + size) * h / nh)
        img = img.resize((size, size), resample, box=box)
    return np.asarray(img, dtype=np.uint8)


# -- decoding -------------------------------------------------------------------------------------


def _decode(data: bytes, size: int, interpolation: str, max_pixels: int) -> np.ndarray | str:
    """The model-size uint8 image, or the reason it is not usable."""
    with warnings.catch_warnings():
        # Pillow warns on hostile files (decompression bombs, odd palettes, truncated chunks);
        # the outcome is recorded as a skip reason, and a filterwarnings=error run must not turn
        # a warning into a different decision than a normal run makes.
        warnings.simplefilter("ignore")
        try:
            with Image.open(io.BytesIO(data), formats=_FORMATS) as img:
                img.draft(None, (size * _DRAFT_HEADROOM, size * _DRAFT_HEADROOM))
                w, h = img.size
                if w * h > max_pixels:
                    return f"too large: {w}x{h} is {w * h / 1e6:.0f} MP, over the {max_pixels / 1e6:.0f} MP cap"
                if w < 1 or h < 1:
                    return "unreadable: empty image"
                img.load()
                return to_model_input(img, size, interpolation)
        except Image.DecompressionBombError:
            return f"too large: over the {max_pixels / 1e6:.0f} MP cap"
        except _Refused as exc:
            return f"unusable: {exc}"
        except Exception as exc:  # noqa: BLE001 -- Pillow's decoders raise SyntaxError, struct.error,
            # EOFError, IndexError ... on malformed files; for an untrusted pool each is "unreadable".
            return f"unreadable: {type(exc).__name__}"


def _std(arr: np.ndarray) -> float:
    """The largest per-channel spatial standard deviation of a uint8 (H, W, 3) image.

    Per channel, so a flat purple image is as blank as a flat grey one; from histograms, so no
    float copy of the image is made.
    """
    levels = np.arange(256.0)
    worst = 0.0
    for c in range(arr.shape[-1]):
        counts = np.bincount(arr[..., c].reshape(-1), minlength=256).astype(np.float64)
        mean = counts @ levels / counts.sum()
        worst = max(worst, float(np.sqrt(max(counts @ (levels - mean) ** 2 / counts.sum(), 0.0))))
    return worst


def _thumbnail(arr: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(arr).resize((_THUMB, _THUMB), Image.Resampling.BOX), dtype=np.float32).reshape(-1)


def _summary(skipped: list[tuple[str, str]]) -> str:
    counts = Counter(reason.split(":", 1)[0] for _, reason in skipped)
    return ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items())) or "none"


def load_pool(
    spec: str | Path,
    image_size: int,
    min_images: int,
    max_images: int,
    interpolation: str = "bicubic",
    seed: int = 0,
    *,
    max_pixels: int = MAX_PIXELS,
) -> Pool:
    """Decode the pool deterministically; raise InputError when fewer than ``min_images`` are usable.

    When the source holds more than ``max_images`` files, a seeded permutation orders them and
    files are read only until ``max_images`` distinct usable images are collected, so a large pool
    costs no more than the policy allows and the same seed picks the same images.
    """
    spec = str(spec)
    shown_spec = display_name(spec)
    if not spec.strip():
        raise InputError("pool", "the pool path is empty")  # Path("") is the working directory
    skipped: list[tuple[str, str]] = []
    with open_source(spec, skipped) as listing:  # ci_gate.pool_sources: a folder, a glob, a tar...
        return _collect(listing, skipped, shown_spec, image_size, min_images, max_images, interpolation, seed, max_pixels)


def _read(listing: Listing, entry: Entry) -> bytes | str:
    # one place every read goes through, whatever the source (tests count the reads here)
    return listing.read(entry)


def _collect(listing: Listing, skipped, shown_spec, image_size, min_images, max_images, interpolation, seed, max_pixels) -> Pool:
    entries = sorted(listing.entries, key=lambda e: e.name)
    order = list(range(len(entries)))
    if len(entries) > max_images:
        order = [int(i) for i in np.random.default_rng(seed).permutation(len(entries))]
    arrays: list[np.ndarray] = []
    names: list[str] = []
    digest_rows: list[str] = []
    thumbs = np.empty((min(max_images, 256), _THUMB * _THUMB * 3), np.float32)  # grows by doubling
    coarses = np.empty((len(thumbs), 4 * 4 * 3), np.float32)
    first_by_bytes: dict[str, str] = {}  # file sha256 -> name of the accepted image
    first_by_pixels: dict[bytes, str] = {}  # model-input sha256 -> name
    decoded: dict[str, np.ndarray | str] = {}  # file sha256 -> decode outcome (same bytes, same pixels)
    pos = 0
    while len(arrays) < max_images and pos < len(order):
        batch = order[pos : pos + max_images - len(arrays)]
        pos += len(batch)
        # read in storage order (a compressed tar streams forward), accept in permutation order
        outcome: dict[int, tuple[str, np.ndarray | str]] = {}
        for i in sorted(batch, key=lambda i: (entries[i].order, i)):
            data = _read(listing, entries[i])
            if isinstance(data, str):
                outcome[i] = ("", data)
                continue
            if len(data) > MAX_FILE_BYTES:
                outcome[i] = ("", f"too large: file exceeds the {MAX_FILE_BYTES // 2**20} MiB cap")
                continue
            sha = hashlib.sha256(data).hexdigest()
            if sha not in decoded:
                decoded[sha] = _decode(data, image_size, interpolation, max_pixels)
            outcome[i] = (sha, decoded[sha])
        for i in batch:
            name = entries[i].name
            sha, result = outcome[i]
            if isinstance(result, str):
                skipped.append((name, result))
                continue
            if sha in first_by_bytes:
                skipped.append((name, f"duplicate: same bytes as {first_by_bytes[sha]}"))
                continue
            std = _std(result)
            if std < CONSTANT_STD:
                skipped.append((name, f"constant: pixel std {std:.2f} grey levels, a blank image"))
                continue
            pixels = hashlib.sha256(result.tobytes()).digest()
            if pixels in first_by_pixels:
                skipped.append((name, f"duplicate: same pixels as {first_by_pixels[pixels]}"))
                continue
            thumb = _thumbnail(result)
            coarse = thumb.reshape(4, 4, 4, 4, 3).mean(axis=(1, 3)).reshape(-1)
            n = len(arrays)
            if n:
                # The 4x4 block means' difference never exceeds the 16x16 one (triangle inequality),
                # so only images close at 4x4 need the full comparison: 16x less work per image.
                near = np.flatnonzero(np.abs(coarses[:n] - coarse).mean(axis=1) < NEAR_DUPLICATE_MAD + 1e-3)
                if near.size:
                    mad = np.abs(thumbs[near] - thumb).mean(axis=1)
                    j = int(mad.argmin())
                    if mad[j] < NEAR_DUPLICATE_MAD:
                        skipped.append((name, f"duplicate: near-copy of {names[near[j]]} (thumbnail difference {mad[j]:.2f} grey levels)"))
                        continue
            if n == len(thumbs):
                thumbs = np.concatenate([thumbs, np.empty_like(thumbs)])
                coarses = np.concatenate([coarses, np.empty_like(coarses)])
            thumbs[n] = thumb
            coarses[n] = coarse
            first_by_bytes[sha] = name
            first_by_pixels[pixels] = name
            arrays.append(result)
            names.append(name)
            digest_rows.append(f"{name}\t{sha}")
        # keep only the reasons: an accepted file's bytes are caught by first_by_bytes from now on
        decoded = {k: v for k, v in decoded.items() if isinstance(v, str)}
    if len(arrays) < min_images:
        raise InputError(
            shown_spec,
            f"pool has {len(arrays)} usable images, the policy needs at least {min_images} (skipped: {_summary(skipped)})",
        )
    stacked = np.stack(arrays) if arrays else np.empty((0, image_size, image_size, 3), np.uint8)
    del arrays, decoded
    # channels-first while still uint8: the float copy is then the only large allocation
    images = torch.from_numpy(stacked).permute(0, 3, 1, 2).contiguous().float().div_(255.0)
    sha = hashlib.sha256("\n".join(sorted(digest_rows)).encode()).hexdigest()
    return Pool(images=images, names=names, source=shown_spec, sha256=sha, skipped=skipped)
