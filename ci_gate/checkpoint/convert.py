"""Convert a Dassl prompt learner (CoOp, CoCoOp, MaPLe) into a self-describing ci-gate checkpoint.

Dassl files store no class names and no backbone identity, only the frozen token embeddings
of the training prompts (``token_prefix``, ``token_suffix``). Rebuilding those embeddings from
the user's class names on the user's backbone and comparing them row by row proves both: the
names are right and in training order, and the checkpoint was tuned on this backbone's text
tower. Only then is anything written, so a converted file never carries wrong names.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from ci_gate import __version__
from ci_gate.checkpoint.dassl import DasslPromptLearner, read_dassl_checkpoint
from ci_gate.checkpoint.format import (
    BackboneSpec,
    CheckpointMeta,
    LearnerSpec,
    Preprocessing,
    backbone_digest,
    save_checkpoint,
)
from ci_gate.errors import InputError
from ci_gate.model.backbone import Backbone, build_backbone, model_config
from ci_gate.model.factory import learner_from_tensors
from ci_gate.learners import learner_class
from ci_gate.learners.tokens import PromptTokens, stored_rows_close


@dataclass(frozen=True)
class BackboneSource:
    """Where the backbone comes from: exactly one of architecture/config, and weights."""

    architecture: str | None = None
    config: dict[str, Any] | None = None
    config_path: Path | None = None  # only to name the file in messages
    pretrained: str | None = None  # open_clip tag ('openai') or a weights file
    weights: Path | None = None
    cache_dir: Path | None = None
    embed: bool = False


@dataclass(frozen=True)
class ConvertRequest:
    source: Path
    class_names: list[str]
    backbone: BackboneSource
    out: Path
    kind: str = "auto"
    ctx_init: str | None = None
    classes_ref: str = "--classes"  # how the user gave the names, for messages
    # --learner-option KEY=VALUE as given (strings): settings the file does not record
    learner_options: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ConvertResult:
    out: Path
    sha256: str
    meta: CheckpointMeta
    notes: list[str] = field(default_factory=list)


def parse_class_names(arg: str) -> list[str]:
    """A file with one name per line (blank lines ignored) or a comma-separated list."""
    path = Path(arg)
    if path.is_file():
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(path, f"cannot read class names: {exc}") from None
        names = [line.strip() for line in lines if line.strip()]
        if not names:
            raise InputError(path, "class-name file is empty")
        return names
    if "," not in arg:
        raise InputError(arg, "not a class-name file (not found) nor a comma-separated list of at least two names")
    return [part.strip() for part in arg.split(",")]


def load_inline_config(path: Path) -> dict[str, Any]:
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(path, "model config not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(path, f"model config is not readable JSON: {exc}") from None
    if not isinstance(cfg, dict):
        raise InputError(path, "model config must be a JSON object with embed_dim, vision_cfg and text_cfg")
    for key, kind in (("embed_dim", int), ("vision_cfg", dict), ("text_cfg", dict)):
        if not isinstance(cfg.get(key), kind):
            raise InputError(path, f"model config field '{key}' is missing or not a{'n int' if kind is int else ' JSON object'}")
    return cfg


def _backbone_name(src: BackboneSource) -> str:
    ident = src.architecture or (src.config_path.name if src.config_path else "inline config")
    weights = src.pretrained or (src.weights.name if src.weights else None)
    return f"{ident} ({weights})" if weights else ident


def verify_prompt_tokens(learner: DasslPromptLearner, backbone: Backbone, names: list[str], backbone_name: str) -> None:
    """Compare the stored prompt embeddings with the ones this backbone gives for these names."""
    path = learner.path
    width = int(backbone.clip.token_embedding.weight.shape[1])
    if learner.width != width:
        raise InputError(path, f"context width {learner.width} does not match {backbone_name}'s text width {width}: the checkpoint was tuned on a different backbone")
    try:
        prompts = PromptTokens(backbone.clip, backbone.tokenizer, learner_class(learner.kind).prompt_names(learner.options, names), learner.n_ctx)
    except ValueError as exc:
        raise InputError(None, f"class names: {exc}") from None
    if tuple(prompts.token_suffix.shape) != tuple(learner.token_suffix.shape):
        raise InputError(
            path,
            f"token_suffix has shape {tuple(learner.token_suffix.shape)}, {backbone_name} gives {tuple(prompts.token_suffix.shape)} "
            "(context length differs): the checkpoint was tuned on a different backbone",
        )
    if not stored_rows_close(prompts.token_prefix, learner.token_prefix).all():
        raise InputError(
            path,
            f"token_prefix does not match {backbone_name}'s start-of-text embedding: "
            "the checkpoint was tuned on a different backbone (or different weights)",
        )
    rows_ok = stored_rows_close(prompts.token_suffix, learner.token_suffix)
    if rows_ok.all():
        return
    bad = int((~rows_ok).nonzero()[0])
    hint = ""
    for other, name in enumerate(names):
        if other != bad and stored_rows_close(prompts.token_suffix[other : other + 1], learner.token_suffix[bad : bad + 1]).all():
            hint = f"; that row matches {name!r}: are the names in training order?"
            break
    if not hint and (~rows_ok).all():
        hint = "; no class matches, so the backbone may differ too"
    raise InputError(
        path,
        f"class name {names[bad]!r} (#{bad + 1}) does not match the checkpoint's prompt tokens row {bad + 1}{hint}",
    )


def _check_ctx_init(learner: DasslPromptLearner, backbone: Backbone, ctx_init: str | None) -> None:
    if not ctx_init:
        return
    n_words = int((backbone.tokenizer([ctx_init])[0] > 0).sum()) - 2  # minus SOS and EOS
    if n_words != learner.n_ctx:
        raise InputError(None, f"--ctx-init {ctx_init!r} has {n_words} tokens but the checkpoint has n_ctx={learner.n_ctx}")


def learner_options(kind: str, found: dict[str, Any], given: dict[str, str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(LearnerSpec.options, the part the user stated): what the file's tensors show (``found``,
    from the learner's Dassl hook) plus ``--learner-option`` values, read as command-line strings
    by the learner's own Options model. A stated value that contradicts the tensors is refused."""
    cls = learner_class(kind)
    fields = cls.Options.model_fields
    for key in given:
        if key not in fields:
            has = f"its options are {', '.join(fields)}" if fields else "it has none"
            raise InputError("--learner-option", f"{key}: {cls.title} has no such option ({has})")
    try:
        stated = cls.Options.model_validate_strings(given).model_dump(mode="json", include=set(given))
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        raise InputError("--learner-option", f"{key}={given.get(key, '')}: {str(err['msg']).removeprefix('Value error, ')}") from None
    read = cls.Options.model_validate(found).model_dump(mode="json", include=set(found))
    for key, value in stated.items():
        if key in read and read[key] != value:
            raise InputError("--learner-option", f"{key}={given[key]}, but the checkpoint's tensors give {key}={json.dumps(read[key])}")
    return {**found, **stated}, stated


def _image_size(cfg: dict[str, Any], where: str) -> int:
    size = cfg.get("vision_cfg", {}).get("image_size", 224)
    if isinstance(size, (list, tuple)):
        if len(size) != 2 or size[0] != size[1]:
            raise InputError(where, f"non-square image size {size} is not supported")
        size = size[0]
    return int(size)


def _weights_file(src: BackboneSource) -> Path | None:
    if src.weights is not None:
        return src.weights
    if src.pretrained and Path(src.pretrained).is_file():
        return Path(src.pretrained)
    return None


def _pretrained_ref(src: BackboneSource, weights: Path | None) -> str:
    # Tags are portable references; a local file is recorded by name only (its SHA-256 pins the
    # content), since an absolute path from the converting machine means nothing on a CI runner.
    if src.pretrained and not Path(src.pretrained).is_file():
        return src.pretrained
    assert weights is not None
    return weights.name


def _check_source(src: BackboneSource) -> None:
    if (src.architecture is None) == (src.config is None):
        raise InputError(None, "give exactly one of --arch and --config")
    if src.weights is None and not src.pretrained:
        raise InputError(None, "backbone weights: pass --pretrained TAG (e.g. openai) or --backbone-weights FILE")
    if src.weights is not None and not src.weights.is_file():
        raise InputError(src.weights, "backbone weights file not found")


def _build(src: BackboneSource) -> tuple[Backbone, BackboneSpec]:
    weights = _weights_file(src)
    ref = _pretrained_ref(src, weights)
    probe = BackboneSpec(architecture=src.architecture, config=src.config, pretrained=ref)
    where = str(src.config_path or src.architecture)
    try:
        backbone = build_backbone(probe, weights=weights, cache_dir=src.cache_dir)
    except (TypeError, ValueError, KeyError) as exc:  # open_clip rejecting a malformed inline config
        raise InputError(where, f"not a usable open_clip model config: {exc}") from None
    return backbone, probe


def _checkpoint_meta(
    learner: DasslPromptLearner,
    learner_spec: LearnerSpec,
    backbone: Backbone,
    probe: BackboneSpec,
    embedded: dict[str, torch.Tensor] | None,
    where: str,
    stated_options: dict[str, Any] | None = None,
) -> CheckpointMeta:
    spec = BackboneSpec(
        architecture=probe.architecture,
        config=probe.config,
        pretrained=probe.pretrained,
        # Pin what was verified: the weights file's bytes, or the embedded tensors themselves.
        sha256=backbone_digest(embedded) if embedded is not None else backbone.sha256,
        # Record the activation decided here so a later load cannot silently pick another.
        quick_gelu=backbone.quick_gelu,
        embedded=embedded is not None,
    )
    # No timestamps or host names: converting the same inputs twice gives the same bytes.
    provenance: dict[str, Any] = {
        "converted_from": learner.path.name,
        "source_sha256": learner.sha256,
        "source_format": "dassl",
        "producer": f"ci-gate {__version__} convert",
    }
    if learner.epoch is not None:
        provenance["source_epoch"] = learner.epoch
    if stated_options:
        # the converter's word, not the file's: an auditor can tell them apart
        provenance["learner_options_stated"] = dict(stated_options)
    if embedded is not None:
        provenance["backbone_weights_sha256"] = backbone.sha256
    if backbone.notes:
        provenance["notes"] = list(backbone.notes)
    return CheckpointMeta(
        learner=learner_spec,
        backbone=spec,
        preprocessing=Preprocessing(image_size=_image_size(model_config(spec), where)),
        provenance=provenance,
    )


def _learner_spec(req: ConvertRequest, learner: DasslPromptLearner, names: list[str], options: dict[str, Any]) -> LearnerSpec:
    try:
        return LearnerSpec(kind=learner.kind, class_names=names, n_ctx=learner.n_ctx, ctx_init=req.ctx_init, options=options)
    except ValidationError as exc:
        err = exc.errors()[0]
        about_names = not err["loc"] or err["loc"][0] == "class_names"  # the model validator checks names
        field = "class names" if about_names else ".".join(str(p) for p in err["loc"])
        raise InputError(req.classes_ref if about_names else req.source, f"{field}: {err['msg'].removeprefix('Value error, ')}") from None


def convert(req: ConvertRequest) -> ConvertResult:
    """Verify and write; raises InputError (nothing written) on any mismatch."""
    source, out = req.source, req.out
    if out.suffix != ".safetensors":
        raise InputError(out, "output must be a .safetensors file")
    if source.exists() and out.exists() and source.resolve() == out.resolve():
        raise InputError(out, "output would overwrite the input; inputs are never modified")
    _check_source(req.backbone)
    learner = read_dassl_checkpoint(source, req.kind)
    names = list(req.class_names)
    if learner.n_classes != len(names):
        raise InputError(
            req.classes_ref,
            f"{len(names)} class names given, but {source.name} was trained on {learner.n_classes} classes (token_suffix rows)",
        )
    options, stated = learner_options(learner.kind, learner.options, req.learner_options)
    learner = dataclasses.replace(learner, options=options)
    learner_spec = _learner_spec(req, learner, names, options)

    backbone, probe = _build(req.backbone)
    backbone_name = _backbone_name(req.backbone)
    try:
        options = learner_class(learner.kind).dassl_prompt_options(learner.options, learner.token_suffix, backbone, names, learner.n_ctx)
    except ValueError as exc:
        raise InputError(source, str(exc)) from None
    for key, value in stated.items():  # what the user stated is never overridden silently
        if options.get(key) != value:
            raise InputError("--learner-option", f"{key}={req.learner_options[key]}, but {source.name}'s stored prompt tokens give {key}={json.dumps(options.get(key))}")
    if options != learner.options:
        # read off the file's stored tokens (MaPLe's prompt words): attacker-written text
        learner = dataclasses.replace(learner, options=options)
        learner_spec = _learner_spec(req, learner, names, options)
    verify_prompt_tokens(learner, backbone, names, backbone_name)
    _check_ctx_init(learner, backbone, req.ctx_init)

    pinned = backbone.clip.state_dict()
    modified = modified_towers(learner, pinned)
    notes = list(backbone.notes)
    embedded = None
    if req.backbone.embed or modified:
        # the file's own towers are what a deployment of it runs: scan those, as an embedded
        # backbone, so the encoder check names them in every report
        changed = set(modified)
        embedded = {k: (learner.towers[k].to(v.dtype) if k in changed else v).detach().clone() for k, v in pinned.items()}
    if modified:
        notes.append(f"{source.name} carries {len(modified)} backbone tensors that differ from the pinned backbone (e.g. {', '.join(modified[:3])}); they are embedded as a modified encoder")
    meta = _checkpoint_meta(learner, learner_spec, backbone, probe, embedded, str(req.backbone.config_path or probe.architecture), stated)
    tensors = learner.learner_tensors()
    # Dry run of the loader's own checks (ctx width, meta-net shapes) before anything is written.
    learner_from_tensors(source, backbone, meta, tensors)
    if modified:
        meta.provenance["modified_towers"] = modified[:20]
    digest = save_checkpoint(out, meta, tensors, embedded)
    return ConvertResult(out=out, sha256=digest, meta=meta, notes=notes)


def modified_towers(learner: DasslPromptLearner, pinned: dict[str, torch.Tensor]) -> list[str]:
    """Names of the backbone tensors a whole-model Dassl file carries that differ from the pinned
    backbone's cast to the file's dtype; InputError for one the backbone lacks."""
    out = []
    for name, tensor in sorted(learner.towers.items()):
        if name not in pinned:
            raise InputError(learner.path, f"backbone tensor {name!r} in the file has no counterpart in the pinned backbone")
        if tuple(tensor.shape) != tuple(pinned[name].shape):
            raise InputError(learner.path, f"backbone tensor {name!r} has shape {tuple(tensor.shape)}, the pinned backbone's is {tuple(pinned[name].shape)}: tuned on a different backbone")
        # an honest copy is the pinned tensor cast to the file's dtype, bit for bit (casting
        # rounds deterministically); a rounding allowance would hide an edit of every weight
        # (2 eps is 1.6 % in bf16) behind the pinned tower while the file runs the edited one
        if not torch.equal(pinned[name].to(tensor.dtype), tensor):
            out.append(name)
    return out
