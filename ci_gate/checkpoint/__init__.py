"""Checkpoint stage: the self-describing safetensors format and importers for other formats."""

from ci_gate.checkpoint.format import (
    FORMAT_VERSION,
    BackboneSpec,
    Checkpoint,
    CheckpointMeta,
    LearnerSpec,
    Preprocessing,
    load_checkpoint,
    save_checkpoint,
)

__all__ = [
    "FORMAT_VERSION",
    "BackboneSpec",
    "Checkpoint",
    "CheckpointMeta",
    "LearnerSpec",
    "Preprocessing",
    "load_checkpoint",
    "save_checkpoint",
]
