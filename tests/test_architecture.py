"""The architecture half of a tower check (ci_gate.model.architecture): an inline config is the
checkpoint author's, so the published one comes from open_clip_config.json beside the user's own
weights, and with nothing to check it against the tower is unverified. Pure functions directly;
the CLI on the one-second tiny checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ci_gate.cli import main
from ci_gate.errors import InputError
from ci_gate.model.architecture import CONFIG_FILE, architecture_changes, read_config_file, write_config_file
from ci_gate.model.small import small_config
from tiny_scan import SETTINGS, build, published_weights


def test_identical_configs_have_no_changes_whatever_their_spelling():
    cfg = small_config("tiny-32")
    spelled = json.loads(json.dumps(cfg))  # tuples become lists
    assert architecture_changes(cfg, spelled, False, False) == []
    # preprocessing is never taken from a config (open_clip's defaults and registry decide it)
    assert architecture_changes({**cfg, "preprocess_cfg": {"mean": [0, 0, 0]}}, cfg, False, False) == []


def test_every_differing_setting_is_named_with_both_values():
    cfg = small_config("tiny-32")
    other = json.loads(json.dumps(cfg))
    other["vision_cfg"]["head_width"] = cfg["vision_cfg"]["head_width"] * 2
    other["text_cfg"]["heads"] = 8
    changes = architecture_changes(other, cfg, True, False)
    assert [c.split(":")[0] for c in changes] == ["text_cfg.heads", "vision_cfg.head_width", "quick_gelu"]
    assert changes[-1] == "quick_gelu: True in the checkpoint, False published"
    assert "in the checkpoint" in changes[0] and "published" in changes[0]
    # a key only one side has is a change too
    assert architecture_changes({**cfg, "custom_text": True}, cfg, False, False) == ["custom_text: true in the checkpoint, false published"]
    # a default spelled out on one side only is the same architecture
    assert architecture_changes({**cfg, "custom_text": False, "vision_cfg": {**cfg["vision_cfg"], "mlp_ratio": 4.0}}, cfg, False, False) == []


def test_config_files_in_hub_layout_or_bare_are_read_and_bad_ones_name_the_file(tmp_path):
    cfg = small_config("tiny-32")
    path = write_config_file(tmp_path, cfg)
    assert path.name == CONFIG_FILE and read_config_file(path) == json.loads(json.dumps(cfg))
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps(cfg))
    assert read_config_file(bare) == json.loads(json.dumps(cfg))
    for text, problem in [("{not json", "not a JSON open_clip config"), ("[1, 2]", "JSON object"), ('{"model_cfg": {"layers": 3}}', "not an open_clip model config")]:
        bad = tmp_path / "bad.json"
        bad.write_text(text)
        with pytest.raises(InputError) as err:
            read_config_file(bad)
        assert err.value.path == str(bad) and problem in str(err.value)


def _verify(ckpt: Path, pool: Path, out: Path, *extra) -> tuple[int, dict]:
    with pytest.raises(SystemExit) as done:
        main([str(a) for a in ["verify", ckpt, "--pool", pool, "--out", out, "--quiet", *SETTINGS, *extra]])
    return done.value.code, json.loads((out / "result.json").read_text())


def test_an_inline_architecture_nothing_published_describes_stays_unverified(tmp_path):
    ckpt, pool = build(tmp_path / "m")
    ref = published_weights(tmp_path / "pub")
    code, result = _verify(ckpt, pool, tmp_path / "checked", "--reference-weights", ref)
    assert code == 0 and result["encoder"]["status"] == "unmodified" and result["encoder"]["architecture"] == str(ref.parent / CONFIG_FILE)
    # the same published tensors without the config beside them: the tensors match, the architecture
    # is the checkpoint's own word, so the towers are unverified and the default gate fails
    (ref.parent / CONFIG_FILE).unlink()
    code, result = _verify(ckpt, pool, tmp_path / "unchecked", "--reference-weights", ref)
    assert code == 1 and result["encoder"]["status"] == "unverified" and result["encoder"]["n_changed"] == 0
    assert result["detection"]["reference"] == "none"  # the reference would be built on the checkpoint's architecture
    assert any(CONFIG_FILE in w for w in result["warnings"])


def test_own_backbone_weights_under_an_inline_architecture_are_checked_the_same_way(tmp_path):
    from ci_gate.checkpoint.format import load_checkpoint, save_checkpoint

    ckpt, pool = build(tmp_path / "m")
    weights = published_weights(tmp_path / "pub")
    c = load_checkpoint(ckpt)
    # a checkpoint that names its backbone file instead of embedding it, the user holding the file
    spec = c.meta.backbone.model_copy(update={"embedded": False, "pretrained": "backbone.safetensors", "sha256": None})
    named = tmp_path / "named.safetensors"
    save_checkpoint(named, c.meta.model_copy(update={"backbone": spec}), c.learner_tensors, None)
    code, result = _verify(named, pool, tmp_path / "a", "--backbone-weights", weights)
    assert code == 0 and result["encoder"]["status"] == "not_embedded"
    # more attention heads over the same tensors: another function, so a finding of its own
    cfg = json.loads(json.dumps(spec.config))
    cfg["vision_cfg"]["head_width"] = cfg["vision_cfg"]["head_width"] // 2
    save_checkpoint(named, c.meta.model_copy(update={"backbone": spec.model_copy(update={"config": cfg})}), c.learner_tensors, None)
    code, result = _verify(named, pool, tmp_path / "b", "--backbone-weights", weights)
    assert code == 1 and result["encoder"]["status"] == "modified"
    assert [c.split(":")[0] for c in result["encoder"]["architecture_changes"]] == ["vision_cfg.head_width"]
    (weights.parent / CONFIG_FILE).unlink()
    code, result = _verify(named, pool, tmp_path / "c", "--backbone-weights", weights)
    assert code == 1 and result["encoder"]["status"] == "unverified"
