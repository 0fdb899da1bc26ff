"""Property: whatever bytes, modes, sizes and file names a pool holds, ``load_pool`` returns finite
images in [0, 1] of the right shape, or raises InputError (exit 2); never anything else.

Inputs: valid images of random mode and size in every format the pool reads, then truncated,
byte-flipped, spliced, or replaced by random bytes; random (often non-UTF-8) file names; the same
files as a folder or as a (possibly corrupted) tar. The default run draws 300 examples; the
``bench`` marker runs the same property at 10,000 (``python -m pytest -m bench tests/test_fuzz_pool.py``).
"""

from __future__ import annotations

import io
import os
import tarfile
import tempfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from ci_gate.errors import InputError
from ci_gate.pool import load_pool, to_model_input

# format -> modes Pillow can write in it
WRITABLE = {
    "PNG": ["1", "L", "LA", "P", "RGB", "RGBA", "I;16"],
    "JPEG": ["L", "RGB", "CMYK"],
    "GIF": ["P", "L"],
    "TIFF": ["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "I", "F", "YCbCr"],
    "BMP": ["1", "L", "P", "RGB"],
    "WEBP": ["RGB", "RGBA"],
}
SUFFIX = {"PNG": ".png", "JPEG": ".jpg", "GIF": ".gif", "TIFF": ".tif", "BMP": ".bmp", "WEBP": ".webp"}
MEMORY_MODES = ["1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV", "I", "I;16", "I;16B", "F"]


def _image(mode: str, w: int, h: int, seed: int, flat: bool, scale: float) -> Image.Image:
    rng = np.random.default_rng(seed)
    if flat:
        base = np.full((h, w, 3), rng.integers(0, 256, 3), np.uint8)
    else:
        base = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    rgb = Image.fromarray(base)
    if mode == "I;16":
        return Image.fromarray((base[..., 0].astype(np.uint16) * 257))
    if mode == "I;16B":
        return Image.frombytes("I;16B", (w, h), (base[..., 0].astype(">u2") * 257).tobytes())
    if mode == "I":
        return Image.fromarray((base[..., 0].astype(np.int64) * int(scale * 1e6) - 2**20).clip(-(2**31), 2**31 - 1).astype(np.int32))
    if mode == "F":
        arr = base[..., 0].astype(np.float32) / 255.0 * scale
        if seed % 7 == 0:
            arr[0, 0] = np.nan
        return Image.fromarray(arr)
    if mode == "PA":
        return rgb.convert("RGBA").convert("PA")
    if mode == "LAB":
        return Image.merge("LAB", [Image.fromarray(base[..., i]) for i in range(3)])
    if mode == "RGBa":
        return rgb.convert("RGBA").convert("RGBa")
    return rgb.convert(mode)


@st.composite
def image_bytes(draw) -> bytes:
    fmt = draw(st.sampled_from(sorted(WRITABLE)))
    mode = draw(st.sampled_from(WRITABLE[fmt]))
    w, h = draw(st.integers(1, 48)), draw(st.integers(1, 48))
    img = _image(mode, w, h, draw(st.integers(0, 2**16)), draw(st.booleans()), draw(st.sampled_from([1.0, 255.0, 1e-3])))
    buf = io.BytesIO()
    extra = {"save_all": True, "append_images": [img.copy()]} if fmt in ("GIF", "PNG", "WEBP") and draw(st.booleans()) else {}
    try:
        img.save(buf, format=fmt, **extra)
    except (OSError, ValueError, KeyError):  # a mode/format pair this Pillow cannot write
        buf = io.BytesIO()
        Image.new("RGB", (w, h), (1, 2, 3)).save(buf, format="PNG")
    data = buf.getvalue()
    how = draw(st.sampled_from(["intact", "truncate", "flip", "splice", "random"]))
    if how == "truncate":
        data = data[: draw(st.integers(0, max(0, len(data) - 1)))]
    elif how == "flip":
        raw = bytearray(data)
        for _ in range(draw(st.integers(1, 8))):
            raw[draw(st.integers(0, len(raw) - 1))] = draw(st.integers(0, 255))
        data = bytes(raw)
    elif how == "splice":
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.binary(min_size=1, max_size=64)) + data[at + draw(st.integers(0, 64)) :]
    elif how == "random":
        data = draw(st.binary(max_size=512))
    return data


names = st.binary(min_size=1, max_size=12).filter(lambda b: b"/" not in b and b"\0" not in b and b not in (b".", b".."))
suffixes = st.sampled_from([b".png", b".jpg", b".gif", b".tif", b".bmp", b".webp", b".PNG", b".jpeg"])
pools = st.lists(st.tuples(names, suffixes, image_bytes()), min_size=1, max_size=5)


def _check(pool, size: int) -> None:
    n = len(pool.names)
    assert n >= 1 and pool.images.shape == (n, 3, size, size)
    assert bool(pool.images.isfinite().all())
    assert float(pool.images.min()) >= 0.0 and float(pool.images.max()) <= 1.0
    assert all(name.encode("utf-8") for name in pool.names)
    assert all(reason.encode("utf-8") and "\n" not in reason for _, reason in pool.skipped)


def _property(files, as_tar: bool, tar_damage: int | None, size: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = os.path.join(os.fsencode(tmp), b"pool")
        os.mkdir(root)
        for stem, suffix, data in files:
            with open(os.path.join(root, stem + suffix), "wb") as fh:
                fh.write(data)
        spec = os.fsdecode(root)
        if as_tar:
            tar_path = os.path.join(tmp, "pool.tar")
            with tarfile.open(tar_path, "w", format=tarfile.GNU_FORMAT) as tar:
                for name in sorted(os.listdir(root)):
                    tar.add(os.path.join(root, name), arcname=os.fsdecode(name))
            if tar_damage is not None:
                raw = bytearray(open(tar_path, "rb").read())
                raw[tar_damage % len(raw)] ^= 0xFF
                open(tar_path, "wb").write(bytes(raw))
            spec = tar_path
        try:
            pool = load_pool(spec, size, 1, 4)
        except InputError as err:
            assert err.exit_code == 2 and "\n" not in str(err) and str(err).encode("utf-8")
            return
        _check(pool, size)


# database=None: nothing written into the shared working tree; the default run is derandomized so CI
# sees the same 300 examples every time, the bench run explores new ones.
_COMMON = dict(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@settings(max_examples=300, derandomize=True, **_COMMON)
@given(files=pools, as_tar=st.booleans(), tar_damage=st.none() | st.integers(0, 2**20), size=st.sampled_from([8, 16]))
def test_load_pool_returns_valid_images_or_an_input_error(files, as_tar, tar_damage, size):
    _property(files, as_tar, tar_damage, size)


@pytest.mark.bench
@settings(max_examples=10_000, **_COMMON)
@given(files=pools, as_tar=st.booleans(), tar_damage=st.none() | st.integers(0, 2**20), size=st.sampled_from([8, 16]))
def test_load_pool_fuzz_10k(files, as_tar, tar_damage, size):
    _property(files, as_tar, tar_damage, size)


def _model_input_property(mode, w, h, seed, flat, scale, size) -> None:
    img = _image(mode, w, h, seed, flat, scale)
    try:
        out = to_model_input(img, size)
    except ValueError as err:  # float images outside [0, 1] are refused, with a reason
        assert mode == "F" and "float" in str(err)
        return
    assert out.shape == (size, size, 3) and out.dtype == np.uint8


model_inputs = dict(
    mode=st.sampled_from(MEMORY_MODES), w=st.integers(1, 300), h=st.integers(1, 300), seed=st.integers(0, 2**16),
    flat=st.booleans(), scale=st.sampled_from([1.0, 255.0, 1e-3]), size=st.sampled_from([8, 16, 32]),
)  # fmt: skip


@settings(max_examples=300, derandomize=True, **_COMMON)
@given(**model_inputs)
def test_to_model_input_handles_every_mode_and_shape(mode, w, h, seed, flat, scale, size):
    _model_input_property(mode, w, h, seed, flat, scale, size)


@pytest.mark.bench
@settings(max_examples=10_000, **_COMMON)
@given(**model_inputs)
def test_to_model_input_fuzz_10k(mode, w, h, seed, flat, scale, size):
    _model_input_property(mode, w, h, seed, flat, scale, size)
