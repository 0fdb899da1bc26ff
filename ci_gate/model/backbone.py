"""Build the frozen open_clip backbone a checkpoint names, and load its weights safely.

Weights come from the checkpoint itself (embedded), a local file, or an open_clip pretrained
tag (resolved through open_clip's own download cache). Pickled files are only read with
``torch.load(weights_only=True)``; TorchScript archives are refused. A pinned SHA-256 is checked
before the weights are used.

OpenAI's CLIP weights were trained with QuickGELU. open_clip's plain architecture names
(``ViT-B-16``) use nn.GELU, and loading OpenAI weights into them runs without error but gives
silently wrong features. We switch to QuickGELU when the tag's pretrained config or the file's
OpenAI-format markers say so, and refuse when the checkpoint insists on plain GELU.
"""

from __future__ import annotations

import copy
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import open_clip
import torch
from open_clip.model import CLIP
from open_clip.transform import PreprocessCfg, merge_preprocess_dict
from safetensors.torch import load_file

from ci_gate.checkpoint.format import BackboneSpec, Preprocessing, backbone_digest, builtin_text_tower
from ci_gate.errors import InputError
from ci_gate.io import sha256_file

# Keys that OpenAI's original state dicts carry and open_clip-trained ones do not.
_OPENAI_MARKERS = ("input_resolution", "context_length", "vocab_size")


@dataclass
class Backbone:
    clip: CLIP
    tokenizer: Any
    quick_gelu: bool
    sha256: str | None
    reference: str | None
    # what deployment feeds this backbone (open_clip's own preprocessing for the architecture and
    # tag); the checkpoint's own 'preprocessing' field is only ever compared against it
    preprocessing: Preprocessing
    notes: list[str] = field(default_factory=list)
    # weights from open_clip's pretrained tag or the user's --backbone-weights; False for embedded
    # towers and for a weights file the checkpoint itself names (the attacker may ship both)
    verified: bool = False
    # the weights carried OpenAI's own state-dict markers (trained with QuickGELU, whatever a config says)
    openai_weights: bool = False


def model_config(spec: BackboneSpec) -> dict[str, Any]:
    if spec.config is not None:
        return copy.deepcopy(spec.config)
    cfg = open_clip.get_model_config(spec.architecture)
    if cfg is None:
        raise InputError(None, f"unknown open_clip architecture {spec.architecture!r}")
    return copy.deepcopy(cfg)


def square_size(size: Any, where: str) -> int:
    if isinstance(size, (list, tuple)):
        if len(size) != 2 or size[0] != size[1]:
            raise InputError(where, f"non-square image size {list(size)} is not supported")
        size = size[0]
    if isinstance(size, bool) or not isinstance(size, int) or not 8 <= size <= 1024:
        raise InputError(where, f"vision_cfg.image_size {size!r} is not an integer between 8 and 1024")
    return size


def deployment_preprocessing(spec: BackboneSpec, cfg: dict[str, Any]) -> Preprocessing:
    """The preprocessing deployment uses for this backbone, as open_clip's factory builds it:
    its PreprocessCfg defaults (OpenAI mean/std, bicubic, shortest side) overlaid with the
    architecture's registered ``preprocess_cfg`` and the pretrained tag's config.

    Nothing here comes from the checkpoint's ``preprocessing`` field: a provider who could set
    the scan's mean/std could blind it (std 1e6 flattens every image to the mean) while the
    deployed model, fed the backbone's own preprocessing, keeps its backdoor. An inline config
    is attacker-written too, so its ``preprocess_cfg`` is ignored and open_clip's defaults hold.
    """
    where = f"backbone {spec.architecture or 'inline config'}"
    size = square_size(cfg.get("vision_cfg", {}).get("image_size", 224), where)
    overlay: dict[str, Any] = {}
    if spec.architecture is not None:
        overlay.update(cfg.get("preprocess_cfg") or {})
        if spec.pretrained is not None:
            try:
                overlay.update(open_clip.get_pretrained_cfg(spec.architecture, spec.pretrained) or {})
            except Exception:  # a weights file name rather than a tag: open_clip's defaults apply
                pass
    merged = merge_preprocess_dict(PreprocessCfg(size=size), overlay)
    if merged["resize_mode"] != "shortest" or merged["interpolation"] not in ("bicubic", "bilinear"):
        raise InputError(where, f"open_clip preprocessing {merged['resize_mode']}/{merged['interpolation']} is not supported (shortest-side resize, bicubic or bilinear)")
    return Preprocessing(
        image_size=size,
        mean=tuple(float(v) for v in merged["mean"]),
        std=tuple(float(v) for v in merged["std"]),
        interpolation=merged["interpolation"],
        resize_mode="shortest",
    )


def tag_wants_quick_gelu(spec: BackboneSpec) -> bool:
    if spec.architecture is None or spec.pretrained is None:
        return False
    try:
        cfg = open_clip.get_pretrained_cfg(spec.architecture, spec.pretrained)
    except Exception:
        return False
    return bool(cfg and cfg.get("quick_gelu", False))


def is_torchscript_archive(path: Path) -> bool:
    """TorchScript zips carry compiled code (``constants.pkl``, ``code/``); plain torch.save zips do not."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(n.endswith("constants.pkl") for n in zf.namelist())


def decide_quick_gelu(spec: BackboneSpec, config_quick_gelu: bool, openai_format: bool) -> tuple[bool, str | None]:
    """Which activation the backbone gets, and a note when we override the architecture's own choice.

    Pure apart from open_clip's in-memory pretrained registry (no download), so it is testable
    for real architecture names and tags without fetching weights.
    """
    if openai_format or tag_wants_quick_gelu(spec):
        if spec.quick_gelu is False:
            raise InputError(
                spec.pretrained or "backbone",
                "these are OpenAI CLIP weights, trained with QuickGELU, but the checkpoint sets quick_gelu=false; "
                "the features would be silently wrong (use the '-quickgelu' architecture)",
            )
        note = None
        if not config_quick_gelu:
            note = f"OpenAI weights detected: using QuickGELU for {spec.architecture or 'inline config'} (as the '-quickgelu' variant)"
        return True, note
    if spec.quick_gelu is not None:
        return spec.quick_gelu, None
    return config_quick_gelu, None


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except Exception as exc:
            raise InputError(path, f"not a readable safetensors file: {exc}") from None
    if is_torchscript_archive(path):
        raise InputError(path, "TorchScript archive: ci-gate does not execute TorchScript; convert it to a state dict first")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InputError(path, f"cannot read weights safely (weights_only): {exc}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise InputError(path, "weights file does not hold a state dict")
    return {k.removeprefix("module."): v for k, v in state.items()}


def pretrained_tag_cfg(spec: BackboneSpec) -> dict:
    """open_clip's entry for the checkpoint's 'pretrained' as a tag of its architecture ({} if none)."""
    if spec.architecture is None or spec.pretrained is None:
        return {}
    return open_clip.get_pretrained_cfg(spec.architecture, spec.pretrained) or {}


def resolve_weights(spec: BackboneSpec, weights: Path | None, cache_dir: Path | None) -> Path:
    """Find the weights file: an explicit path wins, then a pretrained tag, then a file named by
    'pretrained'. A tag comes before a file, as in open_clip: a file called ``openai`` in the
    working directory (a pull request can add one) must not stand in for the published weights."""
    if weights is not None:
        if not weights.is_file():
            raise InputError(weights, "backbone weights file not found")
        return weights
    ref = spec.pretrained
    assert ref is not None
    cfg = pretrained_tag_cfg(spec)
    if not cfg and Path(ref).is_file():
        return Path(ref)
    if spec.architecture is None:
        raise InputError(ref, "backbone weights file not found (inline configs need a local weights file)")
    if not cfg:
        raise InputError(ref, f"neither a file nor a pretrained tag of {spec.architecture}; pass --backbone-weights FILE")
    try:
        return Path(open_clip.download_pretrained(cfg, cache_dir=str(cache_dir) if cache_dir else None))
    except Exception as exc:
        raise InputError(ref, f"could not fetch pretrained weights for {spec.architecture} (offline?): {type(exc).__name__}; pass --backbone-weights FILE") from None


def build_backbone(
    spec: BackboneSpec,
    embedded: dict[str, torch.Tensor] | None = None,
    weights: Path | None = None,
    cache_dir: Path | None = None,
) -> Backbone:
    cfg = model_config(spec)
    preprocessing = deployment_preprocessing(spec, cfg)
    cfg.pop("preprocess_cfg", None)
    notes: list[str] = []
    verified = False
    if spec.embedded:
        if weights is not None:
            # the embedded tower is what deployment runs; the user meant to check it against theirs
            raise InputError(weights, "--backbone-weights is not used for a checkpoint that embeds its backbone; pass it as --reference-weights to compare the embedded tower with it")
        state = dict(embedded or {})
        digest = backbone_digest(state)
        reference = "embedded"
    else:
        path = resolve_weights(spec, weights, cache_dir)
        # a tag, or the user's own file: the published tower; a file the checkpoint names is not
        verified = weights is not None or bool(pretrained_tag_cfg(spec))
        digest = sha256_file(path)
        if spec.sha256 and digest != spec.sha256:
            raise InputError(path, f"backbone weights SHA-256 {digest[:12]}... does not match the pinned {spec.sha256[:12]}...")
        state = read_state_dict(path)
        reference = str(spec.pretrained or path.name)

    openai_format = any(k in state for k in _OPENAI_MARKERS)
    quick_gelu, note = decide_quick_gelu(spec, bool(cfg.pop("quick_gelu", False)), openai_format)
    if note:
        notes.append(note)
    for key in _OPENAI_MARKERS:
        state.pop(key, None)

    if not builtin_text_tower(cfg):
        raise InputError(None, f"backbone {spec.architecture or 'inline'}: only CLIP models with the built-in text tower are supported")
    try:
        clip = CLIP(**cfg, quick_gelu=quick_gelu)
    except Exception as exc:  # an inline config the loader's checks could not rule out (e.g. width not divisible by heads)
        raise InputError(None if spec.embedded else (spec.pretrained or "backbone"), f"backbone config cannot be built by open_clip: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}") from None
    try:
        clip.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        # embedded weights: the checkpoint is the file at fault (load_classifier names it)
        raise InputError(None if spec.embedded else (spec.pretrained or "backbone"), f"backbone weights do not fit the architecture: {str(exc).splitlines()[0]} ...") from None
    clip.eval()
    for p in clip.parameters():
        p.requires_grad_(False)
    context_length = cfg.get("text_cfg", {}).get("context_length", 77)
    tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=context_length)
    return Backbone(clip=clip, tokenizer=tokenizer, quick_gelu=quick_gelu, sha256=digest, reference=reference, preprocessing=preprocessing, notes=notes, verified=verified, openai_weights=openai_format)
