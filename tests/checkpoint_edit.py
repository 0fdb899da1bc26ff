"""Build a tiny random-weight checkpoint and rewrite its metadata as an attacker would (the
tensors stay byte-identical). Shared by the threat-model and preprocessing tests."""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from pathlib import Path

from ci_gate.checkpoint.format import CheckpointMeta, LearnerSpec, Preprocessing, save_checkpoint
from ci_gate.model.factory import new_learner
from ci_gate.model.small import embedded_backbone, random_clip_state, small_config


def tiny_checkpoint(path: Path, kind: str, class_names: list[str], provenance: dict | None = None) -> Path:
    cfg = small_config("tiny-32")
    state = random_clip_state(cfg, seed=0)
    spec, backbone = embedded_backbone(cfg, state)
    learner_spec = LearnerSpec(kind=kind, class_names=class_names)
    learner = new_learner(backbone, learner_spec, seed=0)
    meta = CheckpointMeta(learner=learner_spec, backbone=spec, preprocessing=Preprocessing(image_size=32), provenance=provenance or {})
    save_checkpoint(path, meta, learner.named_tensors(), state)
    return path


def rewrite_metadata(src: Path, dst: Path, edit: Callable[[dict], None]) -> Path:
    raw = src.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + n])
    meta = json.loads(header["__metadata__"]["ci_gate"])
    edit(meta)
    header["__metadata__"]["ci_gate"] = json.dumps(meta)
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    dst.write_bytes(struct.pack("<Q", len(blob)) + blob + raw[8 + n :])
    return dst
