"""The pool-source registry (ci_gate/pool_sources/): every registered source lists without reading,
reads only what the seeded sample picks, and gives the loader the same images as every other."""

from __future__ import annotations

import os
import sys
import tarfile
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ci_gate import pool as pool_mod
from ci_gate import pool_sources as sources_mod
from ci_gate.errors import InputError
from ci_gate.pool import load_pool
from ci_gate.pool_sources import IMAGE_SUFFIXES, NOT_A_POOL, NOT_FOUND, Entry, Listing, PoolSource, open_source, pool_sources
from ci_gate.pool_sources.files import FileListing, check_file

N_IMAGES = 40


def _tar(src: Path, root: Path) -> str:
    path = root / "pool.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for p in sorted(src.iterdir()):
            tar.add(p, arcname=p.name)
    return str(path)


# One spec per registered source, all holding the same images: a new source adds its builder here.
BUILDERS = {
    "folder": lambda src, root: str(src),
    "glob": lambda src, root: str(src / "*.png"),
    "tar": _tar,
}
REGISTERED = list(pool_sources())


@pytest.fixture(scope="module")
def specs(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("sources")
    src = root / "images"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(N_IMAGES):
        Image.fromarray(rng.integers(0, 256, (12 + i % 5, 16, 3), dtype=np.uint8)).save(src / f"img{i:03d}.png")
    return {name: build(src, root) for name, build in BUILDERS.items()} | {"_images": str(src)}


# -- recording which files get opened (audit hooks cannot be removed: one for the module, idle
# unless a test is recording) -------------------------------------------------------------------
_recordings: list[list[str]] = []


def _audit(event: str, args: tuple) -> None:
    if event == "open" and _recordings and isinstance(args[0], (str, bytes, os.PathLike)):
        _recordings[-1].append(os.fsdecode(args[0]))


sys.addaudithook(_audit)


def test_every_registered_source_has_a_builder_here():
    assert set(BUILDERS) == set(REGISTERED)
    modules = {p.stem for p in Path(sources_mod.__file__).parent.glob("*.py")} - {"__init__", "base", "files"}
    assert modules == set(sources_mod._MODULES), "a module in ci_gate/pool_sources/ is not registered"
    assert all(isinstance(s, PoolSource) and s.description for s in pool_sources().values())


@pytest.mark.parametrize("name", REGISTERED)
def test_exactly_one_source_claims_a_spec(specs, name):
    assert [n for n, s in pool_sources().items() if s.claims(specs[name])] == [name]


@pytest.mark.parametrize("name", REGISTERED)
def test_opening_a_source_lists_its_images_without_reading_one(specs, name):
    skipped: list = []
    opened: list[str] = []
    _recordings.append(opened)
    try:
        listing = open_source(specs[name], skipped)
    finally:
        _recordings.pop()
    with listing:
        assert not [p for p in opened if Path(p).suffix.lower() in IMAGE_SUFFIXES], opened
        assert skipped == [] and len(listing.entries) == N_IMAGES
        images = Path(specs["_images"])
        assert sorted(Path(e.name).name for e in listing.entries) == sorted(p.name for p in images.iterdir())
        entry = min(listing.entries, key=lambda e: e.name)
        assert listing.read(entry) == (images / Path(entry.name).name).read_bytes()


@pytest.mark.parametrize("name", REGISTERED)
def test_only_the_sampled_entries_are_read_and_every_source_picks_the_same_images(specs, name, monkeypatch):
    reference = load_pool(specs["folder"], 16, 5, 5, seed=3)
    reads: list[str] = []
    real_read = pool_mod._read
    monkeypatch.setattr(pool_mod, "_read", lambda listing, entry: reads.append(entry.name) or real_read(listing, entry))
    pool = load_pool(specs[name], 16, 5, 5, seed=3)
    assert len(reads) == 5 and sorted(reads) == sorted(pool.names)
    assert [Path(n).name for n in pool.names] == [Path(n).name for n in reference.names]
    assert pool.images.numpy().tobytes() == reference.images.numpy().tobytes()
    assert load_pool(specs[name], 16, 5, 5, seed=4).names != pool.names  # the seed decides


def test_a_spec_no_source_claims_is_an_input_error_naming_it(tmp_path):
    (tmp_path / "one.png").write_bytes(b"not a pool")
    for spec, problem in ((tmp_path / "one.png", NOT_A_POOL), (tmp_path / "nope", NOT_FOUND), (tmp_path / "nope" / "*.png", NOT_FOUND)):
        with pytest.raises(InputError) as err:
            load_pool(spec, 16, 1, 10)
        assert str(err.value) == f"{spec}: {problem}" and err.value.exit_code == 2
    assert NOT_A_POOL == "pool must be a folder, a glob or a .tar of images"
    assert NOT_FOUND == "pool not found (no such folder, tar or glob matches)"


def test_a_new_source_is_one_module(specs, tmp_path, monkeypatch):
    # what a newcomer writes: a module with SOURCE, listed in _MODULES (here: a manifest file
    # naming one image per line, relative to the manifest)
    module = types.ModuleType("ci_gate.pool_sources.manifest")

    def claims(spec: str) -> bool:
        return spec.endswith(".lst") and os.path.isfile(spec)

    def open_manifest(spec: str, skipped: list) -> Listing:
        root = os.path.dirname(os.path.realpath(spec))
        found: list[Entry] = []
        for line in Path(spec).read_text().split():
            entry = check_file(os.path.join(root, line), line, root, skipped, resolve=True)
            if entry is not None:
                found.append(entry)
        return FileListing(found)

    module.SOURCE = PoolSource("manifest", claims, open_manifest, "a manifest naming image files")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setattr(sources_mod, "_MODULES", (*sources_mod._MODULES, "manifest"))
    images = Path(specs["_images"])
    manifest = images.parent / "chosen.lst"
    picked = sorted(p.name for p in images.iterdir())[:6]
    manifest.write_text("\n".join(f"images/{n}" for n in picked) + "\nimages/missing.png\n")
    pool = load_pool(manifest, 16, 6, 100)
    assert sorted(pool.names) == [f"images/{n}" for n in picked]
    assert pool.skipped == [("images/missing.png", "unreadable: No such file or directory")]
    assert [n for n, s in pool_sources().items() if s.claims(str(manifest))] == ["manifest"]
