"""Pool entries that are files on disk (the folder and glob sources)."""

from __future__ import annotations

import os
import stat

from ci_gate.pool_sources.base import MAX_FILE_BYTES, Entry, Listing, Skipped


def inside(path: str, root: str) -> bool:
    try:
        return os.path.commonpath([path, root]) == root
    except ValueError:
        return False


def check_file(full: str, shown: str, real_root: str, skipped: Skipped, resolve: bool) -> Entry | None:
    """A listed path becomes an entry when it is a regular file inside the pool.

    A symlinked file counts when it resolves inside the pool; ``resolve`` also checks files that
    are not links themselves (a glob's ``*/`` steps through a symlinked folder).
    """
    try:
        if resolve or os.path.islink(full):
            if not inside(os.path.realpath(full), real_root):
                skipped.append((shown, "link: symbolic link leads outside the pool, not read"))
                return None
        st = os.stat(full)
    except OSError as exc:
        skipped.append((shown, f"unreadable: {exc.strerror or type(exc).__name__}"))
        return None
    if not stat.S_ISREG(st.st_mode):
        skipped.append((shown, "unreadable: not a regular file"))
        return None
    if st.st_size > MAX_FILE_BYTES:
        skipped.append((shown, f"too large: {st.st_size / 2**20:.0f} MiB file exceeds the {MAX_FILE_BYTES // 2**20} MiB cap"))
        return None
    return Entry(shown, full)


class FileListing(Listing):
    def read(self, entry: Entry) -> bytes | str:
        try:
            with open(entry.ref, "rb") as fh:  # type: ignore[call-overload]
                return fh.read(MAX_FILE_BYTES + 1)
        except OSError as exc:
            return f"unreadable: {exc.strerror or type(exc).__name__}"
        except ValueError as exc:
            return f"unreadable: {type(exc).__name__}"
