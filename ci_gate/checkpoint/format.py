"""The ci-gate checkpoint: one safetensors file that describes itself.

Tensors: the prompt learner under ``prompt_learner.`` (Dassl names: ``ctx``,
``meta_net.linear1.weight``...) and, for encoder-level or small self-contained backbones, the
backbone's state dict under ``backbone.``. The safetensors header's ``__metadata__`` holds one
key, ``ci_gate``, with the JSON of :class:`CheckpointMeta`. Safetensors never executes code on
load, which is why it is the only format ci-gate reads directly.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import reprlib
import stat
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from safetensors import safe_open
from safetensors.torch import save as st_save

from ci_gate.errors import InputError
from ci_gate.learners import LearnerKind, learner_class
from ci_gate.io import atomic_write_bytes, sha256_bytes, sha256_file

FORMAT_VERSION = 1
META_KEY = "ci_gate"
LEARNER_PREFIX = "prompt_learner."
BACKBONE_PREFIX = "backbone."

# Every byte of a checkpoint is written by the party the gate is checking, so each size below is
# a bound on what a hostile file can make the loader allocate or recurse through.
MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit on the JSON header
MAX_META_CHARS = 16 * 1024 * 1024
MAX_META_DEPTH = 64
MAX_CLASSES = 50_000
MAX_NAME_CHARS = 200
MAX_TENSORS = 10_000
MAX_CTX_WIDTH = 16_384
# dtype names as the safetensors header spells them
LEARNER_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
BACKBONE_DTYPES = {**LEARNER_DTYPES, "F64": torch.float64}
# Integer buffers open_clip backbones legitimately carry (BatchNorm counters in the ResNet
# towers, position ids of HF text towers); any other integer tensor in a backbone is refused.
BACKBONE_INT_BUFFERS = ("num_batches_tracked", "position_ids")
BACKBONE_INT_DTYPES = {"I64", "I32"}

# Characters that let a name rewrite the terminal, a log line or the reading order of a report:
# C0/DEL/C1 controls (ESC, NUL, newline...), lone surrogates (not encodable as UTF-8), the line
# and paragraph separators, and the bidi embedding/override/isolate marks.
_UNSAFE_CHARS = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff\u2028\u2029\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _safe_text(value: str) -> str:
    bad = _UNSAFE_CHARS.search(value)
    if bad:
        raise ValueError(f"contains control character U+{ord(bad.group()):04X} at position {bad.start()}")
    return value


def _text(max_length: int) -> Any:
    return Annotated[str, StringConstraints(strict=True, max_length=max_length), AfterValidator(_safe_text)]


ShortText = _text(MAX_NAME_CHARS)  # class names, ctx_init, architecture names
PathText = _text(4096)  # a pretrained tag or weights file name
Sha256Hex = Annotated[str, StringConstraints(strict=True, pattern=r"^[0-9a-f]{64}$")]

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


class _Meta(BaseModel):
    # the JSON parser refuses NaN/Infinity constants; this refuses them where pydantic's lax mode
    # would coerce a string ("NAN", "-Infinity") into a float (found by tests/test_fuzz_checkpoint.py)
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def prompt_key(name: str) -> str:
    """What the text encoder reads of a class name: lower-cased, '_' as a space (PromptTokens)."""
    return " ".join(name.replace("_", " ").split()).lower()


class LearnerSpec(_Meta):
    kind: LearnerKind  # the registry's kinds (ci_gate.learners)
    class_names: list[ShortText] = Field(min_length=2, max_length=MAX_CLASSES)
    n_ctx: StrictInt = Field(4, ge=0, le=64)
    ctx_init: ShortText | None = Field("a photo of a", validate_default=True)
    # the learner's own settings, validated by its Options model (ci_gate.learners.base)
    options: dict[str, Any] = Field(default_factory=dict, validate_default=True)

    # field validators, so an error's location names the field (in the loader's and in
    # 'ci-gate convert''s messages); each sees the fields declared before it in info.data
    @field_validator("class_names")
    @classmethod
    def _names(cls, names: list[str]) -> list[str]:
        # The text encoder lower-cases and reads '_' as a space (PromptTokens), so names that
        # differ only in that way get the same prompt: two indistinguishable classes.
        seen: dict[str, int] = {}
        for i, name in enumerate(names):
            key = prompt_key(name)
            if not key:
                raise ValueError(f"class_names[{i}] is empty")
            if key in seen:
                raise ValueError(f"class_names must be unique: [{seen[key]}] and [{i}] give the same prompt")
            seen[key] = i
        return names

    @field_validator("n_ctx")
    @classmethod
    def _n_ctx(cls, n_ctx: int, info: ValidationInfo) -> int:
        kind = info.data.get("kind")
        if kind is not None and learner_class(kind).tensors_required and n_ctx < 1:
            raise ValueError(f"a {kind} learner needs n_ctx >= 1")
        return n_ctx

    @field_validator("ctx_init")
    @classmethod
    def _ctx_init(cls, ctx_init: str | None, info: ValidationInfo) -> str | None:
        n_ctx = info.data.get("n_ctx")
        # every whitespace-separated word is at least one token, so more words than n_ctx can
        # never tokenize to the n_ctx context vectors the learner has (zero-shot has none)
        kind = info.data.get("kind")
        tuned = kind is not None and learner_class(kind).tensors_required
        if ctx_init is not None and n_ctx is not None and tuned and len(ctx_init.split()) > n_ctx:
            raise ValueError(f"ctx_init has {len(ctx_init.split())} words, more than n_ctx={n_ctx}")
        return ctx_init

    @field_validator("options")
    @classmethod
    def _options(cls, options: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        kind = info.data.get("kind")
        if kind is None:
            return options
        # canonical form: what the learner's model accepts, defaults included, so two spellings
        # of the same settings compare equal (the unset default too: validate_default) and a
        # file pins its settings rather than leaving them to a later version's defaults
        out = learner_class(kind).Options.model_validate(options).model_dump(mode="json")
        # a learner's text options (MaPLe's name_prefix) reach prompts, logs and reports as the
        # class names do: the same characters are refused in every learner's, in one place
        for key, value in out.items():
            if isinstance(value, str):
                try:
                    _safe_text(value)
                except ValueError as exc:
                    raise ValueError(f"{key} {exc}") from None
        return out


class BackboneSpec(_Meta):
    architecture: ShortText | None = Field(None, description="open_clip architecture name, e.g. 'ViT-B-16'")
    config: dict[str, Any] | None = Field(None, description="inline open_clip model config (embed_dim, vision_cfg, text_cfg)")
    pretrained: PathText | None = Field(None, description="pretrained tag (e.g. 'openai') or weights file name; None when embedded")
    sha256: Sha256Hex | None = Field(None, description="SHA-256 (lower-case hex) of the weights file, or of the embedded backbone tensors")
    quick_gelu: StrictBool | None = None
    embedded: StrictBool = False

    @field_validator("architecture")
    @classmethod
    def _architecture(cls, architecture: str | None) -> str | None:
        if architecture is not None:
            check_named_text_tower(architecture)
        return architecture

    @field_validator("config")
    @classmethod
    def _config(cls, config: dict[str, Any] | None) -> dict[str, Any] | None:
        if config is not None:
            check_inline_config(config)
            if builtin_text_tower(config):
                check_tokenizer_fit(config["text_cfg"], "text_cfg")
        return config

    @model_validator(mode="after")
    def _identity(self) -> "BackboneSpec":
        if (self.architecture is None) == (self.config is None):
            raise ValueError("backbone needs exactly one of 'architecture' and 'config'")
        if not self.embedded and self.pretrained is None:
            raise ValueError("backbone weights: set 'pretrained' or embed them ('embedded': true)")
        return self


# An inline config is attacker-written and goes to open_clip's CLIP(**config): only the keys
# CLIP and its tower configs take (plus the two backbone.py consumes), with open_clip's own
# types, and sizes that bound what building the model may allocate.
_CONFIG_KEYS = {"embed_dim", "vision_cfg", "text_cfg", "quick_gelu", "preprocess_cfg", "custom_text",
                "init_logit_scale", "init_logit_bias", "nonscalar_logit_scale"}
_CONFIG_BOUNDS = {"embed_dim": (1, 16_384), "width": (1, 16_384), "head_width": (1, 16_384), "heads": (1, 1024), "layers": (1, 256),
                  "patch_size": (1, 1024), "image_size": (8, 1024), "context_length": (1, 4096), "vocab_size": (1, 1_000_000),
                  "attn_pooler_queries": (1, 4096), "attn_pooler_heads": (1, 1024)}
# a tower that fetches its own weights would be a backbone the checkpoint does not pin
_DOWNLOAD_FLAGS = ("timm_model_pretrained", "hf_model_pretrained")
# open_clip's annotations say str/int, but its own timm-tower configs set these to null
_NULLABLE = {"timm_proj", "patch_size"}


# free-form keyword arguments open_clip hands to nn.GELU / nn.LayerNorm: a bad value builds and
# only fails once the model runs (an internal error, not bad input), so only what open_clip's own
# registered towers use is taken (SigLIP: norm eps 1e-6, tanh-approximated GELU)
_LAYER_KWARGS: dict[str, dict[str, Any]] = {
    "act_kwargs": {"approximate": lambda v: v in ("none", "tanh")},
    "norm_kwargs": {"eps": lambda v: type(v) is float and 0 < v < 1},
}


def _check_layer_kwargs(where: str, value: Any, allowed: dict[str, Any]) -> None:
    if not isinstance(value, dict):
        raise ValueError(f"{where} must be an object")
    for k, v in value.items():
        if k not in allowed:
            raise ValueError(f"{where}: unsupported key {_show(repr(k), 40)} (ci-gate takes {', '.join(sorted(allowed))})")
        if not allowed[k](v):
            raise ValueError(f"{where}.{k}: unsupported value {_show(repr(v), 40)}")


def check_inline_config(config: dict[str, Any]) -> None:
    """Raise ValueError naming the first key of an inline open_clip config that CLIP(**config)
    would not take, would take with the wrong type, or would take at an unbounded size."""
    import dataclasses

    from open_clip.model import CLIPTextCfg, CLIPVisionCfg
    from pydantic import TypeAdapter

    unknown = sorted(set(config) - _CONFIG_KEYS)
    if unknown:
        raise ValueError(f"unknown key {_show(repr(unknown[0]), 60)} (an open_clip config takes {', '.join(sorted(_CONFIG_KEYS))})")
    for key in ("embed_dim", "vision_cfg", "text_cfg"):
        if key not in config:
            raise ValueError(f"{key} is required")
    if type(config["embed_dim"]) is not int:
        raise ValueError("embed_dim must be an integer")
    _bounded("embed_dim", config["embed_dim"])
    for key in ("quick_gelu", "custom_text", "nonscalar_logit_scale"):
        if key in config and type(config[key]) is not bool:
            raise ValueError(f"{key} must be true or false")
    for key, tower in (("vision_cfg", CLIPVisionCfg), ("text_cfg", CLIPTextCfg)):
        sub = config[key]
        if not isinstance(sub, dict):
            raise ValueError(f"{key} must be an object")
        fields = {f.name for f in dataclasses.fields(tower)}
        unknown = sorted(set(sub) - fields)
        if unknown:
            raise ValueError(f"{key}: unknown key {_show(repr(unknown[0]), 60)}")
        try:
            # JSON mode: strict types, and JSON arrays for open_clip's tuple fields
            TypeAdapter(tower).validate_json(json.dumps({k: v for k, v in sub.items() if not (v is None and k in _NULLABLE)}), strict=True)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"][:1])
            raise ValueError(f"{key}.{_show(where, 40)}: {_show(err['msg'])}") from None
        for name, value in sub.items():
            if name in _CONFIG_BOUNDS and value is not None:
                for v in value if isinstance(value, list) else [value]:
                    _bounded(f"{key}.{name}", v)
            if name in _DOWNLOAD_FLAGS and value:
                raise ValueError(f"{key}.{name}: an inline config may not download tower weights; embed or pin them")
            if name == "mlp_ratio" and not 0 < value <= 64:
                raise ValueError(f"{key}.mlp_ratio {value} is outside (0, 64]")
            if name in _LAYER_KWARGS and value is not None:
                _check_layer_kwargs(f"{key}.{name}", value, _LAYER_KWARGS[name])


@functools.cache
def clip_tokenizer_ids() -> tuple[int, int]:
    """(vocabulary size, end-of-text id) of the tokenizer every prompt goes through: open_clip's
    CLIP BPE tokenizer, whatever the text tower (ci_gate.model.backbone builds no other)."""
    from open_clip.tokenizer import SimpleTokenizer

    tokenizer = SimpleTokenizer()
    return len(tokenizer.encoder), tokenizer.eot_token_id


def builtin_text_tower(config: dict[str, Any]) -> bool:
    """Whether CLIP builds the config's text tower itself; the backbone loader refuses custom and
    Hugging Face text towers (ci_gate.model.backbone), naming them, so only these are checked."""
    return "custom_text" not in config and "hf_model_name" not in config.get("text_cfg", {})


def check_tokenizer_fit(text_cfg: dict[str, Any], where: str) -> None:
    """Raise ValueError if a built-in text tower cannot read the CLIP tokenizer's output as
    open_clip's CLIP.encode_text runs it: ids out of its embedding table index out of range (a
    device-side assert on CUDA), and a tower that pools at another end token reads position 0,
    the same start token, for every class. Separate from check_inline_config, which accepts what
    open_clip builds: some of its registered towers are built for another tokenizer."""
    from open_clip.model import CLIPTextCfg

    vocab, eot = clip_tokenizer_ids()
    size = text_cfg.get("vocab_size", CLIPTextCfg.vocab_size)
    if size < vocab:
        raise ValueError(f"{where}.vocab_size {_show(size, 24)} is smaller than the vocabulary of the CLIP tokenizer every prompt is tokenized with ({vocab} tokens)")
    if text_cfg.get("embed_cls"):
        # CLIP keeps the tower's context_length + 1 positions but drops its class embedding
        raise ValueError(f"{where}.embed_cls: CLIP's built-in text tower has no class embedding; its context_length + 1 positions do not fit the tokenizer's context_length tokens")
    pool, eos = text_cfg.get("pool_type", CLIPTextCfg.pool_type), text_cfg.get("eos_id", CLIPTextCfg.eos_id)
    if pool == "eos" and eos != eot:
        raise ValueError(f"{where}.eos_id {_show(eos, 24)}: pool_type 'eos' pools at that token, and the CLIP tokenizer ends every prompt with {eot}")


def check_named_text_tower(architecture: str) -> None:
    """check_tokenizer_fit for a registered open_clip architecture: some (CLIPA, the 'worldwide'
    towers) are built-in text towers trained with another tokenizer. An unknown name is left to
    the backbone loader, which refuses it by name."""
    import open_clip

    cfg = open_clip.get_model_config(architecture)
    if cfg is None or not builtin_text_tower(cfg):
        return
    check_tokenizer_fit(cfg.get("text_cfg", {}), f"{architecture}'s text_cfg")


def _bounded(name: str, value: int) -> None:
    low, high = _CONFIG_BOUNDS[name.rsplit(".", 1)[-1]]
    if not low <= value <= high:
        raise ValueError(f"{name} {_show(value, 24)} is outside [{low}, {high}]")


class Preprocessing(_Meta):
    image_size: int = Field(ge=8, le=1024)
    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD
    interpolation: Literal["bicubic", "bilinear"] = "bicubic"
    resize_mode: Literal["shortest"] = "shortest"


class CheckpointMeta(_Meta):
    # load_checkpoint also insists the key is present: only code may rely on the default
    format_version: StrictInt = FORMAT_VERSION
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
    """Read and validate a ci-gate checkpoint; any problem is an InputError naming the file.

    Checks run cheapest first and nothing is materialised before the header has passed: the
    file itself, the container bytes, the metadata, the tensors' names, dtypes and shapes from
    the header, and only then the tensor data (finite values, the embedded backbone's digest).
    """
    path = Path(path)
    size = _regular_file_size(path)
    _check_container(path, size)
    try:
        fh = safe_open(str(path), framework="pt")
    except Exception as exc:  # safetensors raises its own error types for truncation/corruption
        raise InputError(path, f"not a readable safetensors file (truncated or corrupt?): {_show(exc)}") from None
    with fh:
        header = _lib(path, fh.metadata) or {}
        names = _lib(path, fh.keys)
        if len(names) > MAX_TENSORS:
            raise InputError(path, f"{len(names)} tensors, more than the {MAX_TENSORS} a checkpoint may hold")
        if META_KEY not in header:
            raise InputError(path, "safetensors file has no ci-gate metadata (is it a ci-gate checkpoint?)")
        meta = _parse_meta(path, header[META_KEY])
        layout = {}
        for name in names:
            view = _lib(path, fh.get_slice, name)
            layout[name] = (_lib(path, view.get_dtype), tuple(_lib(path, view.get_shape)))
        _check_layout(path, meta, layout)
        tensors = {name: _lib(path, fh.get_tensor, name) for name in names}
    for name, t in tensors.items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise InputError(path, f"tensor {_tensor_name(name)} contains NaN or Inf")
    learner = {k[len(LEARNER_PREFIX):]: v for k, v in tensors.items() if k.startswith(LEARNER_PREFIX)}
    backbone = {k[len(BACKBONE_PREFIX):]: v for k, v in tensors.items() if k.startswith(BACKBONE_PREFIX)}
    if meta.backbone.embedded and meta.backbone.sha256 and backbone_digest(backbone) != meta.backbone.sha256:
        raise InputError(path, "embedded backbone tensors do not match their pinned SHA-256")
    return Checkpoint(path=path, sha256=sha256_file(path), meta=meta, learner_tensors=learner, backbone_tensors=backbone)


_PICKLE_SUFFIXES = {".pt", ".pth", ".tar", ".bin", ".pkl", ".ckpt"}
_CONVERT = "import CoOp/CoCoOp checkpoints with 'ci-gate convert'"


def _regular_file_size(path: Path) -> int:
    """stat (following symlinks), never open: opening a FIFO blocks until a writer appears."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise InputError(path, f"checkpoint not found (dangling symlink to {_show(os.readlink(path))})") from None
        raise InputError(path, "checkpoint not found") from None
    except (OSError, ValueError) as exc:  # ELOOP, ENAMETOOLONG, EACCES on a parent, a NUL in the name
        raise InputError(path, f"cannot read checkpoint: {_show(getattr(exc, 'strerror', None) or exc)}") from None
    via = f" (via symlink to {_show(os.path.realpath(path))})" if os.path.islink(path) else ""
    if stat.S_ISDIR(st.st_mode):
        raise InputError(path, f"is a directory, not a checkpoint file{via}")
    if not stat.S_ISREG(st.st_mode):
        kind = "a FIFO" if stat.S_ISFIFO(st.st_mode) else "a character device" if stat.S_ISCHR(st.st_mode) else (
            "a block device" if stat.S_ISBLK(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode) else "special")
        raise InputError(path, f"not a regular file ({kind}){via}")
    return st.st_size


def _check_container(path: Path, size: int) -> None:
    """Judge the file by its first bytes, not its name: safetensors starts with an 8-byte
    little-endian header length followed by the JSON header's '{'."""
    if size == 0:
        raise InputError(path, "empty file, not a checkpoint")
    try:
        # O_NONBLOCK: if the file was swapped for a FIFO since the stat, open still returns
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise InputError(path, f"cannot read checkpoint: {_show(exc.strerror or exc)}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise InputError(path, "not a regular file")
        head = os.read(fd, 9)
    finally:
        os.close(fd)
    n = int.from_bytes(head[:8], "little") if len(head) >= 8 else -1
    if 2 <= n <= size - 8 and head[8:9] == b"{":
        if n > MAX_HEADER_BYTES:
            raise InputError(path, f"safetensors header of {n} bytes exceeds the {MAX_HEADER_BYTES // 2**20} MB limit")
        return
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        raise InputError(path, f"a zip archive (torch.save or TorchScript file), not safetensors; {_CONVERT}")
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        raise InputError(path, f"a pickle/torch.save file, not safetensors; {_CONVERT}")
    hint = f"; {_CONVERT}" if path.suffix.lower() in _PICKLE_SUFFIXES else ""
    if n < 0:
        raise InputError(path, f"not a safetensors file: {size} bytes is shorter than the 8-byte header length{hint}")
    if n > MAX_HEADER_BYTES:
        raise InputError(path, f"not a safetensors file: header length {n} exceeds the {MAX_HEADER_BYTES // 2**20} MB limit{hint}")
    if n > size - 8:
        raise InputError(path, f"not a safetensors file (truncated?): header length {n} is larger than the file's {size} bytes{hint}")
    raise InputError(path, f"not a safetensors file: the header is not a JSON object{hint}")


def _lib(path: Path, fn, *args):
    try:
        return fn(*args)
    except Exception as exc:  # safetensors' error types for a header that lies about its data
        raise InputError(path, f"not a readable safetensors file (truncated or corrupt?): {_show(exc)}") from None


class _MetaJSONError(ValueError):
    pass


def _reject_constant(name: str) -> float:
    raise _MetaJSONError(f"{name} is not a finite number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _MetaJSONError(f"number {text[:24]} overflows to infinity")
    return value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # with duplicates, which value wins depends on the parser: one reader could see what another does not
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise _MetaJSONError(f"duplicate key {_show(repr(key), 60)}")
        obj[key] = value
    return obj


_SURROGATE = re.compile("[\ud800-\udfff]")


def _document_problem(obj: Any) -> str | None:
    """Depth, and lone surrogates: JSON's \\ud800 escapes decode to strings that cannot be
    written back as UTF-8, so a free-form field (provenance, an inline config) holding one would
    crash whatever serialises the metadata later (a repair's provenance, a report)."""
    stack = [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (dict, list)):
            if depth > MAX_META_DEPTH:
                return f"nested deeper than {MAX_META_DEPTH} levels"
            if isinstance(node, dict):
                stack.extend((key, depth) for key in node)
                stack.extend((child, depth + 1) for child in node.values())
            else:
                stack.extend((child, depth + 1) for child in node)
        elif isinstance(node, str) and _SURROGATE.search(node):
            return f"a string holds a lone surrogate (U+{ord(_SURROGATE.search(node).group()):04X}), which is not valid Unicode"
    return None


def _parse_meta(path: Path, text: str) -> CheckpointMeta:
    if len(text) > MAX_META_CHARS:
        raise InputError(path, f"metadata: {len(text)} characters, more than the {MAX_META_CHARS} allowed")
    try:
        raw = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float, object_pairs_hook=_unique_keys)
    except RecursionError:
        raise InputError(path, f"metadata: nested deeper than {MAX_META_DEPTH} levels") from None
    except _MetaJSONError as exc:
        raise InputError(path, f"metadata: {exc}") from None
    except ValueError as exc:  # JSONDecodeError, or an integer beyond Python's digit limit
        raise InputError(path, f"metadata: not valid JSON ({_show(exc)})") from None
    problem = _document_problem(raw)
    if problem:
        raise InputError(path, f"metadata: {problem}")
    if not isinstance(raw, dict):
        raise InputError(path, f"metadata: expected a JSON object, got {_json_kind(raw)}")
    # checked before the schema: a future version may have a different one
    if "format_version" not in raw:
        raise InputError(path, f"metadata.format_version: missing (this ci-gate reads format version {FORMAT_VERSION})")
    version = raw["format_version"]
    if type(version) is not int:
        raise InputError(path, f"metadata.format_version: must be the integer {FORMAT_VERSION}, got {_json_kind(version)} {_show_value(version)}")
    if version != FORMAT_VERSION:
        raise InputError(path, f"metadata.format_version: version {_show(version, 24)} is not supported (this ci-gate reads {FORMAT_VERSION})")
    try:
        return CheckpointMeta.model_validate(raw)
    except ValidationError as exc:
        raise InputError(path, _first_error(exc)) from None


def _json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    return {dict: "an object", list: "an array", str: "a string", int: "an integer", float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def _show_value(value: Any) -> str:
    return _show(reprlib.repr(value), 60)


def _show(value: object, limit: int = 160) -> str:
    """Attacker-written text made safe for one log line: controls escaped, length capped."""
    text = _UNSAFE_CHARS.sub(lambda m: repr(m.group())[1:-1], str(value))
    return text if len(text) <= limit else text[:limit] + "..."


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = "metadata"
    for part in err["loc"]:
        loc += f"[{part}]" if isinstance(part, int) else f".{_show(part, 40)}"
    msg = str(err["msg"]).removeprefix("Value error, ")
    return f"{loc}: {_show(msg)}"


def _tensor_name(name: str) -> str:
    short = name.removeprefix(LEARNER_PREFIX)
    return _show(repr(short), 100)


def _names(names: list[str], at_most: int = 3) -> str:
    shown = ", ".join(_show(repr(n), 60) for n in names[:at_most])
    return shown + (f" and {len(names) - at_most} more" if len(names) > at_most else "")


def _check_layout(path: Path, meta: CheckpointMeta, layout: dict[str, tuple[str, tuple[int, ...]]]) -> None:
    """Names, dtypes and shapes, from the header alone (before any tensor data is read)."""
    stray = sorted(k for k in layout if not k.startswith((LEARNER_PREFIX, BACKBONE_PREFIX)))
    if stray:
        raise InputError(path, f"unexpected tensors {_names(stray)}")
    learner = {k[len(LEARNER_PREFIX):]: v for k, v in layout.items() if k.startswith(LEARNER_PREFIX)}
    backbone = {k: v for k, v in layout.items() if k.startswith(BACKBONE_PREFIX)}
    kind = meta.learner.kind
    learner_type = learner_class(kind)
    expected = learner_type.expected_tensors(meta.learner)
    missing = expected - set(learner)
    extra = set(learner) - expected
    if missing:
        raise InputError(path, f"{kind} checkpoint lacks tensors {sorted(missing)}")
    if extra:
        raise InputError(path, f"{kind} checkpoint has unexpected learner tensors {_names(sorted(extra))}")
    for name, (dtype, shape) in layout.items():
        if 0 in shape:
            raise InputError(path, f"tensor {_tensor_name(name)} is empty (shape {shape})")
        if name.startswith(LEARNER_PREFIX):
            if dtype not in LEARNER_DTYPES:
                raise InputError(path, f"tensor {_tensor_name(name)} has dtype {_show(dtype, 20)}; learner tensors must be F32, F16 or BF16")
        elif dtype not in BACKBONE_DTYPES and not (dtype in BACKBONE_INT_DTYPES and name.rsplit(".", 1)[-1] in BACKBONE_INT_BUFFERS):
            raise InputError(path, f"tensor {_tensor_name(name)} has dtype {_show(dtype, 20)}; backbone tensors must be floating point (F64, F32, F16, BF16)")
    try:
        learner_type.check_shapes(meta.learner, {k: v[1] for k, v in learner.items()}, MAX_CTX_WIDTH)
    except ValueError as exc:
        raise InputError(path, str(exc)) from None
    if meta.backbone.embedded:
        if not backbone:
            raise InputError(path, "metadata says the backbone is embedded but the file has no backbone tensors")
    elif backbone:
        # every learner kind, zero-shot included: the scan loads the published weights, so a tower
        # in the file would ride along with it (and in its SHA-256) without ever being scanned
        raise InputError(path, "backbone tensors present but metadata says the backbone is not embedded")
