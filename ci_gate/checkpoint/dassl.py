"""Read Dassl's pickled prompt-learner checkpoints (``prompt_learner/model.pth.tar-N``).

Which learner a state dict belongs to, and which of its tensors ci-gate keeps, is each
learner's own business (``Learner.dassl_claims`` / ``dassl_import`` in ci_gate.learners);
this module only reads the pickle safely and checks what every prompt learner shares.

These files are pickles, so they are read only through ``torch.load(weights_only=True)``, which
rebuilds tensors and plain containers and refuses every other Python object. Dassl also pickles
its training state next to the weights: ``optimizer.state_dict()`` (plain) and
``scheduler.state_dict()``, which for the warmup schedulers CoOp/CoCoOp use by default contains
the *successor* scheduler object and, through it, the optimizer object. Refusing those would
refuse nearly every real checkpoint, so a short, fixed list of training-state class names is
mapped to :class:`_InertRecord`, a class of ours with no behaviour, through torch's own
allowlist. The real classes are never imported and nothing from the file is called; the
training state is discarded.
"""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ci_gate.errors import InputError
from ci_gate.io import sha256_bytes
from ci_gate.learners import DASSL_KINDS, learner_class
from ci_gate.learners.base import DasslImport
from ci_gate.model.backbone import is_torchscript_archive



class _InertRecord:
    """Stand-in for a pickled optimizer or LR scheduler: keeps the pickled state, runs nothing."""

    def __new__(cls, *args: Any, **kwargs: Any) -> "_InertRecord":
        return object.__new__(cls)

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _plain_dict(*_args: Any) -> dict:
    # Stands in for collections.defaultdict (the optimizer's per-parameter state); the unpickler
    # only fills plain dicts, and the default factory is never needed.
    return {}


def _inert_factory() -> dict:
    return {}


_TRAINING_STATE_CLASSES = (
    "torch.optim.lr_scheduler.StepLR",
    "torch.optim.lr_scheduler.MultiStepLR",
    "torch.optim.lr_scheduler.CosineAnnealingLR",
    "torch.optim.lr_scheduler.ExponentialLR",
    "torch.optim.lr_scheduler.ConstantLR",
    "torch.optim.lr_scheduler.LinearLR",
    "torch.optim.sgd.SGD",
    "torch.optim.adam.Adam",
    "torch.optim.adamw.AdamW",
    "torch.optim.rmsprop.RMSprop",
    "dassl.optim.radam.RAdam",
    "dassl.optim.radam.PlainRAdam",
    "dassl.optim.radam.AdamW",
    "dassl.optim.lr_scheduler.ConstantWarmupScheduler",
    "dassl.optim.lr_scheduler.LinearWarmupScheduler",
)
_INERT_GLOBALS: list[tuple[Any, str]] = [
    *((_InertRecord, name) for name in _TRAINING_STATE_CLASSES),
    (_plain_dict, "collections.defaultdict"),
    (_inert_factory, "builtins.dict"),
]
_INERT_NAMES = frozenset(name for _, name in _INERT_GLOBALS)


@dataclass(frozen=True)
class DasslPromptLearner:
    """The prompt-learner tensors of one Dassl checkpoint, as stored (usually fp16)."""

    path: Path
    sha256: str
    kind: str
    tensors: dict[str, torch.Tensor]  # the learner's own, as ci-gate stores them (Dassl names)
    options: dict[str, Any]  # LearnerSpec.options the tensors imply
    token_prefix: torch.Tensor  # (n_cls, 1, width): SOS embedding per class
    token_suffix: torch.Tensor  # (n_cls, L - 1 - n_ctx, width): class name, '.', EOS, padding
    epoch: int | None
    # backbone tensors the file carries (open_clip names), to compare with the pinned backbone
    towers: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def ctx(self) -> torch.Tensor:
        return self.tensors["ctx"]

    @property
    def n_ctx(self) -> int:
        return int(self.ctx.shape[-2])

    @property
    def width(self) -> int:
        return int(self.token_prefix.shape[-1])

    @property
    def n_classes(self) -> int:
        return int(self.token_suffix.shape[0])

    def learner_tensors(self) -> dict[str, torch.Tensor]:
        """What ci-gate's format stores; token_prefix/suffix are rebuilt from the class names."""
        return dict(self.tensors)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _unsafe_globals(data: bytes) -> list[str]:
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(io.BytesIO(data))
    except Exception:  # only used to word the message; the refusal itself already happened
        return []
    return sorted(set(found) - _INERT_NAMES)


def load_pickled_safely(path: Path) -> tuple[Any, str]:
    """``torch.load(weights_only=True)`` with the inert training-state names -> (object, SHA-256).

    The bytes are read once, so the digest is of exactly what was parsed.
    """
    if not path.is_file():
        raise InputError(path, "prompt-learner checkpoint not found")
    if is_torchscript_archive(path):
        raise InputError(path, "TorchScript archive: ci-gate does not execute TorchScript; pass Dassl's prompt_learner/model.pth.tar-N")
    data = path.read_bytes()
    try:
        with torch.serialization.safe_globals(_INERT_GLOBALS):
            obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        objects = _unsafe_globals(data)
        what = ", ".join(objects[:5]) if objects else _first_line(exc)
        raise InputError(
            path,
            f"refused: the file holds Python objects that ci-gate does not unpickle ({what}); "
            "only tensors and plain containers are read (torch.load weights_only=True)",
        ) from None
    except Exception as exc:  # truncated zip, not a torch file at all, ...
        raise InputError(path, f"not a readable PyTorch checkpoint: {type(exc).__name__}: {_first_line(exc)}") from None
    return obj, sha256_bytes(data)


def _state_dict(path: Path, obj: Any) -> tuple[dict[str, torch.Tensor], list[str]]:
    """(the state dict, ``module.`` stripped; the Dassl-importable kinds that claim it, in
    registry order)."""
    state = obj.get("state_dict") if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict) else obj
    keys = frozenset(str(n).removeprefix("module.") for n in state) if isinstance(state, dict) else frozenset()
    claimed = [k for k in DASSL_KINDS if learner_class(k).dassl_claims(keys)]
    if not claimed:
        raise InputError(path, "not a Dassl prompt-learner checkpoint (expected a 'state_dict' holding 'ctx')")
    out = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise InputError(path, f"state_dict entry {key!r} is not a tensor")
        name = str(key).removeprefix("module.")
        # Dassl's load_model neither strips 'module.' nor refuses unexpected keys, so of 'ctx'
        # and 'module.ctx' the reference runs one and ignores the other: never pick between them
        if name in out:
            raise InputError(path, f"state_dict holds {name!r} twice (with and without 'module.')")
        out[name] = value
    return out, claimed


def _detect_kind(path: Path, claimed: list[str], requested: str) -> str:
    if requested != "auto" and requested not in DASSL_KINDS:
        raise InputError(None, f"unknown learner kind {requested!r} (auto, {', '.join(DASSL_KINDS)})")
    found = claimed[-1]  # registry order lists a learner before the ones that extend it
    if requested == "auto" or requested in claimed:
        return found if requested == "auto" else requested
    raise InputError(path, f"--kind {requested}, but the checkpoint has {learner_class(found).dassl_signature}; use --kind {found} or auto")


def _import(path: Path, state: dict[str, torch.Tensor], kind: str) -> DasslImport:
    """The learner's own reading, then what every prompt learner shares."""
    try:
        got = learner_class(kind).dassl_import(state)
    except ValueError as exc:
        raise InputError(path, str(exc)) from None
    unknown = sorted(set(state) - got.used)
    if unknown:
        raise InputError(path, f"tensors ci-gate cannot convert (another prompt-learning method?): {unknown[:5]}")
    for name in sorted(got.used):
        t = state[name]
        if not t.is_floating_point():
            raise InputError(path, f"tensor {name!r} has dtype {t.dtype}, expected floating point")
        if not torch.isfinite(t).all():
            raise InputError(path, f"tensor {name!r} contains NaN or Inf")
    prefix, suffix = got.token_prefix, got.token_suffix
    width = got.tensors["ctx"].shape[-1]
    if prefix.dim() != 3 or prefix.shape[1] != 1 or prefix.shape[2] != width:
        raise InputError(path, f"token_prefix has shape {tuple(prefix.shape)}, expected (n_classes, 1, {width})")
    if suffix.dim() != 3 or suffix.shape[0] != prefix.shape[0] or suffix.shape[2] != width:
        raise InputError(path, f"token_suffix has shape {tuple(suffix.shape)}, expected ({prefix.shape[0]}, length, {width})")
    return got


def read_dassl_checkpoint(path: str | Path, kind: str = "auto") -> DasslPromptLearner:
    """Parse and shape-check a Dassl prompt-learner file. Never writes to it."""
    path = Path(path)
    obj, digest = load_pickled_safely(path)
    state, claimed = _state_dict(path, obj)
    resolved = _detect_kind(path, claimed, kind)
    got = _import(path, state, resolved)
    epoch = obj.get("epoch") if isinstance(obj, dict) else None
    return DasslPromptLearner(
        path=path,
        sha256=digest,
        kind=resolved,
        tensors=got.tensors,
        options=got.options,
        token_prefix=got.token_prefix,
        token_suffix=got.token_suffix,
        towers=got.towers,
        epoch=epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else None,
    )
