"""A folder of images, walked recursively without following symlinked folders (no cycles, no escape)."""

from __future__ import annotations

import os
from pathlib import Path

from ci_gate.pool_sources.base import IMAGE_SUFFIXES, Entry, PoolSource, Skipped, display_name
from ci_gate.pool_sources.files import FileListing, check_file


def claims(spec: str) -> bool:
    return Path(spec).is_dir()


def open_folder(spec: str, skipped: Skipped) -> FileListing:
    return FileListing(list_folder(Path(spec), skipped))


def list_folder(root: Path, skipped: Skipped) -> list[Entry]:
    real_root = os.path.realpath(root)
    entries = []

    def unreadable_folder(exc: OSError) -> None:
        where = os.path.relpath(exc.filename, root) if exc.filename else "."
        skipped.append((display_name(Path(where).as_posix()), f"unreadable: folder ({exc.strerror or type(exc).__name__})"))

    # os.walk does not descend into symlinked folders (followlinks=False): no cycles, no escape.
    for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable_folder, followlinks=False):
        dirnames.sort()
        for d in dirnames:
            full = os.path.join(dirpath, d)
            if os.path.islink(full):
                skipped.append((display_name(Path(os.path.relpath(full, root)).as_posix()), "link: symbolic link to a folder, not followed"))
        for fname in sorted(filenames):
            if os.path.splitext(fname)[1].lower() not in IMAGE_SUFFIXES:
                continue
            full = os.path.join(dirpath, fname)
            shown = display_name(Path(os.path.relpath(full, root)).as_posix())
            entry = check_file(full, shown, real_root, skipped, resolve=False)
            if entry is not None:
                entries.append(entry)
    return entries


SOURCE = PoolSource("folder", claims, open_folder, "a folder of images, recursive")
