"""Which torch device a run uses: the one device picker of the scan, repair, canary and benchmarks."""

from __future__ import annotations

import torch

from ci_gate.errors import InputError


def pick_device(setting: str, source: str = "policy") -> torch.device:
    """``auto``: CUDA when there is a CUDA device, else the CPU; otherwise the named device.

    A CUDA device that is not there is bad input, named by ``source`` (the policy's ``device``,
    a command's ``--device``), and refused here rather than by the first tensor moved to it.
    """
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if setting.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(source, f"device {setting!r} requested but no CUDA device is available")
    return torch.device(setting)
