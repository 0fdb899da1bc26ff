"""What one scan found, in memory: the Result plus the tensors its image paths stand for.

The scan (ci_gate.scan) writes nothing. Commands that only need the verdict and the triggers
(repair, canary, the API) read them from here; the report folder is written from here by
ci_gate.report.folder.write_scan_files, and the bytes it writes are encoded by ci_gate.artifacts
only then. Importing this module does not import torch.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ci_gate.result import Result

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class TriggerImage:
    """One class's reconstructed trigger at the rung the Result reports for it."""

    index: int
    name: str
    delta: torch.Tensor  # pixel-space perturbation, CPU, float: what the class's numbers were measured with
    epsilon: float
    png: str  # the Result's trigger_png
    tensor: str  # the Result's trigger_tensor
    mask: torch.Tensor | None = None  # patch family (ci_gate.inversion.patch): the trigger is (1 - mask) x + mask pattern,
    pattern: torch.Tensor | None = None  # and delta only pictures it (its change to a mid-grey image)


@dataclass(frozen=True)
class ExampleImages:
    """A clean pool image and its triggered copy, for one flagged or suspicious class."""

    index: int  # the class whose trigger was added
    clean: torch.Tensor  # (3, H, W) in [0, 1]
    triggered: torch.Tensor
    clean_png: str
    triggered_png: str


@dataclass(frozen=True)
class ScanOutput:
    result: Result
    triggers: tuple[TriggerImage, ...] = ()
    examples: tuple[ExampleImages, ...] = ()

    def trigger(self, index: int) -> TriggerImage:
        for t in self.triggers:
            if t.index == index:
                return t
        raise KeyError(f"the scan has no trigger for class {index}")

    def delta(self, index: int) -> torch.Tensor:
        """Class ``index``'s trigger, as a saved trigger file would give it back: a float copy of
        its own, so a caller that changes it cannot change what the folder is written from."""
        return self.trigger(index).delta.detach().float().clone()

    def files(self) -> Iterator[tuple[str, bytes]]:
        """(path relative to the report folder, bytes) for every image and tensor the Result names,
        encoded as they are yielded, in the order the scan used to write them."""
        from ci_gate.artifacts import png_bytes, trigger_png_bytes, trigger_tensor_bytes

        for t in self.triggers:
            yield t.png, trigger_png_bytes(t.delta, t.epsilon)
            yield t.tensor, trigger_tensor_bytes(t.delta, t.name, t.epsilon, t.mask, t.pattern)
            for e in self.examples:
                if e.index == t.index:
                    yield e.clean_png, png_bytes(e.clean)
                    yield e.triggered_png, png_bytes(e.triggered)
