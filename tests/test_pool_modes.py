"""The pool loader's hardening: every Pillow mode decodes to what the file means, only the sampled
files are read, decoding is bounded, degenerate pools are refused, odd names and symlinks are safe.

Hostile pools (``HOSTILE``, 19 cases, plus the empty pool path) each assert an InputError (exit 2) whose one-line message
names the pool and the problem, and that the pool is unchanged; ``CLI_HOSTILE`` (5 cases) runs the
same kind of pool through ``ci-gate verify`` in-process: exit 2, one line on stderr, no traceback,
nothing written.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import struct
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms

from ci_gate import pool as pool_mod
from ci_gate.errors import InputError
from ci_gate.pool import CONSTANT_STD, NEAR_DUPLICATE_MAD, load_pool, to_model_input

# -- helpers ----------------------------------------------------------------------------------------


def _noise(seed: int, size=(48, 40)) -> np.ndarray:
    """Smooth random colour fields: distinct per seed, far from constant, photo-like statistics."""
    low = np.random.default_rng(seed).integers(0, 256, (4, 4, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(low).resize(size, Image.Resampling.BICUBIC))


def _write_noise(folder: Path, n: int, start: int = 0, fmt: str = "png") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(start, start + n):
        p = folder / f"img{i:04d}.{fmt}"
        Image.fromarray(_noise(i)).save(p)
        paths.append(p)
    return paths


def _png(arr: np.ndarray, color_type: int, depth: int = 16, size: tuple[int, int] | None = None) -> bytes:
    """A PNG written by hand: Pillow cannot write 16-bit RGB/LA, and a header can claim any size."""
    h, w = arr.shape[:2]
    raw = b"".join(b"\x00" + arr[y].astype(">u2" if depth == 16 else "u1").tobytes() for y in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    w, h = size or (w, h)
    ihdr = struct.pack(">IIBBBBB", w, h, depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def _saved(img: Image.Image, fmt: str, **kw) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return Image.open(io.BytesIO(buf.getvalue()))


def _tree_digest(root: Path) -> dict[str, str]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            if os.path.islink(p):
                out[p] = "link:" + os.readlink(p)
            elif os.path.isfile(p):
                with open(p, "rb") as fh:
                    out[p] = hashlib.sha256(fh.read()).hexdigest()
            else:
                out[p] = "other"
    return out


def _lab_image(rgb) -> Image.Image:
    to_lab = ImageCms.buildTransform(ImageCms.createProfile("sRGB"), ImageCms.createProfile("LAB"), "RGB", "LAB")
    return ImageCms.applyTransform(Image.new("RGB", (16, 16), rgb), to_lab)


def _frames(fmt: str) -> Image.Image:
    frames = [Image.new("RGB", (16, 16), c) for c in ((220, 20, 20), (20, 20, 220))]
    extra = {"lossless": True} if fmt == "WEBP" else {}
    buf = io.BytesIO()
    frames[0].save(buf, format=fmt, save_all=True, append_images=frames[1:], duration=100, loop=0, **extra)
    img = Image.open(io.BytesIO(buf.getvalue()))
    assert getattr(img, "n_frames", 1) == 2
    return img


# -- every mode ---------------------------------------------------------------------------------------

G16 = np.full((16, 16), 32768, np.uint16)
MODES = {
    # name: (image factory, expected RGB in [0, 1])
    "I;16 png grey 32768": (lambda: Image.open(io.BytesIO(_png(G16, 0))), (0.5, 0.5, 0.5)),
    "I;16 png white 65535": (lambda: Image.open(io.BytesIO(_png(np.full((16, 16), 65535), 0))), (1, 1, 1)),
    "I;16 png dark 4096": (lambda: Image.open(io.BytesIO(_png(np.full((16, 16), 4096), 0))), (4096 / 65535,) * 3),
    "I;16 tiff": (lambda: _saved(Image.fromarray(G16), "TIFF"), (0.5, 0.5, 0.5)),
    "I;16B tiff": (lambda: _saved(Image.frombytes("I;16B", (16, 16), np.full(256, 16384, ">u2").tobytes()), "TIFF"), (0.25,) * 3),
    "I int32 tiff": (lambda: _saved(Image.fromarray(np.full((16, 16), 2**30, np.int32)), "TIFF"), (0.5, 0.5, 0.5)),
    "F float tiff 0.25": (lambda: _saved(Image.fromarray(np.full((16, 16), 0.25, np.float32)), "TIFF"), (0.25,) * 3),
    "RGB 16-bit png": (lambda: Image.open(io.BytesIO(_png(np.tile([65535, 32768, 0], (16, 16, 1)), 2))), (1, 0.5, 0)),
    "LA 16-bit png, opaque": (lambda: Image.open(io.BytesIO(_png(np.tile([32768, 65535], (16, 16, 1)), 4))), (0.5, 0.5, 0.5)),
    "RGBA 16-bit png, half alpha black": (lambda: Image.open(io.BytesIO(_png(np.tile([0, 0, 0, 32768], (16, 16, 1)), 6))), (0.5, 0.5, 0.5)),
    "CMYK tiff red": (lambda: _saved(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "TIFF"), (1, 0, 0)),
    "CMYK jpeg red": (lambda: _saved(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95), (1, 0, 0)),
    "CMYK jpeg, broken ICC profile": (lambda: _saved(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95, icc_profile=b"not a profile"), (1, 0, 0)),
    "YCbCr tiff": (lambda: _saved(Image.new("RGB", (16, 16), (200, 100, 50)).convert("YCbCr"), "TIFF"), (200 / 255, 100 / 255, 50 / 255)),
    "LAB tiff": (lambda: _saved(_lab_image((200, 100, 50)), "TIFF"), (200 / 255, 100 / 255, 50 / 255)),
    "HSV (in memory)": (lambda: Image.new("RGB", (16, 16), (200, 100, 50)).convert("HSV"), (200 / 255, 100 / 255, 50 / 255)),
    "1 bilevel png": (lambda: _saved(Image.new("1", (16, 16), 1), "PNG"), (1, 1, 1)),
    "L png": (lambda: _saved(Image.new("L", (16, 16), 64), "PNG"), (64 / 255,) * 3),
    "L png with tRNS key": (lambda: _saved(Image.new("L", (16, 16), 7), "PNG", transparency=7), (1, 1, 1)),
    "LA png, transparent black": (lambda: _saved(Image.new("LA", (16, 16), (0, 0)), "PNG"), (1, 1, 1)),
    "LA png, opaque black": (lambda: _saved(Image.new("LA", (16, 16), (0, 255)), "PNG"), (0, 0, 0)),
    "P png": (lambda: _saved(Image.new("RGB", (16, 16), (0, 0, 255)).convert("P"), "PNG"), (0, 0, 1)),
    "P png with transparent index": (lambda: _saved(Image.new("P", (16, 16), 0), "PNG", transparency=0), (1, 1, 1)),
    "PA (in memory), transparent": (lambda: Image.new("RGBA", (16, 16), (255, 0, 0, 0)).convert("PA"), (1, 1, 1)),
    "RGB png with tRNS key": (lambda: _saved(Image.new("RGB", (16, 16), (10, 20, 30)), "PNG", transparency=(10, 20, 30)), (1, 1, 1)),
    "RGBA png, half red over white": (lambda: _saved(Image.new("RGBA", (16, 16), (255, 0, 0, 128)), "PNG"), (1, 0.5, 0.5)),
    "RGBa premultiplied (in memory)": (lambda: Image.new("RGBA", (16, 16), (255, 0, 0, 128)).convert("RGBa"), (1, 0.5, 0.5)),
    "RGB bmp": (lambda: _saved(Image.new("RGB", (16, 16), (30, 160, 90)), "BMP"), (30 / 255, 160 / 255, 90 / 255)),
    "animated GIF: first frame": (lambda: _frames("GIF"), (220 / 255, 20 / 255, 20 / 255)),
    "animated WebP: first frame": (lambda: _frames("WEBP"), (220 / 255, 20 / 255, 20 / 255)),
    "animated PNG: first frame": (lambda: _frames("PNG"), (220 / 255, 20 / 255, 20 / 255)),
}


@pytest.mark.parametrize("case", list(MODES))
def test_every_mode_decodes_to_the_colour_the_file_means(case):
    make, expected = MODES[case]
    img = make()
    arr = to_model_input(img, 8).astype(np.float64) / 255.0
    assert arr.shape == (8, 8, 3)
    # 2/255: JPEG's chroma rounding and the 8-bit quantisation of 16-bit and float values
    np.testing.assert_allclose(arr.reshape(-1, 3).mean(0), expected, atol=2.5 / 255, err_msg=f"{case}: mode {img.mode}")


def test_a_16_bit_pool_decodes_like_its_8_bit_twin(tmp_path):
    """The issue's case: a 16-bit PNG pool came out all white and the scan passed."""
    eight, sixteen = tmp_path / "8", tmp_path / "16"
    eight.mkdir()
    sixteen.mkdir()
    for i in range(6):
        grey = _noise(i)[..., 0]
        Image.fromarray(grey).save(eight / f"{i}.png")
        (sixteen / f"{i}.png").write_bytes(_png(grey.astype(np.uint16) * 257, 0))
    a = load_pool(eight, 16, 6, 100)
    b = load_pool(sixteen, 16, 6, 100)
    assert a.names == b.names
    assert float(b.images.mean()) < 0.9  # not all white
    assert float((a.images - b.images).abs().max()) <= 1 / 255 + 1e-6


def test_float_images_outside_unit_range_are_refused_not_guessed(tmp_path):
    _write_noise(tmp_path, 3)
    Image.fromarray((_noise(9)[..., 0].astype(np.float32))).save(tmp_path / "float255.tif")  # 0..255 floats
    nan = np.full((8, 8), 0.5, np.float32)
    nan[0, 0] = np.nan
    Image.fromarray(nan).save(tmp_path / "nan.tif")
    pool = load_pool(tmp_path, 16, 3, 100)
    reasons = dict(pool.skipped)
    assert len(pool) == 3
    assert reasons["float255.tif"].startswith("unusable: float pixel values span")
    assert reasons["nan.tif"].startswith("unusable: float image with NaN")


def test_float_images_in_unit_range_are_kept(tmp_path):
    for i in range(3):
        Image.fromarray(_noise(i)[..., 1].astype(np.float32) / 255.0).save(tmp_path / f"{i}.tif")
    pool = load_pool(tmp_path, 16, 3, 100)
    ref = np.stack([to_model_input(Image.fromarray(_noise(i)[..., 1]), 16)[..., 0] for i in range(3)]) / 255.0
    assert np.abs(pool.images[:, 0].numpy() - ref).max() <= 1.5 / 255


# -- list, sample, then read ---------------------------------------------------------------------------


def test_only_the_sampled_files_are_read(tmp_path, monkeypatch):
    _write_noise(tmp_path, 200)
    first = load_pool(tmp_path, 16, 5, 5, seed=3)
    assert len(first) == 5 and first.skipped == []
    # every file the sample did not pick becomes garbage: if any were read, it would show as skipped
    for p in tmp_path.iterdir():
        if p.name not in first.names:
            p.write_bytes(b"garbage")
    reads = []
    real_read = pool_mod._read
    monkeypatch.setattr(pool_mod, "_read", lambda tar, entry: reads.append(entry.name) or real_read(tar, entry))
    again = load_pool(tmp_path, 16, 5, 5, seed=3)
    assert again.names == first.names and again.skipped == [] and again.sha256 == first.sha256
    assert sorted(reads) == sorted(first.names)
    assert (again.images == first.images).all()


def test_unusable_sampled_files_are_replaced_from_the_permutation(tmp_path, monkeypatch):
    _write_noise(tmp_path, 40)
    first = load_pool(tmp_path, 16, 5, 5, seed=0)
    (tmp_path / first.names[0]).write_bytes(b"broken")
    reads = []
    real_read = pool_mod._read
    monkeypatch.setattr(pool_mod, "_read", lambda tar, entry: reads.append(entry.name) or real_read(tar, entry))
    again = load_pool(tmp_path, 16, 5, 5, seed=0)
    assert len(again) == 5 and again.names[:4] == first.names[1:]
    assert again.skipped == [(first.names[0], "unreadable: UnidentifiedImageError")]
    assert len(reads) == 6  # five, then one more for the broken file


def test_tar_reads_only_the_sampled_members(tmp_path, monkeypatch):
    src = tmp_path / "src"
    _write_noise(src, 120)
    tar_path = tmp_path / "pool.tar.gz"
    with tarfile.open(tar_path, "w:gz") as tar:
        for p in sorted(src.iterdir()):
            tar.add(p, arcname=p.name)
    reads = []
    real_read = pool_mod._read
    monkeypatch.setattr(pool_mod, "_read", lambda tar, entry: reads.append(entry.order) or real_read(tar, entry))
    tarred = load_pool(tar_path, 16, 5, 5, seed=4)
    assert len(reads) == 5 and reads == sorted(reads)  # archive order: a compressed tar streams forward
    folder = load_pool(src, 16, 5, 5, seed=4)
    assert tarred.names == folder.names and (tarred.images == folder.images).all()


def test_same_pool_and_seed_give_identical_bytes(tmp_path):
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    paths = _write_noise(a_dir, 30)
    b_dir.mkdir()
    for p in reversed(paths):  # another creation order: another directory order on disk
        shutil.copy(p, b_dir / p.name)
    a, b = load_pool(a_dir, 16, 1, 10, seed=7), load_pool(b_dir, 16, 1, 10, seed=7)
    assert a.names == b.names and a.sha256 == b.sha256
    assert a.images.numpy().tobytes() == b.images.numpy().tobytes()
    assert load_pool(a_dir, 16, 1, 10, seed=8).names != a.names


# -- bounded decoding ----------------------------------------------------------------------------------


def test_a_header_claiming_a_huge_image_is_skipped_before_decoding(tmp_path):
    _write_noise(tmp_path, 2)
    tiny = np.zeros((1, 1), np.uint8)
    (tmp_path / "bomb.png").write_bytes(_png(tiny, 0, depth=8, size=(20000, 20000)))  # 400 MP: Pillow's own bomb limit
    (tmp_path / "big.png").write_bytes(_png(tiny, 0, depth=8, size=(10000, 6000)))  # 60 MP: over our 50 MP cap
    pool = load_pool(tmp_path, 16, 2, 100)
    reasons = dict(pool.skipped)
    assert len(pool) == 2
    assert reasons["bomb.png"].startswith("too large") and reasons["big.png"] == "too large: 10000x6000 is 60 MP, over the 50 MP cap"


def test_large_jpegs_are_drafted_under_the_cap_and_pngs_are_not(tmp_path):
    big = Image.fromarray(_noise(1, size=(2048, 2048)))
    big.save(tmp_path / "big.jpg", quality=92)
    big.save(tmp_path / "big.png")
    _write_noise(tmp_path, 1)
    pool = load_pool(tmp_path, 32, 2, 100, max_pixels=300_000)  # 2048^2 = 4.2 MP; drafted 1/8: 256^2
    assert dict(pool.skipped) == {"big.png": "too large: 2048x2048 is 4 MP, over the 0 MP cap"}
    full = to_model_input(Image.open(tmp_path / "big.png"), 32).astype(np.float64) / 255
    drafted = pool.images[pool.names.index("big.jpg")].permute(1, 2, 0).numpy()
    assert np.abs(drafted - full).mean() < 2 / 255  # a reduced-scale decode of the same picture


def test_a_one_pixel_sliver_decodes_without_a_huge_intermediate(tmp_path):
    arr = np.random.default_rng(0).integers(0, 256, (1, 200000, 3), dtype=np.uint8)
    img = Image.fromarray(arr)
    out = to_model_input(img, 224)  # the resize-then-crop path would allocate 224 x 44.8M pixels
    assert out.shape == (224, 224, 3)


# -- degenerate pools ----------------------------------------------------------------------------------


def test_a_mixed_pool_keeps_the_distinct_images_and_records_why_others_went(tmp_path):
    paths = _write_noise(tmp_path, 12)
    for i, colour in enumerate([(0, 0, 0), (255, 255, 255), (120, 30, 200)]):
        Image.new("RGB", (40, 30), colour).save(tmp_path / f"flat{i}.png")
    shutil.copy(paths[0], tmp_path / "x-copy.png")  # sorts after the original, which is kept
    Image.open(paths[1]).convert("RGB").save(tmp_path / "reencoded.jpg", quality=90)
    Image.open(paths[2]).resize((96, 80), Image.Resampling.BICUBIC).save(tmp_path / "upscaled.png")
    Image.open(paths[3]).convert("RGB").save(tmp_path / "same-pixels.bmp")
    pool = load_pool(tmp_path, 32, 10, 100)
    reasons = dict(pool.skipped)
    assert len(pool) == 12 and sorted(pool.names) == sorted(p.name for p in paths)
    assert all(reasons[f"flat{i}.png"].startswith("constant:") for i in range(3))
    assert reasons["x-copy.png"] == "duplicate: same bytes as img0000.png"
    assert reasons["same-pixels.bmp"] == "duplicate: same pixels as img0003.png"
    assert reasons["reencoded.jpg"].startswith("duplicate: near-copy of img0001.png")
    assert reasons["upscaled.png"].startswith("duplicate: near-copy of img0002.png")


def test_thresholds_sit_between_noise_and_real_differences():
    base = _noise(5, size=(64, 64))
    a = to_model_input(Image.fromarray(base), 32)
    jittered = np.clip(base.astype(int) + np.random.default_rng(0).integers(-3, 4, base.shape), 0, 255).astype(np.uint8)
    b = to_model_input(Image.fromarray(jittered), 32)
    other = to_model_input(Image.fromarray(_noise(6, size=(64, 64))), 32)
    mad = lambda x, y: float(np.abs(pool_mod._thumbnail(x) - pool_mod._thumbnail(y)).mean())  # noqa: E731
    assert mad(a, b) < NEAR_DUPLICATE_MAD < mad(a, other)
    flat = to_model_input(_saved(Image.new("RGB", (64, 64), (90, 90, 90)), "JPEG", quality=60), 32)
    assert pool_mod._std(flat) < CONSTANT_STD < pool_mod._std(a)
    assert abs(pool_mod._std(a) - float(a.std(axis=(0, 1)).max())) < 1e-6
    assert pool_mod._std(np.broadcast_to(np.array([120, 30, 200], np.uint8), (32, 32, 3))) == 0.0  # flat colour


def test_near_duplicate_prefilter_finds_what_the_full_comparison_finds():
    rng = np.random.default_rng(0)
    imgs = [to_model_input(Image.fromarray(_noise(int(s), size=(40, 40))), 16) for s in rng.integers(0, 50, 60)]
    thumbs = np.stack([pool_mod._thumbnail(x) for x in imgs])
    full = np.abs(thumbs[:, None] - thumbs[None]).mean(-1)
    coarse = np.abs(thumbs.reshape(-1, 4, 4, 4, 4, 3).mean((2, 4))[:, None] - thumbs.reshape(-1, 4, 4, 4, 4, 3).mean((2, 4))[None]).mean((-1, -2, -3))
    assert (coarse <= full + 1e-4).all()  # the bound the prefilter relies on


# -- names and links -----------------------------------------------------------------------------------


def test_non_utf8_file_names_are_kept_with_escaped_names(tmp_path):
    _write_noise(tmp_path, 2)
    raw = os.path.join(os.fsencode(tmp_path), b"caf\xe9-\xff.png")
    with open(raw, "wb") as fh:
        fh.write(_png_bytes(_noise(7)))
    pool = load_pool(tmp_path, 16, 3, 100)
    assert "caf\\xe9-\\xff.png" in pool.names
    assert all(n.encode("utf-8") for n in pool.names)  # printable, writable to a UTF-8 report


def _png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_non_utf8_tar_member_names_are_escaped(tmp_path):
    tar_path = tmp_path / "p.tar"
    with tarfile.open(tar_path, "w", format=tarfile.GNU_FORMAT, encoding="latin-1") as tar:
        for i, name in enumerate(["ok.png", "caf\xe9.png"]):
            data = _png_bytes(_noise(i))
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    pool = load_pool(tar_path, 16, 2, 10)
    assert sorted(pool.names) == ["caf\\xe9.png", "ok.png"]


def test_symlinks_neither_loop_nor_lead_out(tmp_path):
    pool_dir, outside = tmp_path / "pool", tmp_path / "outside"
    _write_noise(pool_dir / "sub", 3)
    _write_noise(outside, 2, start=50)
    (pool_dir / "sub" / "loop").symlink_to("..")  # a cycle
    (pool_dir / "elsewhere").symlink_to(outside)  # a folder outside
    (pool_dir / "stolen.png").symlink_to(outside / "img0050.png")  # a file outside
    (pool_dir / "z-alias.png").symlink_to(pool_dir / "sub" / "img0000.png")  # a file inside
    (pool_dir / "dangling.png").symlink_to(tmp_path / "missing.png")
    os.mkfifo(pool_dir / "fifo.png")  # reading it would block forever
    before = _tree_digest(tmp_path)
    pool = load_pool(pool_dir, 16, 3, 100)
    reasons = dict(pool.skipped)
    assert sorted(pool.names) == ["sub/img0000.png", "sub/img0001.png", "sub/img0002.png"]
    assert reasons["sub/loop"] == reasons["elsewhere"] == "link: symbolic link to a folder, not followed"
    assert reasons["stolen.png"] == "link: symbolic link leads outside the pool, not read"
    assert reasons["z-alias.png"] == "duplicate: same bytes as sub/img0000.png"
    assert reasons["dangling.png"].startswith("link:") or reasons["dangling.png"].startswith("unreadable:")
    assert reasons["fifo.png"] == "unreadable: not a regular file"
    globbed = load_pool(str(pool_dir / "**" / "*.png"), 16, 3, 100)  # glob.glob's ** would follow the cycle
    assert sorted(globbed.names) == sorted(str(pool_dir / n) for n in pool.names)
    assert _tree_digest(tmp_path) == before


# -- hostile pools: exit 2 naming the pool and the problem ------------------------------------------------


def _constant(root: Path) -> str:
    root.mkdir()
    for i in range(10):
        Image.new("RGB", (32, 32), (i * 25, 100, 200 - i * 20)).save(root / f"{i}.png")
    return str(root)


def _copies(root: Path) -> str:
    (p,) = _write_noise(root, 1)
    for i in range(9):
        shutil.copy(p, root / f"copy{i}.png")
    return str(root)


def _reencodes(root: Path) -> str:
    root.mkdir()
    img = Image.fromarray(_noise(3, size=(120, 100)))
    for q in (60, 75, 85, 90, 95):
        img.save(root / f"q{q}.jpg", quality=q)
    img.save(root / "orig.png")
    img.resize((60, 50), Image.Resampling.BICUBIC).save(root / "half.png")
    img.resize((240, 200), Image.Resampling.BICUBIC).save(root / "double.webp", lossless=True)
    return str(root)


def _few_distinct(root: Path) -> str:
    paths = _write_noise(root, 5)
    for i in range(10):
        shutil.copy(paths[i % 5], root / f"dup{i}.png")
    return str(root)


def _huge_headers(root: Path) -> str:
    root.mkdir()
    for i, size in enumerate([(20000, 20000), (10000, 6000), (8000, 8000)]):
        (root / f"{i}.png").write_bytes(_png(np.zeros((1, 1), np.uint8), 0, depth=8, size=size))
    return str(root)


def _floats_255(root: Path) -> str:
    root.mkdir()
    for i in range(4):
        Image.fromarray(_noise(i)[..., 0].astype(np.float32)).save(root / f"{i}.tif")
    return str(root)


def _nan_floats(root: Path) -> str:
    root.mkdir()
    for i in range(4):
        arr = _noise(i)[..., 0].astype(np.float32) / 255
        arr[i, i] = np.inf if i % 2 else np.nan
        Image.fromarray(arr).save(root / f"{i}.tif")
    return str(root)


def _garbage(root: Path) -> str:
    root.mkdir()
    good = _png_bytes(_noise(0))
    (root / "truncated.png").write_bytes(good[: len(good) // 2])
    (root / "text.jpg").write_bytes(b"hello")
    (root / "empty.gif").write_bytes(b"")
    (root / "header-only.tif").write_bytes(b"II*\x00")
    return str(root)


def _empty(root: Path) -> str:
    root.mkdir()
    (root / "notes.txt").write_text("no images")
    return str(root)


def _only_links(root: Path) -> str:
    outside = root.parent / "outside"
    _write_noise(outside, 3)
    root.mkdir()
    (root / "loop").symlink_to(".")
    (root / "out").symlink_to(outside)
    for p in outside.iterdir():
        (root / p.name).symlink_to(p)
    return str(root)


def _corrupt_tar(root: Path) -> str:
    root.mkdir()
    src = root / "src"
    _write_noise(src, 4)
    with tarfile.open(root / "p.tar.gz", "w:gz") as tar:
        tar.add(src, arcname="src")
    data = (root / "p.tar.gz").read_bytes()
    (root / "cut.tar.gz").write_bytes(data[: len(data) // 2])
    return str(root / "cut.tar.gz")


def _tar_of_copies(root: Path) -> str:
    root.mkdir()
    data = _png_bytes(_noise(1))
    with tarfile.open(root / "p.tar", "w") as tar:
        for i in range(6):
            info = tarfile.TarInfo(f"{i}.png")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return str(root / "p.tar")


def _single_image(root: Path) -> str:
    root.mkdir()
    Image.fromarray(_noise(0)).save(root / "one.png")
    return str(root / "one.png")


def _missing(root: Path) -> str:
    return str(root / "absent")


def _glob_nothing(root: Path) -> str:
    root.mkdir()
    return str(root / "*.png")


def _fifos(root: Path) -> str:
    root.mkdir()
    for i in range(3):
        os.mkfifo(root / f"{i}.png")
    return str(root)


def _non_utf8_constant(root: Path) -> str:
    raw = os.path.join(os.fsencode(root), b"pool-\xff")
    os.makedirs(raw)
    for i in range(3):
        with open(os.path.join(raw, b"\xe9%d.png" % i), "wb") as fh:
            fh.write(_png_bytes(np.full((16, 16, 3), 40 * i, np.uint8)))
    return os.fsdecode(raw)


def _bad_glob(root: Path) -> str:
    _write_noise(root, 2)
    return str(root / "**x" / "*.png")


HOSTILE = {
    # name: (builder, min_images, text the message must contain)
    "all constant": (_constant, 5, "0 usable images, the policy needs at least 5 (skipped: 10 constant)"),
    "all byte copies": (_copies, 5, "1 usable images, the policy needs at least 5 (skipped: 9 duplicate)"),
    "re-encodes of one picture": (_reencodes, 3, "1 usable images, the policy needs at least 3 (skipped: 7 duplicate)"),
    "too few distinct": (_few_distinct, 8, "5 usable images, the policy needs at least 8 (skipped: 10 duplicate)"),
    "huge headers": (_huge_headers, 1, "0 usable images, the policy needs at least 1 (skipped: 3 too large)"),
    "0..255 float TIFFs": (_floats_255, 1, "(skipped: 4 unusable)"),
    "NaN/inf float TIFFs": (_nan_floats, 1, "(skipped: 4 unusable)"),
    "truncated and garbage files": (_garbage, 1, "0 usable images, the policy needs at least 1 (skipped: 4 unreadable)"),
    "no images": (_empty, 1, "0 usable images, the policy needs at least 1 (skipped: none)"),
    "only links out and a cycle": (_only_links, 1, "0 usable images, the policy needs at least 1 (skipped: 5 link)"),
    "truncated tar.gz": (_corrupt_tar, 1, "unreadable tar (EOFError)"),
    "tar of copies": (_tar_of_copies, 2, "1 usable images, the policy needs at least 2 (skipped: 5 duplicate)"),
    "a single image file": (_single_image, 1, "pool must be a folder, a glob or a .tar of images"),
    "missing": (_missing, 1, "pool not found"),
    "glob matching nothing": (_glob_nothing, 1, "pool not found"),
    "FIFOs named .png": (_fifos, 1, "(skipped: 3 unreadable)"),
    "non-UTF-8 folder of blanks": (_non_utf8_constant, 1, "(skipped: 3 constant)"),
    "16-bit blanks": (lambda root: _sixteen_bit_blanks(root), 1, "(skipped: 4 constant)"),
    "invalid glob pattern": (_bad_glob, 1, "invalid glob pattern"),
}


def _sixteen_bit_blanks(root: Path) -> str:
    root.mkdir()
    for i in range(4):
        (root / f"{i}.png").write_bytes(_png(np.full((16, 16), 60000 - i * 9000), 0))
    return str(root)


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_pool_is_an_input_error_naming_the_pool_and_the_problem(tmp_path, case):
    build, min_images, problem = HOSTILE[case]
    spec = build(tmp_path / "pool")
    before = _tree_digest(tmp_path)
    with pytest.raises(InputError) as err:
        load_pool(spec, 16, min_images, 100)
    message = str(err.value)
    assert err.value.exit_code == 2 and "\n" not in message
    assert message.startswith(pool_mod.display_name(spec) + ": ") and problem in message, message
    assert _tree_digest(tmp_path) == before


def test_an_empty_pool_path_is_not_the_working_directory():
    with pytest.raises(InputError, match="the pool path is empty"):
        load_pool("", 16, 1, 10)


# -- through the CLI -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    from ci_gate.bench.speed_run import candidate_names
    from ci_gate.checkpoint.format import CheckpointMeta, LearnerSpec, Preprocessing, save_checkpoint
    from ci_gate.model.factory import new_learner
    from ci_gate.model.small import embedded_backbone, random_clip_state, small_config

    cfg = small_config("tiny-32")
    state = random_clip_state(cfg, seed=0)
    spec, backbone = embedded_backbone(cfg, state)
    learner_spec = LearnerSpec(kind="coop", class_names=candidate_names(3))
    learner = new_learner(backbone, learner_spec, seed=0)
    meta = CheckpointMeta(learner=learner_spec, backbone=spec, preprocessing=Preprocessing(image_size=32))
    path = tmp_path_factory.mktemp("tiny") / "model.safetensors"
    save_checkpoint(path, meta, learner.named_tensors(), state)
    return path


CLI_HOSTILE = {
    "all constant": "0 usable images, the policy needs at least 5 (skipped: 10 constant)",
    "all byte copies": "1 usable images, the policy needs at least 5 (skipped: 9 duplicate)",
    "huge headers": "0 usable images, the policy needs at least 5 (skipped: 3 too large)",
    "truncated tar.gz": "unreadable tar (EOFError)",
    "non-UTF-8 folder of blanks": "0 usable images, the policy needs at least 5 (skipped: 3 constant)",
}


@pytest.mark.parametrize("case", CLI_HOSTILE)
def test_hostile_pool_through_verify_exits_2_with_one_line(tmp_path, capsys, tiny_checkpoint, case):
    from ci_gate.cli import main

    build, _, _ = HOSTILE[case]
    spec = build(tmp_path / "pool")
    out = tmp_path / "report"
    before = _tree_digest(tmp_path)
    ckpt_hash = hashlib.sha256(tiny_checkpoint.read_bytes()).hexdigest()
    with pytest.raises(SystemExit) as done:
        main(["verify", str(tiny_checkpoint), "--pool", spec, "--out", str(out), "--quiet",
              "--set", "pool.min_images=5", "--set", "device=cpu"])  # fmt: skip
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert done.value.code == 2, err
    assert len(lines) == 1 and lines[0].startswith("ci-gate: error: ") and "Traceback" not in err
    assert pool_mod.display_name(spec) in lines[0] and CLI_HOSTILE[case] in lines[0], lines[0]
    assert not out.exists() and _tree_digest(tmp_path) == before
    assert hashlib.sha256(tiny_checkpoint.read_bytes()).hexdigest() == ckpt_hash
