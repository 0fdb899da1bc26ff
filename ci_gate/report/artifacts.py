"""The image files a Result names (trigger PNGs, example pairs), resolved inside the result folder.

A result.json may come from anywhere (``ci-gate report`` re-renders saved results), so a path in it
is trusted only if it stays inside the result folder and the file really is a PNG: otherwise a
crafted result could make the HTML report inline an arbitrary file from the machine that renders it.
"""

from __future__ import annotations

import base64
from pathlib import Path, PurePosixPath

from ci_gate.result import Result

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def budget_label(epsilon: float | None, family: str = "linf") -> str:
    """A rung's budget as reports print it: an L-inf budget in 1/255 units, or a patch-family
    mask area as a share of the image's pixels."""
    if epsilon is None:
        return "n/a"
    return f"{epsilon * 255:.0f}/255" if family == "linf" else f"patch {epsilon:.0%} of pixels"


def shown_epsilon(epsilon: float | None, family: str = "linf") -> float | None:
    """The range the trigger PNG was written for: a patch's picture spans [-0.5, 0.5] (gain 1)."""
    return epsilon if family == "linf" or epsilon is None else 0.5


def trigger_gain(epsilon: float) -> float:
    """How much a trigger PNG magnifies its perturbation: the budget's range [-eps, eps] is stretched
    over the whole pixel range around mid-grey, so a pixel shows 0.5 + gain * delta (a 4/255 trigger
    is shown 32x). ci_gate.artifacts.amplify writes the PNGs with it; reports state it."""
    return 1.0 / (2.0 * epsilon)


def named_files(result: Result) -> list[tuple[str, str]]:
    """(field, path) of every file the Result names, trigger tensors included, in report order."""
    named = []
    for i, cls in enumerate(result.classes):
        named += [(f"classes[{i}].{field}", rel) for field in ("trigger_png", "trigger_tensor") if (rel := getattr(cls, field))]
    for i, example in enumerate(result.examples):
        named += [(f"examples[{i}].clean_png", example.clean_png), (f"examples[{i}].triggered_png", example.triggered_png)]
    return named


def referenced_paths(result: Result) -> list[str]:
    """Every image path the Result names, in report order, without duplicates."""
    return list(dict.fromkeys(rel for field, rel in named_files(result) if not field.endswith(".trigger_tensor")))


def relative_parts(rel: str) -> tuple[str, ...] | None:
    """The components of an artifact path as a path below a folder; None when it is absolute, climbs
    out with ``..`` or names the folder itself (a scan writes none of these)."""
    posix = PurePosixPath(rel.replace("\\", "/"))
    if posix.is_absolute() or ".." in posix.parts or not posix.parts:
        return None
    return posix.parts


def resolve(result_dir: Path, rel: str) -> Path | None:
    """The file for a relative artifact path, or None if it is absent or points outside result_dir."""
    parts = relative_parts(rel)
    if parts is None:
        return None
    root = result_dir.resolve()
    try:
        path = (root / Path(*parts)).resolve()
        found = path.is_relative_to(root) and path.is_file()
    except (OSError, ValueError):  # a name too long, or with a NUL byte: no such file, not a crash
        return None
    return path if found else None


def read_png(result_dir: Path, rel: str) -> bytes | None:
    path = resolve(result_dir, rel)
    if path is None:
        return None
    data = path.read_bytes()
    return data if data.startswith(PNG_SIGNATURE) else None


def png_data_uri(result_dir: Path, rel: str | None) -> str | None:
    if not rel:
        return None
    data = read_png(result_dir, rel)
    if data is None:
        return None
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def missing_artifacts(result: Result, result_dir: Path) -> list[str]:
    """Named artifacts that cannot be shown (absent, outside the folder, or not a PNG)."""
    return [rel for rel in referenced_paths(result) if read_png(result_dir, rel) is None]
