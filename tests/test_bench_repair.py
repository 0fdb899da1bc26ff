"""The repair benchmark's summary (pure) and its Markdown table (no model is trained)."""

from __future__ import annotations

import pytest

from ci_gate.bench.repair import summarize, write_markdown


def _ev(detected: bool, before: tuple[float, float], after: dict[str, tuple[float, float]], twin: float | None = None) -> dict:
    """before/after: (clean accuracy, real ASR)."""
    def nums(acc, asr):
        return {"clean_accuracy": acc, "real_asr": asr, "reconstructed_asr": asr, "natural_rate": 0.05}

    return {
        "id": f"m{len(after)}", "detected": detected, "predicted_target": "cat" if detected else None, "true_target": "cat",
        "scan": {"verdict": "backdoor" if detected else "clean"}, "before": nums(*before),
        "variants": [{"name": n, "after": nums(*v), "reverify": {"gate_passes": v[1] < 0.2, "verdict": "clean" if v[1] < 0.2 else "backdoor"} if n == "reconstructed" else None} for n, v in after.items()],
        "clean_twin": None if twin is None else {"clean_accuracy": 0.4, "real_asr": twin, "natural_rate": 0.05},
    }


def test_summary_counts_the_target_per_model():
    evs = [
        _ev(True, (0.40, 0.96), {"reconstructed": (0.395, 0.02), "clean_only": (0.41, 0.80)}, twin=0.5),  # meets both
        _ev(True, (0.40, 0.98), {"reconstructed": (0.38, 0.03), "clean_only": (0.40, 0.60)}, twin=0.3),  # ASR ok, -2 points
        _ev(True, (0.42, 0.90), {"reconstructed": (0.43, 0.10), "clean_only": (0.42, 0.04)}),  # clean-only meets it
        _ev(False, (0.40, 0.95), {"reconstructed": (0.40, 0.95), "clean_only": (0.40, 0.95)}),  # missed: not averaged
    ]
    s = summarize(evs)
    assert (s["models"], s["detected"]) == (4, 3)
    rec = s["variants"]["reconstructed"]
    assert rec["real_asr"] == pytest.approx(0.05)
    assert rec["clean_accuracy_change"] == pytest.approx((-0.005 - 0.02 + 0.01) / 3)
    assert (rec["under_target_asr"], rec["meets_target"], rec["reverified_clean"]) == (2, 1, "3/3")
    assert (s["variants"]["clean_only"]["under_target_asr"], s["variants"]["clean_only"]["meets_target"]) == (1, 1)
    assert s["variants"]["clean_only"]["reverified_clean"] is None
    assert s["before"]["real_asr"] == pytest.approx((0.96 + 0.98 + 0.90) / 3)
    assert s["clean_twin_real_asr"] == pytest.approx(0.4)


def test_summary_without_detections_has_no_means():
    s = summarize([_ev(False, (0.4, 0.9), {"reconstructed": (0.4, 0.9)})])
    assert s == {"models": 1, "detected": 0, "variants": {}}


def test_markdown_has_the_summary_table(tmp_path):
    evs = [_ev(True, (0.40, 0.96), {"reconstructed": (0.395, 0.02)}, twin=0.5)]
    report = {"command": "ci-gate bench repair", "evaluations": evs, "summary": summarize(evs), "repair_settings": {}, "clean_per_class": 30, "seconds": 1.0}
    write_markdown(report, tmp_path / "repair.md")
    text = (tmp_path / "repair.md").read_text()
    assert "| reconstructed | 2.0 | -0.5 | 1 | 1 | 1/1 |" in text
    assert "clean twins 50.0" in text


def test_clean_set_that_leaves_nothing_held_out_names_the_folder(tmp_path):
    import torch

    from ci_gate.bench.repair import _split
    from ci_gate.data import LabeledImages
    from ci_gate.errors import InputError

    data = LabeledImages(torch.zeros(6, 3, 4, 4), torch.tensor([0, 0, 0, 1, 1, 1]), ["a", "b"])
    clean, test = _split(data, 2, 0, tmp_path)
    assert (len(clean), len(test)) == (4, 2)
    assert set(clean.labels.tolist()) == set(test.labels.tolist()) == {0, 1}
    with pytest.raises(InputError, match="leaves none held out") as err:
        _split(data, 3, 0, tmp_path)
    assert str(tmp_path) in str(err.value)
