"""The report folder as one unit: checked before any compute, built beside the target, swapped in.

A scan leaves result.json, triggers/, examples/ and the rendered reports; written one file at a
time into the live folder, a crash between two files left result.json saying "clean" next to a
report.html still saying "backdoor". Instead every command that writes a folder does

    out = check_out_folder(raw, "--out", inputs=..., pool=...)
    with staged_folder(out) as stage:
        ... write everything into stage ...

``staged_folder`` builds ``<out>.<random>.tmp`` in the same parent (same filesystem) and, when the
block succeeds, puts it in place with one rename: ``rename(2)`` when ``<out>`` is absent or empty,
``renameat2(RENAME_EXCHANGE)`` when it holds an earlier report (the old folder then sits at the
staging name and is deleted). A reader sees the old folder or the new one, never a mix. Where the
exchange is unsupported, two renames are the fallback (``<out>`` is briefly absent, never mixed).
An exception in the block deletes the staging folder and leaves ``<out>`` as it was; a SIGKILL
leaves a stray staging folder, which the next run removes: only siblings named after ``<out>``
with our pattern that carry the marker file we write.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import glob
import os
import re
import secrets
import shutil
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from ci_gate.errors import InputError
from ci_gate.report.formats import file_names

if TYPE_CHECKING:
    from ci_gate.scan_output import ScanOutput

MARKER = ".ci-gate-report"
MARKER_TEXT = "ci-gate report folder: the next run replaces this folder as a whole\n"
# What ci-gate itself puts in a report folder (verify, report, canary). A folder holding anything
# else is not ours to replace: the swap would delete it.
OWN_ENTRIES = frozenset({MARKER, *file_names().values(), "triggers", "examples",
                         "canary.json", "canary.safetensors", "scan",
                         # action.yml puts the repaired model and its re-verification in the report folder
                         "repaired", "repaired-report",
                         # and the attested ONNX export (input export-onnx)
                         "onnx"})
# Write errors that say something about the output location, not about ci-gate: bad input (exit 2).
OUTPUT_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EEXIST,
                           errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG, errno.EMLINK, errno.EFBIG, errno.ENOENT,
                           errno.ENOTEMPTY, errno.EBUSY, errno.EXDEV, errno.ELOOP, errno.EIO})

_UNNAMED_OUTPUT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG, errno.EIO})


def _stage_pattern(name: str) -> re.Pattern:
    return re.compile(rf"^{re.escape(name)}\.[A-Za-z0-9_-]{{8,}}\.(tmp|old)$")


def _problem(flag: str, path: Path | str, problem: str) -> InputError:
    return InputError(flag, f"{path}: {problem}")


def _within(path: Path, root: Path) -> bool:
    return path == root or path.is_relative_to(root)


def pool_root(spec: str) -> Path | None:
    """The folder or file a pool spec reads from (a glob's fixed leading part)."""
    if not spec:
        return None
    if glob.has_magic(spec):
        fixed = []
        for part in Path(spec).parts:
            if glob.has_magic(part):
                break
            fixed.append(part)
        if not fixed:
            return Path(os.path.realpath("."))
        return Path(os.path.realpath(Path(*fixed)))
    return Path(os.path.realpath(spec))


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if os.path.lexists(candidate):
            return candidate
    return Path(path.anchor or "/")


def check_out_path(raw: str | os.PathLike | None, flag: str = "--out") -> Path:
    """Checks every output path shares (file or folder): not empty, not under a file, writable parent."""
    if raw is None or not str(raw).strip():
        raise InputError(flag, "empty path; give a folder or file to write")
    if "\0" in str(raw):
        raise InputError(flag, "path contains a NUL character")
    out = Path(os.path.realpath(os.path.expanduser(str(raw))))
    with output_errors(out):
        return _check_out_path(out, flag)


def _check_out_path(out: Path, flag: str) -> Path:
    anchor = _nearest_existing(out.parent)
    if not anchor.is_dir():
        raise _problem(flag, out, f"{anchor} is a file, not a folder")
    if not os.access(anchor, os.W_OK | os.X_OK):
        raise _problem(flag, out, f"folder {anchor} is not writable")
    return out


def check_not_input(out: Path, inputs: Iterable[tuple[str, str | os.PathLike | None]], flag: str = "--out", *, folder: bool) -> None:
    """Refuse an output that is, or (for a folder) holds, an input: inputs are never modified."""
    for what, raw in inputs:
        if raw is None or not str(raw):
            continue
        src = Path(raw)
        if not os.path.lexists(src):
            continue
        real = Path(os.path.realpath(src))
        same = os.path.exists(out) and os.path.exists(src) and os.path.samefile(out, src)
        if same or real == out:
            raise _problem(flag, out, f"is the input {what} {src}; inputs are never modified")
        if folder and _within(real, out):
            raise _problem(flag, out, f"holds the input {what} {src}; replacing the report folder would delete it")


def check_out_folder(
    raw: str | os.PathLike | None,
    flag: str = "--out",
    *,
    inputs: Iterable[tuple[str, str | os.PathLike | None]] = (),
    pool: str | None = None,
) -> Path:
    """The absolute report folder for ``raw``, or InputError naming ``flag`` and the problem."""
    out = check_out_path(raw, flag)
    with output_errors(out):
        return _check_out_folder(out, flag, list(inputs), pool)


def _check_out_folder(out: Path, flag: str, inputs: list, pool: str | None) -> Path:
    if out == Path(out.anchor):
        raise _problem(flag, out, "is a filesystem root; give a folder for the report")
    root = pool_root(pool) if pool else None
    if root is not None:
        if _within(out, root):
            raise _problem(flag, out, f"is inside the OOD pool {root}: the next scan would read the report's own images")
        if _within(root, out):
            raise _problem(flag, out, f"holds the OOD pool {root}; replacing the report folder would delete it")
    check_not_input(out, inputs, flag, folder=True)
    if os.path.lexists(out) and not out.is_dir():
        raise _problem(flag, out, "exists and is not a folder")
    if out.is_dir():
        foreign = sorted(e for e in os.listdir(out) if e not in OWN_ENTRIES)
        if foreign:
            shown = ", ".join(repr(e) for e in foreign[:3]) + (", ..." if len(foreign) > 3 else "")
            raise _problem(flag, out, f"folder holds files ci-gate did not write ({shown}); give a new or empty folder, "
                                      "the report replaces the folder as a whole")
    return out


def output_error(exc: OSError, out: Path, stage: Path | None = None) -> InputError:
    """An OSError while writing, as bad input naming the path (the final one, not the staging name)."""
    name = exc.filename if exc.filename is not None else out
    text = str(name)
    if stage is not None and text.startswith(str(stage)):
        text = str(out) + text[len(str(stage)):]
    return InputError(text, exc.strerror or str(exc))


@contextlib.contextmanager
def output_errors(out: Path, stage: Path | None = None) -> Iterator[None]:
    """Map write errors on the output location (read-only, full, immutable...) to exit 2."""
    try:
        yield
    except OSError as exc:
        # a failed write() carries no file name; a full or read-only disk is still about the output
        if exc.errno in OUTPUT_ERRNOS and (exc.filename is not None or exc.errno in _UNNAMED_OUTPUT_ERRNOS):
            raise output_error(exc, out, stage) from None
        raise


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _ours(path: Path) -> bool:
    return (path / MARKER).is_file()


def clean_stale(out: Path) -> None:
    """Remove staging/old siblings an interrupted run left; restore an old folder a crash left alone."""
    parent = out.parent
    if not parent.is_dir():
        return
    pattern = _stage_pattern(out.name)
    leftovers = [parent / e for e in os.listdir(parent) if pattern.match(e)]
    leftovers = [p for p in leftovers if p.is_dir() and not p.is_symlink() and _ours(p)]
    olds = [p for p in leftovers if p.name.endswith(".old")]
    if not os.path.lexists(out) and olds:
        # the two-rename fallback died between its renames: the old report is the latest complete one
        newest = max(olds, key=lambda p: p.stat().st_mtime_ns)
        with contextlib.suppress(OSError):
            os.rename(newest, out)
            leftovers.remove(newest)
    for p in leftovers:
        shutil.rmtree(p, ignore_errors=True)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2); False where the system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _swap_in(stage: Path, out: Path) -> None:
    if not os.path.lexists(out) or (out.is_dir() and not any(os.scandir(out))):
        os.rename(stage, out)  # replaces an empty folder in one step
    elif _exchange(stage, out):
        _discard(stage)  # now the previous report
    else:
        old = out.with_name(f"{out.name}.{secrets.token_hex(6)}.old")
        os.rename(out, old)
        os.rename(stage, out)
        _discard(old)
    _fsync_dir(out.parent)


def _discard(path: Path) -> None:
    # mark it first: if we die while deleting, the next run recognises what is left as ours
    with contextlib.suppress(OSError):
        (path / MARKER).write_text(MARKER_TEXT)
    shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def staged_folder(out: Path) -> Iterator[Path]:
    """Yield a fresh staging folder beside ``out``; on success it replaces ``out`` in one rename.

    Write errors (full disk, read-only or immutable folder...) become InputError naming the path;
    on any error the staging folder is removed and ``out`` is left untouched.
    """
    out = Path(os.path.abspath(out))
    stage: Path | None = None
    try:
        with output_errors(out):
            out.parent.mkdir(parents=True, exist_ok=True)
            clean_stale(out)
            stage = out.with_name(f"{out.name}.{secrets.token_hex(6)}.tmp")
            stage.mkdir()
            (stage / MARKER).write_text(MARKER_TEXT)
        with output_errors(out, stage):
            yield stage
            _fsync_dir(stage)
            try:
                _swap_in(stage, out)
            except OSError as exc:
                if exc.errno in (errno.EXDEV, errno.EBUSY):
                    raise InputError("--out", f"{out}: cannot be replaced with one rename ({exc.strerror}; a mount point?); "
                                              "give a folder inside it") from None
                raise
            stage = None
    finally:
        if stage is not None:
            shutil.rmtree(stage, ignore_errors=True)


def own_folder(path: Path) -> bool:
    """Whether every entry of ``path`` is one ci-gate writes (so it may be replaced as a whole)."""
    return path.is_dir() and all(e in OWN_ENTRIES for e in os.listdir(path))


def check_out_file(raw: str | os.PathLike | None, flag: str = "--out", *, inputs: Iterable[tuple[str, str | os.PathLike | None]] = ()) -> Path:
    """An output file path (repaired or converted checkpoint): writable, not a folder, not an input
    (also through a symbolic or hard link: compared by resolved path and by inode)."""
    out = check_out_path(raw, flag)
    with output_errors(out):
        check_not_input(out, inputs, flag, folder=False)
        if out.is_dir():
            raise _problem(flag, out, "is a folder; give a file path")
    return out


def write_scan_files(output: ScanOutput, folder: Path) -> Path:
    """A scan's part of a report folder: triggers/, examples/ and result.json (each file atomic,
    result.json last), into ``folder`` as it is; returns result.json's path."""
    from ci_gate.io import atomic_write_bytes

    folder = Path(folder)
    for rel, data in output.files():
        atomic_write_bytes(folder / rel, data)
    return output.result.save(folder / "result.json")


def write_report_folder(output: ScanOutput, out_dir: Path, formats: Iterable[str]) -> dict[str, Path]:
    """The whole report folder ``ci-gate verify --out`` leaves: the scan's files and the rendered
    ``formats``, built in a staging folder and swapped in as one unit (:func:`staged_folder`).
    Returns format -> file where it is once in place (result.json always)."""
    from ci_gate.report import render

    out_dir = Path(os.path.abspath(out_dir))
    with staged_folder(out_dir) as stage:
        write_scan_files(output, stage)
        staged = render(output.result, stage, [f for f in formats if f != "json"])
    return {"json": out_dir / "result.json"} | {fmt: out_dir / p.relative_to(stage) for fmt, p in staged.items()}
