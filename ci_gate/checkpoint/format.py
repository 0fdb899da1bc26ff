"""The ci-gate checkpoint: one safetensors file that describes itself.

Tensors: the prompt learner under ``prompt_learner.`` (Dassl names: ``ctx``,
``meta_net.linear1.weight``...) and, for encoder-level or small self-contained backbones, the
backbone's state dict under ``backbone.``. The safetensors header's ``__metadata__`` holds one
key, ``ci_gate``, with the JSON of :class:`CheckpointMeta`. Safetensors never executes code on
load, which is why it is the only format ci-gate reads directly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from safetensors import safe_open
from safetensors.torch import save as st_save

from ci_gate.errors import InputError
from ci_gate.io import atomic_write_bytes, sha256_bytes, sha256_file

FORMAT_VERSION = 1
META_KEY = "ci_gate"
LEARNER_PREFIX = "prompt_learner."
BACKBONE_PREFIX = "backbone."

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


class _Meta(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LearnerSpec(_Meta):
    kind: Literal["coop", "cocoop", "zeroshot"]
    class_names: list[str] = Field(min_length=2)
    n_ctx: int = Field(4, ge=0, le=64)
    ctx_init: str | None = "a photo of a"

    @model_validator(mode="after")
    def _names(self) -> "LearnerSpec":
        if any(not n.strip() for n in self.class_names):
            raise ValueError("class_names must not contain empty names")
        if len(set(self.class_names)) != len(self.class_names):
            raise ValueError("class_names must be unique")
        return self


class BackboneSpec(_Meta):
    architecture: str | None = Field(None, description="open_clip architecture name, e.g. 'ViT-B-16'")
    config: dict[str, Any] | None = Field(None, description="inline open_clip model config (embed_dim, vision_cfg, text_cfg)")
    pretrained: str | None = Field(None, description="pretrained tag (e.g. 'openai') or weights file name; None when embedded")
    sha256: str | None = Field(None, description="SHA-256 of the weights file, or of the embedded backbone tensors")
    quick_gelu: bool | None = None
    embedded: bool = False

    @model_validator(mode="after")
    def _identity(self) -> "BackboneSpec":
        if (self.architecture is None) == (self.config is None):
            raise ValueError("backbone needs exactly one of 'architecture' and 'config'")
        if not self.embedded and self.pretrained is None:
            raise ValueError("backbone weights: set 'pretrained' or embed them ('embedded': true)")
        return self


class Preprocessing(_Meta):
    image_size: int = Field(ge=8, le=1024)
    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD
    interpolation: Literal["bicubic", "bilinear"] = "bicubic"
    resize_mode: Literal["shortest"] = "shortest"


class CheckpointMeta(_Meta):
    format_version: int = FORMAT_VERSION
    learner: LearnerSpec
    backbone: BackboneSpec
    preprocessing: Preprocessing
    provenance: dict[str, Any] = Field(default_factory=dict, description="free-form: producer, parent checkpoint, repair record")


class Checkpoint(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)

    path: Path | None
    sha256: str
    meta: CheckpointMeta
    learner_tensors: dict[str, torch.Tensor]
    backbone_tensors: dict[str, torch.Tensor]


def backbone_digest(tensors: dict[str, torch.Tensor]) -> str:
    """Order-independent digest of a state dict, used to pin embedded backbones."""
    parts = []
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        raw = t.reshape(-1).view(torch.uint8).numpy().tobytes()
        parts.append(f"{name}:{t.dtype}:{tuple(t.shape)}:{sha256_bytes(raw)}")
    return sha256_bytes("\n".join(parts).encode())


def save_checkpoint(
    path: str | Path,
    meta: CheckpointMeta,
    learner_tensors: dict[str, torch.Tensor],
    backbone_tensors: dict[str, torch.Tensor] | None = None,
) -> str:
    """Write atomically; returns the file's SHA-256."""
    tensors = {LEARNER_PREFIX + k: v.detach().contiguous().cpu() for k, v in learner_tensors.items()}
    for k, v in (backbone_tensors or {}).items():
        tensors[BACKBONE_PREFIX + k] = v.detach().contiguous().cpu()
    data = st_save(tensors, metadata={META_KEY: meta.model_dump_json()})
    atomic_write_bytes(path, data)
    return sha256_bytes(data)


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read and validate a ci-gate checkpoint; any problem is an InputError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "checkpoint not found")
    if path.suffix in {".pt", ".pth", ".tar", ".bin", ".pkl"}:
        raise InputError(path, "not a safetensors file; import pickled CoOp/CoCoOp checkpoints with 'ci-gate convert'")
    try:
        with safe_open(str(path), framework="pt") as fh:
            header = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as exc:  # safetensors raises its own error types for truncation/corruption
        raise InputError(path, f"not a readable safetensors file (truncated or corrupt?): {exc}") from None
    if META_KEY not in header:
        raise InputError(path, "safetensors file has no ci-gate metadata (is it a ci-gate checkpoint?)")
    try:
        meta = CheckpointMeta.model_validate(json.loads(header[META_KEY]))
    except (json.JSONDecodeError, ValidationError) as exc:
        raise InputError(path, f"invalid ci-gate metadata: {_first_error(exc)}") from None
    if meta.format_version != FORMAT_VERSION:
        raise InputError(path, f"checkpoint format version {meta.format_version} is not supported (this ci-gate reads {FORMAT_VERSION})")
    learner = {k[len(LEARNER_PREFIX):]: v for k, v in tensors.items() if k.startswith(LEARNER_PREFIX)}
    backbone = {k[len(BACKBONE_PREFIX):]: v for k, v in tensors.items() if k.startswith(BACKBONE_PREFIX)}
    stray = [k for k in tensors if not k.startswith((LEARNER_PREFIX, BACKBONE_PREFIX))]
    if stray:
        raise InputError(path, f"unexpected tensors {stray[:3]}")
    _check_tensors(path, meta, learner, backbone)
    return Checkpoint(path=path, sha256=sha256_file(path), meta=meta, learner_tensors=learner, backbone_tensors=backbone)


def _first_error(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        err = exc.errors()[0]
        return f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}"
    return str(exc)


def _check_tensors(path: Path, meta: CheckpointMeta, learner: dict, backbone: dict) -> None:
    kind = meta.learner.kind
    expected = set()
    if kind in ("coop", "cocoop"):
        expected.add("ctx")
    if kind == "cocoop":
        expected |= {"meta_net.linear1.weight", "meta_net.linear1.bias", "meta_net.linear2.weight", "meta_net.linear2.bias"}
    missing = expected - set(learner)
    extra = set(learner) - expected
    if missing:
        raise InputError(path, f"{kind} checkpoint lacks tensors {sorted(missing)}")
    if extra:
        raise InputError(path, f"{kind} checkpoint has unexpected learner tensors {sorted(extra)}")
    for name, t in {**learner, **backbone}.items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise InputError(path, f"tensor {name!r} contains NaN or Inf")
    if "ctx" in learner:
        ctx = learner["ctx"]
        if ctx.dim() != 2 or ctx.shape[0] != meta.learner.n_ctx:
            raise InputError(path, f"ctx has shape {tuple(ctx.shape)}, expected ({meta.learner.n_ctx}, width)")
    if meta.backbone.embedded:
        if not backbone:
            raise InputError(path, "metadata says the backbone is embedded but the file has no backbone tensors")
        if meta.backbone.sha256 and backbone_digest(backbone) != meta.backbone.sha256:
            raise InputError(path, "embedded backbone tensors do not match their pinned SHA-256")
    elif backbone and kind != "zeroshot":
        raise InputError(path, "backbone tensors present but metadata says the backbone is not embedded")
