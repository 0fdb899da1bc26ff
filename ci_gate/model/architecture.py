"""Which architecture do the published weights belong to? A source the checkpoint does not write.

A tower's tensors can be compared with the user's copy of the published weights, but everything
open_clip builds around them (attention heads, activation, pooling, layer norms) comes from the
backbone config, and an inline config is written by whoever wrote the checkpoint: the published
tensors in another architecture are another function, which a tensor comparison calls
"identical". open_clip's registry is trusted for a named architecture. An inline config is
trusted only as far as it agrees with ``open_clip_config.json`` beside the user's weights file,
the file open_clip's own hub layout ships next to its weights (``{"model_cfg": ..., "preprocess_cfg": ...}``;
a bare model config, as in open_clip's ``model_configs/``, is read too).

``architecture_changes`` is pure: two configs in, the differing keys out.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from open_clip.model import CLIPTextCfg, CLIPVisionCfg

from ci_gate.checkpoint.format import BackboneSpec, check_inline_config
from ci_gate.errors import InputError
from ci_gate.io import atomic_write_text, read_bounded
from ci_gate.model.backbone import Backbone, model_config, tag_wants_quick_gelu

CONFIG_FILE = "open_clip_config.json"
_MAX_CONFIG_BYTES = 1 << 20
# what the scan does not take from any config: preprocessing comes from open_clip's defaults and the
# registry (ci_gate.model.backbone.deployment_preprocessing), the activation is compared resolved
_NOT_COMPARED = ("preprocess_cfg", "quick_gelu")


@dataclass(frozen=True)
class PublishedArchitecture:
    """The trusted config for the user's weights; ``from_file``: read from the config file beside
    them (else open_clip's registry entry for the named architecture)."""

    config: dict[str, Any]
    source: str
    from_file: bool


@dataclass(frozen=True)
class ArchitectureCheck:
    """``published``: the trusted config (None: nothing trusted to compare an inline config with);
    ``source``: where it came from; ``changes``: how the delivered architecture differs from it."""

    published: dict[str, Any] | None
    source: str | None
    changes: list[str] = field(default_factory=list)

    @property
    def known(self) -> bool:
        return self.published is not None


def read_config_file(path: Path) -> dict[str, Any]:
    """The model config in an ``open_clip_config.json`` (hub layout) or a bare open_clip model config."""
    raw = read_bounded(path, _MAX_CONFIG_BYTES, "architecture config", "1 MB")
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise InputError(path, f"not a JSON open_clip config: {str(exc)[:120]}") from None
    cfg = data.get("model_cfg", data) if isinstance(data, dict) else None
    if not isinstance(cfg, dict):
        raise InputError(path, "an open_clip config is a JSON object (with 'model_cfg', as open_clip's hub layout, or the model config itself)")
    try:
        check_inline_config(cfg)
    except ValueError as exc:
        raise InputError(path, f"not an open_clip model config: {exc}") from None
    return cfg


def published_config(spec: BackboneSpec, weights: Path | None) -> PublishedArchitecture | None:
    """The config file beside the user's ``weights`` (it describes the model those weights are),
    else open_clip's registry for a named architecture; None when there is neither. Read once per
    scan: the reference backbone and the architecture check both take it."""
    path = None if weights is None else weights.parent / CONFIG_FILE
    if path is not None and path.is_file():
        return PublishedArchitecture(read_config_file(path), str(path), from_file=True)
    if spec.architecture is not None:
        return PublishedArchitecture(model_config(spec), f"open_clip's registry ({spec.architecture})", from_file=False)
    return None


def published_quick_gelu(spec: BackboneSpec, published: dict[str, Any], openai_weights: bool) -> bool:
    """The activation the published weights were trained with: QuickGELU for OpenAI-format
    weights and wherever the published config or the named pretrained tag says so; never the
    checkpoint's own quick_gelu field."""
    return openai_weights or bool(published.get("quick_gelu", False)) or tag_wants_quick_gelu(spec)


def _built(cfg: dict[str, Any]) -> dict[str, Any]:
    """The config as open_clip builds it: its tower dataclasses' defaults wherever a key is
    absent, so a file that spells a default out and one that leaves it out read the same (an
    explicit null stays null: for patch_size and timm_proj it is not the default)."""
    out = {"init_logit_bias": None, "nonscalar_logit_scale": False, "custom_text": False, **cfg}
    for key, tower in (("vision_cfg", CLIPVisionCfg), ("text_cfg", CLIPTextCfg)):
        defaults = {f.name: f.default for f in dataclasses.fields(tower) if f.default is not dataclasses.MISSING}
        defaults |= {f.name: f.default_factory() for f in dataclasses.fields(tower) if f.default_factory is not dataclasses.MISSING}
        sub = {**defaults, **(cfg.get(key) or {})}
        # no keyword arguments at all, spelled as null or as an empty object
        out[key] = {k: (None if k.endswith("_kwargs") and v == {} else v) for k, v in sub.items()}
    if "init_logit_scale" in out:
        out["init_logit_scale"] = float(out["init_logit_scale"])
    return out


def _flatten(cfg: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in cfg.items():
        if not prefix and key in _NOT_COMPARED:
            continue
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _canonical(value: Any) -> Any:
    # JSON and Python spell the same config differently (tuples, 1 vs 1.0 in a float field)
    return json.loads(json.dumps(value))


def architecture_changes(delivered: dict[str, Any], published: dict[str, Any], delivered_quick_gelu: bool, published_quick_gelu: bool) -> list[str]:
    """Each config key whose value differs (dotted path, both values), then the activation."""
    a, b = _flatten(_built(delivered)), _flatten(_built(published))
    changes = [
        f"{key}: {_show(a.get(key, '(absent)'))} in the checkpoint, {_show(b.get(key, '(absent)'))} published"
        for key in sorted(set(a) | set(b))
        if _canonical(a.get(key)) != _canonical(b.get(key))
    ]
    if delivered_quick_gelu != published_quick_gelu:
        changes.append(f"quick_gelu: {delivered_quick_gelu} in the checkpoint, {published_quick_gelu} published")
    return changes


def _show(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 60 else text[:57] + "..."


def check_architecture(spec: BackboneSpec, delivered: Backbone, trusted: PublishedArchitecture | None, published: Backbone | None) -> ArchitectureCheck:
    """The delivered architecture (config and resolved activation) against the trusted one for
    the user's weights (``published_config``): the reference weights, built into ``published``,
    or the --backbone-weights the tower was loaded from. A named architecture's config is the
    registry's, but its activation is the checkpoint's word (the plain and '-quickgelu' variants
    share every tensor), so it is checked like any setting."""
    if trusted is None:
        return ArchitectureCheck(None, None)
    weights_backbone = published if published is not None else delivered
    expected = published_quick_gelu(spec, trusted.config, weights_backbone.openai_weights)
    return ArchitectureCheck(trusted.config, trusted.source, architecture_changes(model_config(spec), trusted.config, delivered.quick_gelu, expected))


def write_config_file(folder: Path, config: dict[str, Any]) -> Path:
    """``open_clip_config.json`` (hub layout) for a published backbone's weights in ``folder``: what
    lets a scan trust the architecture of a checkpoint that spells it inline."""
    path = folder / CONFIG_FILE
    atomic_write_text(path, json.dumps({"model_cfg": {k: v for k, v in config.items() if k != "preprocess_cfg"}}, indent=1, sort_keys=True))
    return path


__all__ = ["CONFIG_FILE", "ArchitectureCheck", "PublishedArchitecture", "architecture_changes", "check_architecture", "published_config", "read_config_file", "write_config_file"]
