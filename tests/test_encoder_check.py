"""The tower comparison behind the encoder-level finding (pure functions on state dicts)."""

from __future__ import annotations

import math

import pytest
import torch

from ci_gate.encoder_check import compare_state_dicts, encoder_info
from ci_gate.model.architecture import ArchitectureCheck
from ci_gate.result import Result

# the delivered architecture checked against a trusted one and found the same, or nothing to check it against
KNOWN = ArchitectureCheck({"embed_dim": 8}, "open_clip's registry (test)")
UNKNOWN = ArchitectureCheck(None, None)


def _state(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"visual.proj": torch.randn(8, 4, generator=g), "visual.ln.bias": torch.randn(4, generator=g), "logit_scale": torch.tensor(4.6)}


def test_identical_towers_are_unmodified():
    a = _state()
    cmp = compare_state_dicts(a, {k: v.clone() for k, v in a.items()})
    assert not cmp.modified and cmp.n_tensors == 3 and cmp.max_rel_l2 == 0.0


def test_any_change_is_listed_with_its_size_largest_first():
    a, b = _state(), _state()
    a["visual.proj"] = a["visual.proj"] + 1e-6  # tiny but deliberate
    a["visual.ln.bias"][0] += 0.5
    cmp = compare_state_dicts(a, b)
    assert cmp.n_changed == 2
    assert cmp.changed[0].name == "visual.ln.bias" and cmp.changed[0].max_abs == pytest.approx(0.5)
    assert cmp.changed[1].max_abs == pytest.approx(1e-6, rel=0.2)  # float32 rounding of the edit
    assert cmp.changed[0].rel_l2 == pytest.approx(0.5 / float(b["visual.ln.bias"].double().norm()), rel=1e-6)


@pytest.mark.parametrize("edit, note", [
    (lambda s: s.pop("logit_scale"), "missing"),
    (lambda s: s.update(extra=torch.zeros(2)), "not in the published"),
    (lambda s: s.update({"visual.proj": torch.zeros(4, 8)}), "shape"),
    (lambda s: s["visual.proj"].__setitem__((0, 0), float("nan")), "non-finite"),
])
def test_structural_changes_are_modifications(edit, note):
    a = _state()
    edit(a)
    cmp = compare_state_dicts(a, _state())
    assert cmp.modified and note in cmp.changed[0].note and math.isinf(cmp.changed[0].rel_l2)


def test_encoder_info_cases():
    a = _state()
    assert encoder_info(True, a, None, None, KNOWN).status == "not_embedded"
    assert encoder_info(False, a, None, None, KNOWN).status == "unverified"
    assert encoder_info(False, a, _state(), "pub.safetensors", KNOWN).status == "unmodified"
    # published weights are compared even with towers from a tag or the user's own file
    assert encoder_info(True, a, _state(1), "pub.safetensors", KNOWN).status == "modified"
    info = encoder_info(False, a, _state(1), "pub.safetensors", KNOWN)
    assert info.status == "modified" and info.n_changed == 2 and info.reference == "pub.safetensors"  # logit_scale is the same
    # the same tensors in an architecture nothing trusted describes: unverified, with or without a reference
    assert encoder_info(False, a, _state(), "pub.safetensors", UNKNOWN).status == "unverified"
    assert encoder_info(True, a, None, None, UNKNOWN).status == "unverified"
    # a tensor change outranks the missing architecture: that tower is not the published one
    assert encoder_info(False, a, _state(1), "pub.safetensors", UNKNOWN).status == "modified"
    # an architecture that differs is a modification whatever the tensors say
    other = ArchitectureCheck({"embed_dim": 8}, "open_clip_config.json", ["vision_cfg.head_width: 8 in the checkpoint, 16 published"])
    for info in (encoder_info(False, a, _state(), "pub.safetensors", other), encoder_info(True, a, None, None, other)):
        assert info.status == "modified" and info.architecture_changes == other.changes and info.n_changed == 0
        assert info.changes_text.startswith("its architecture differs from the published one in 1 setting (vision_cfg.head_width")


def test_a_modified_encoder_fails_the_gate_even_with_a_clean_verdict(tmp_path):
    from result_factory import make_result

    clean = make_result(tmp_path, verdict="clean", with_images=False)
    assert clean.verdict == "clean" and not clean.gate_fails("backdoor")
    modified = clean.model_copy(update={"encoder": encoder_info(False, _state(), _state(1), "pub", KNOWN)})
    assert modified.gate_fails("backdoor") and modified.gate_fails("suspicious")
    assert not modified.gate_fails("never")
    # it survives the round trip through result.json, infinities included
    again = Result.model_validate_json(modified.to_json())
    assert again.encoder.status == "modified" and again.gate_fails("backdoor")


def test_every_report_shows_a_modified_encoder(tmp_path):
    from result_factory import make_result

    from ci_gate.report.markdown import summary_markdown
    from ci_gate.report.sarif import ENCODER_RULE, build_sarif

    a, b = _state(), _state()
    a["visual.proj"][0, 0] += 0.25
    res = make_result(tmp_path, verdict="clean", with_images=False).model_copy(update={"encoder": encoder_info(False, a, b, "published.safetensors", KNOWN)})
    md = summary_markdown(res)
    assert md.startswith("## :x: ci-gate: the checkpoint's encoders were modified")
    assert "`visual.proj`" in md and "0.2500" in md and "| Gate | **fails**" in md
    sarif = build_sarif(res)
    hits = [r for r in sarif["runs"][0]["results"] if r["ruleId"] == ENCODER_RULE]
    assert len(hits) == 1 and hits[0]["level"] == "error"
    assert hits[0]["properties"]["changed"][0]["name"] == "visual.proj"
    assert hits[0]["properties"]["changed"][0]["maxAbs"] == pytest.approx(0.25)
    from ci_gate.report.html import render_html

    html = render_html(res, tmp_path)
    assert "The checkpoint's encoders were modified" in html and "<code>visual.proj</code>" in html


def test_the_one_line_log_says_modified_encoder_not_clean(tmp_path):
    from result_factory import make_result

    from ci_gate.console import one_line

    a, b = _state(), _state()
    a["visual.proj"][0, 0] += 0.25
    res = make_result(tmp_path, verdict="clean", with_images=False).model_copy(update={"encoder": encoder_info(False, a, b, "published.safetensors", KNOWN)})
    assert one_line(res).startswith("MODIFIED_ENCODER changed_tensors=1/3")


def test_fail_on_suspicious_needs_an_outlier(tmp_path):
    from result_factory import make_result

    res = make_result(tmp_path / "r", verdict="backdoor")
    res = res.model_copy(update={"verdict": "clean", "target_class": None, "target_index": None,
                                 "classes": [c.model_copy(update={"status": "ok"}) if c.status == "backdoor" else c for c in res.classes]})
    # the factory's suspicious class is an outlier (2.6 > k = 2): the strict gate fails
    assert res.suspicious and all(c.anomaly > res.detection.k for c in res.suspicious)
    assert res.gate_fails("suspicious") and not res.gate_fails("backdoor")
    # an older result's "suspicious" class below k is no outlier: it does not fail the gate
    stale = res.model_copy(update={"classes": [c.model_copy(update={"anomaly": -0.72}) if c.status == "suspicious" else c for c in res.classes]})
    assert stale.suspicious and not stale.gate_fails("suspicious")
