"""Hostile review 27 (detection.unverified_towers): each test asserts the secure behaviour and
fails on the commit it was written against. See /work/notes/review27.md."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ci_gate.cli import main
from tiny_scan import SETTINGS, build, published_weights


def run_cli(args: list) -> int:
    with pytest.raises(SystemExit) as done:
        main([str(a) for a in args])
    return done.value.code


def _rewrite_backbone(ckpt: Path, mutate) -> None:
    from ci_gate.checkpoint.format import load_checkpoint, save_checkpoint

    c = load_checkpoint(ckpt)
    spec = c.meta.backbone.model_dump()
    mutate(spec)
    meta = c.meta.model_copy(update={"backbone": type(c.meta.backbone).model_validate(spec)})
    save_checkpoint(ckpt, meta, c.learner_tensors, c.backbone_tensors)


def _more_heads(spec: dict) -> None:
    # same tensors, same shapes: 8 attention heads instead of 2 in both towers
    spec["config"]["vision_cfg"]["head_width"] = 8
    spec["config"]["text_cfg"]["heads"] = 8


def _quick_gelu(spec: dict) -> None:
    spec["quick_gelu"] = True


@pytest.mark.parametrize("mutate", [_more_heads, _quick_gelu], ids=["heads", "quick_gelu"])
def test_a_tower_whose_config_differs_from_the_published_one_is_not_unmodified(tmp_path, mutate):
    """The published weights loaded into an attacker-chosen architecture compute another function;
    --reference-weights builds the reference with that same attacker config, so it reads as
    'unmodified' and the gate passes."""
    ckpt, pool = build(tmp_path / "m")
    ref = published_weights(tmp_path / "m")
    _rewrite_backbone(ckpt, mutate)
    out = tmp_path / "out"
    code = run_cli(["verify", ckpt, "--pool", pool, "--out", out, "--quiet", "--reference-weights", ref, *SETTINGS])
    status = json.loads((out / "result.json").read_text())["encoder"]["status"]
    assert status != "unmodified"
    assert code == 1


@pytest.fixture
def unverified_scan(tmp_path):
    ckpt, pool = build(tmp_path / "m")
    out = tmp_path / "out"
    assert run_cli(["verify", ckpt, "--pool", pool, "--out", out, "--quiet", *SETTINGS]) == 1
    return ckpt, out / "result.json"


def test_export_refuses_a_legacy_result_of_an_unverified_tower(tmp_path, unverified_scan):
    """A schema-1.5 result (no detection.unverified_towers) of an embedded, unverified tower is
    exported with an attestation that says verified=true, although the default gate now fails it."""
    pytest.importorskip("onnx")
    from ci_gate.policy import settings_sha256

    ckpt, result_json = unverified_scan
    data = json.loads(result_json.read_text())
    data["schema_version"] = "1.5"
    del data["detection"]["unverified_towers"]
    del data["policy"]["settings"]["detection"]["unverified_towers"]
    data["policy"]["sha256"] = settings_sha256(data["policy"]["settings"])
    legacy = tmp_path / "legacy.json"
    legacy.write_text(json.dumps(data))
    assert run_cli(["export", ckpt, "--onnx", tmp_path / "m.onnx", "--result", legacy]) != 0


def test_export_refuses_a_result_whose_encoder_status_contradicts_the_checkpoint(tmp_path, unverified_scan):
    """export loads the checkpoint and sees that it embeds its towers, yet accepts a result.json
    that says encoder.status 'not_embedded' (one field edited) and attests verified=true."""
    pytest.importorskip("onnx")
    ckpt, result_json = unverified_scan
    data = json.loads(result_json.read_text())
    data["encoder"] = {"status": "not_embedded"}
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps(data))
    assert run_cli(["export", ckpt, "--onnx", tmp_path / "m.onnx", "--result", forged]) != 0
