"""Hostile review 27b (the architecture check of hostile review 27): each test asserts the secure
(or the non-false-alarm) behaviour and fails on the commit it was written against. See
/work/notes/review27b.md."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from ci_gate.cli import main
from tiny_scan import SETTINGS, build, published_weights


def run_cli(args: list) -> int:
    with pytest.raises(SystemExit) as done:
        main([str(a) for a in args])
    return done.value.code


def _rewrite_backbone(ckpt: Path, mutate, validate: bool = True) -> None:
    """``validate`` False writes what the attacker writes: metadata our own model would refuse to build."""
    from ci_gate.checkpoint.format import load_checkpoint, save_checkpoint

    c = load_checkpoint(ckpt)
    spec = c.meta.backbone.model_dump()
    mutate(spec)
    cls = type(c.meta.backbone)
    meta = c.meta.model_copy(update={"backbone": cls.model_validate(spec) if validate else cls.model_construct(**spec)})
    save_checkpoint(ckpt, meta, c.learner_tensors, c.backbone_tensors)


def test_a_named_architecture_run_with_another_activation_is_not_unmodified(tmp_path):
    """Finding 1: 'ViT-S-32' is GELU in open_clip's registry (and in the open_clip_config.json
    beside the published weights), but the checkpoint sets quick_gelu=true. The delivered tower
    runs QuickGELU; reference_backbone builds the reference with that same activation, and
    check_architecture compares nothing for a named architecture, so the tower reads
    'unmodified' (verify exits 0 end to end)."""
    import open_clip
    from safetensors.torch import save_file

    from ci_gate.checkpoint.format import BackboneSpec, backbone_digest
    from ci_gate.encoder_check import encoder_info
    from ci_gate.model.architecture import check_architecture, published_config
    from ci_gate.model.backbone import build_backbone
    from ci_gate.model.small import random_clip_state
    from ci_gate.reference import reference_backbone

    cfg = open_clip.get_model_config("ViT-S-32")
    assert not cfg.get("quick_gelu", False)
    state = random_clip_state(cfg, seed=0)
    spec = BackboneSpec(architecture="ViT-S-32", embedded=True, sha256=backbone_digest(state), quick_gelu=True)
    delivered = build_backbone(spec, embedded=state)
    assert delivered.quick_gelu  # what deployment runs
    pub = tmp_path / "pub"
    pub.mkdir()
    ref = pub / "published.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(ref))
    (pub / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg}))
    loaded = SimpleNamespace(checkpoint=SimpleNamespace(meta=SimpleNamespace(backbone=spec)), backbone=delivered)
    trusted = published_config(spec, ref)
    published = reference_backbone(loaded, ref, trusted)
    info = encoder_info(delivered.verified, delivered.clip.state_dict(), published.clip.state_dict(), str(ref),
                        check_architecture(spec, delivered, trusted, published))
    assert info.status != "unmodified"


def _ckpt_spells_defaults(spec: dict) -> None:
    spec["config"]["vision_cfg"].update(mlp_ratio=4.0, patch_dropout=0.0, attentional_pool=False)
    spec["config"]["text_cfg"].update(mlp_ratio=4.0, pad_id=0, pool_type="argmax")


@pytest.mark.parametrize("side", ["checkpoint", "published"])
def test_open_clip_defaults_spelled_out_are_not_an_architecture_change(tmp_path, side):
    """Finding 2 (false alarm): the same architecture, one file spelling open_clip's defaults
    (mlp_ratio 4.0, patch_dropout 0.0, pool_type 'argmax'...) and the other omitting them, is
    reported as 'modified' and fails the gate (exit 1): the raw keys are compared, not the
    configs open_clip builds."""
    ckpt, pool = build(tmp_path / "m")
    ref = published_weights(tmp_path / "pub")
    if side == "checkpoint":
        _rewrite_backbone(ckpt, _ckpt_spells_defaults)
    else:
        path = ref.parent / "open_clip_config.json"
        data = json.loads(path.read_text())
        data["model_cfg"]["vision_cfg"].update(mlp_ratio=4.0, patch_dropout=0.0)
        data["model_cfg"]["text_cfg"].update(proj_type="linear", no_causal_mask=False)
        path.write_text(json.dumps(data, indent=2))
    out = tmp_path / "out"
    code = run_cli(["verify", ckpt, "--pool", pool, "--out", out, "--quiet", "--reference-weights", ref, *SETTINGS])
    encoder = json.loads((out / "result.json").read_text())["encoder"]
    assert encoder["architecture_changes"] == []
    assert encoder["status"] == "unmodified"
    assert code == 0


@pytest.mark.parametrize("tower_kwargs", [
    {"act_kwargs": {"approximate": "bogus"}},
    {"norm_kwargs": {"device": "meta"}},
], ids=["act_kwargs", "norm_kwargs"])
def test_an_inline_config_s_layer_kwargs_cannot_crash_the_scan(tmp_path, tower_kwargs):
    """Finding 3: act_kwargs / norm_kwargs are free-form dicts passed to nn.GELU / nn.LayerNorm;
    check_inline_config does not look inside them, the tower builds, and the scan dies with an
    internal error (exit 3) instead of refusing the checkpoint (exit 2)."""
    ckpt, pool = build(tmp_path / "m")
    _rewrite_backbone(ckpt, lambda spec: spec["config"]["vision_cfg"].update(tower_kwargs), validate=False)
    code = run_cli(["verify", ckpt, "--pool", pool, "--out", tmp_path / "out", "--quiet", *SETTINGS])
    assert code == 2
