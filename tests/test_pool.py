import io
import tarfile

import numpy as np
import pytest
from PIL import Image

from ci_gate.errors import InputError
from ci_gate.pool import load_pool


def _write_images(folder, n, size=(40, 30), mode="RGB"):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        img = Image.fromarray(arr).convert(mode)
        img.save(folder / f"img{i:03d}.png")


def test_folder_is_recursive_and_handles_greyscale_and_odd_sizes(tmp_path):
    _write_images(tmp_path / "a", 3)
    _write_images(tmp_path / "a" / "deep", 2, size=(17, 90), mode="L")
    pool = load_pool(tmp_path, image_size=32, min_images=5, max_images=100)
    assert pool.images.shape == (5, 3, 32, 32)
    assert 0.0 <= float(pool.images.min()) and float(pool.images.max()) <= 1.0
    assert any(n.startswith("a/deep/") for n in pool.names)


def test_unreadable_files_are_skipped_and_counted(tmp_path):
    _write_images(tmp_path, 4)
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    pool = load_pool(tmp_path, image_size=16, min_images=4, max_images=100)
    assert len(pool) == 4
    assert [name for name, _ in pool.skipped] == ["broken.jpg"]


def test_too_few_images_is_an_input_error_naming_the_pool(tmp_path):
    _write_images(tmp_path, 3)
    with pytest.raises(InputError) as err:
        load_pool(tmp_path, image_size=16, min_images=10, max_images=100)
    assert str(tmp_path) in str(err.value) and "3 usable" in str(err.value)
    assert err.value.exit_code == 2


def test_missing_pool(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_pool(tmp_path / "nope", image_size=16, min_images=1, max_images=10)


def test_glob_and_tar_give_the_same_images_as_the_folder(tmp_path):
    src = tmp_path / "src"
    _write_images(src, 6)
    tar_path = tmp_path / "pool.tar"
    with tarfile.open(tar_path, "w") as tar:
        for p in sorted(src.iterdir()):
            tar.add(p, arcname=p.name)
    folder = load_pool(src, 16, 1, 100)
    tarred = load_pool(tar_path, 16, 1, 100)
    globbed = load_pool(str(src / "*.png"), 16, 1, 100)
    assert folder.sha256 == tarred.sha256
    assert (folder.images == tarred.images).all() and (folder.images == globbed.images).all()


def test_sampling_is_seeded_and_bounded(tmp_path):
    _write_images(tmp_path, 20)
    a = load_pool(tmp_path, 16, 1, 8, seed=1)
    b = load_pool(tmp_path, 16, 1, 8, seed=1)
    c = load_pool(tmp_path, 16, 1, 8, seed=2)
    assert len(a) == 8 and a.names == b.names and a.sha256 == b.sha256
    assert a.names != c.names


def test_tar_is_read_not_extracted(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(buf, format="PNG")
    tar_path = tmp_path / "p.tar"
    with tarfile.open(tar_path, "w") as tar:
        info = tarfile.TarInfo("../escape.png")
        info.size = len(buf.getvalue())
        tar.addfile(info, io.BytesIO(buf.getvalue()))
    pool = load_pool(tar_path, 8, 1, 10)
    assert len(pool) == 1
    assert not (tmp_path.parent / "escape.png").exists()
