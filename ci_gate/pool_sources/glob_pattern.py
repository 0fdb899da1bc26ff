"""A glob of image files (``pool/*.png``, ``pool/**/*.jpg``); ``**`` does not follow symlinked folders."""

from __future__ import annotations

import glob
import os
from pathlib import Path

from ci_gate.errors import InputError
from ci_gate.pool_sources.base import IMAGE_SUFFIXES, NOT_FOUND, Entry, PoolSource, Skipped, display_name
from ci_gate.pool_sources.files import FileListing, check_file


def claims(spec: str) -> bool:
    # an existing file or folder whose name holds glob characters is that file or folder
    path = Path(spec)
    return glob.has_magic(spec) and not path.is_file() and not path.is_dir()


def open_glob(spec: str, skipped: Skipped) -> FileListing:
    listed = list_glob(spec, skipped)
    if listed is None:
        raise InputError(display_name(spec), NOT_FOUND)
    return FileListing(listed)


def list_glob(spec: str, skipped: Skipped) -> list[Entry] | None:
    """Match ``spec`` without following symlinked folders on ``**`` (glob.glob does, into cycles).

    Returns None when nothing at all matches.
    """
    parts = Path(spec).parts
    magic = next((i for i, p in enumerate(parts) if glob.has_magic(p)), None)
    if magic is None:
        return None
    root = Path(*parts[:magic]) if magic else Path(".")
    pattern = "/".join(parts[magic:])
    if not root.is_dir():
        return None
    real_root = os.path.realpath(root)
    explicit_hidden = any(p.startswith(".") for p in parts[magic:])
    try:
        matches = sorted(root.glob(pattern))
    except ValueError as exc:  # pathlib refuses e.g. `**x`; glob.glob would have read it as `*x`
        raise InputError(display_name(spec), f"invalid glob pattern ({exc})") from None
    entries = []
    for p in matches:
        rel = p.relative_to(root).parts
        # glob.glob's `*` skips dot files; keep that unless the pattern names one
        if not explicit_hidden and any(r.startswith(".") for r in rel):
            continue
        if p.suffix.lower() not in IMAGE_SUFFIXES or p.is_dir():
            continue
        entry = check_file(str(p), display_name(p.as_posix()), real_root, skipped, resolve=True)
        if entry is not None:
            entries.append(entry)
    return entries if matches else None


SOURCE = PoolSource("glob", claims, open_glob, "a glob of image files")
