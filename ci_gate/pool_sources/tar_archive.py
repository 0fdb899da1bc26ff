"""A .tar of images (plain or compressed), read in memory and never extracted."""

from __future__ import annotations

import lzma
import tarfile
import zlib
from pathlib import Path

from ci_gate.errors import InputError
from ci_gate.pool_sources.base import IMAGE_SUFFIXES, MAX_FILE_BYTES, Entry, Listing, PoolSource, Skipped, display_name

TAR_SUFFIXES = (".tar", ".tgz", ".tbz2", ".txz")
# is_tarfile lets a corrupt compressed stream's errors through
_SNIFF_ERRORS = (OSError, EOFError, zlib.error, lzma.LZMAError)


def claims(spec: str) -> bool:
    path = Path(spec)
    if not path.is_file():
        return False
    if any(s in TAR_SUFFIXES for s in path.suffixes):
        return True
    try:
        return tarfile.is_tarfile(path)
    except _SNIFF_ERRORS:
        return True  # a damaged archive: open_tar says what is wrong with it


class TarListing(Listing):
    def __init__(self, tar: tarfile.TarFile, entries: list[Entry]) -> None:
        super().__init__(entries)
        self.tar = tar

    def read(self, entry: Entry) -> bytes | str:
        try:
            fh = self.tar.extractfile(entry.ref)  # type: ignore[arg-type]
            if fh is None:
                return "unreadable: not a regular tar member"
            return fh.read(MAX_FILE_BYTES + 1)
        except OSError as exc:
            return f"unreadable: {exc.strerror or type(exc).__name__}"
        except (tarfile.TarError, EOFError, ValueError, zlib.error, lzma.LZMAError) as exc:
            return f"unreadable: {type(exc).__name__}"

    def close(self) -> None:
        self.tar.close()


def open_tar(spec: str, skipped: Skipped) -> TarListing:
    path, shown_spec = Path(spec), display_name(spec)
    try:
        is_tar = tarfile.is_tarfile(path)
    except _SNIFF_ERRORS as exc:
        raise InputError(shown_spec, f"unreadable ({type(exc).__name__})") from None
    if not is_tar:
        raise InputError(shown_spec, "unreadable tar (not a tar archive: damaged or truncated?)")
    tar: tarfile.TarFile | None = None
    try:
        tar = tarfile.open(path)
        entries = list_tar(tar, skipped)
    except (tarfile.TarError, EOFError, OSError, ValueError, zlib.error, lzma.LZMAError) as exc:
        if tar is not None:
            tar.close()
        raise InputError(shown_spec, f"unreadable tar ({type(exc).__name__})") from None
    return TarListing(tar, entries)


def list_tar(tar: tarfile.TarFile, skipped: Skipped) -> list[Entry]:
    entries = []
    for member in tar.getmembers():
        if Path(member.name).suffix.lower() not in IMAGE_SUFFIXES:
            continue
        shown = display_name(member.name)
        if not member.isfile():
            if member.issym() or member.islnk():
                skipped.append((shown, "link: tar member is a link, not read"))
            continue
        if member.size > MAX_FILE_BYTES:
            skipped.append((shown, f"too large: {member.size / 2**20:.0f} MiB member exceeds the {MAX_FILE_BYTES // 2**20} MiB cap"))
            continue
        entries.append(Entry(shown, member, member.offset_data))
    return entries


SOURCE = PoolSource("tar", claims, open_tar, "a .tar of images (gzip, bzip2 or xz compressed too), never extracted")
