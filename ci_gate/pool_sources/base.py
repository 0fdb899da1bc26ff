"""What every pool source shares: the entry it lists, the listing it opens, how names are shown."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
MAX_FILE_BYTES = 256 * 2**20  # an 8-bit RGB file this big is over ci_gate.pool.MAX_PIXELS even uncompressed

# what a spec that names nothing is told, by the registry or by a glob that matches nothing
NOT_FOUND = "pool not found (no such folder, tar or glob matches)"

Skipped = list[tuple[str, str]]  # (display name, "kind: reason"), in the order found


@dataclass
class Entry:
    name: str  # display name (escaped), also the sort key and what Pool.names reports
    ref: object  # what the source reads it by: a filesystem path (str), a tarfile.TarInfo...
    order: int = 0  # read order inside a batch (a tar member's offset): storage order streams forward


class Listing:
    """An opened source: its entries (names and sizes only, nothing read yet) and a way to read one.

    The loader sorts the entries, samples them with a seeded permutation and reads only the ones
    it needs; a source must not read image bytes before ``read`` is called for them.
    """

    def __init__(self, entries: list[Entry]) -> None:
        self.entries = entries

    def read(self, entry: Entry) -> bytes | str:
        """At most MAX_FILE_BYTES + 1 bytes of the entry (more means too large), or why it cannot
        be read ("unreadable: ..."); never raises for one bad entry."""
        raise NotImplementedError

    def close(self) -> None:
        """Release what ``open`` acquired (an open archive)."""

    def __enter__(self) -> Listing:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class PoolSource:
    name: str
    # Whether this source reads the spec. Claims are disjoint, so the registry's order never decides.
    claims: Callable[[str], bool]
    # List the spec's images, appending what it leaves out to the skipped list; InputError naming
    # the spec when the source as a whole cannot be read.
    open: Callable[[str, Skipped], Listing]
    description: str


def display_name(name: str | bytes) -> str:
    """A printable one-line form of a file name: bytes that are not UTF-8 become ``\\xNN`` escapes,
    control characters (a newline in a name) their backslash escapes.

    Linux hands non-UTF-8 names to Python as lone surrogates (PEP 383), which cannot be written to
    a UTF-8 report or hashed; the escaped form can, keeps messages on one line, and still tells the
    user which file it was.
    """
    if isinstance(name, str):
        try:
            name = name.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:  # a surrogate no file system produced: keep it visible
            name = name.encode("utf-8", "backslashreplace")
    text = name.decode("utf-8", "backslashreplace")
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)
