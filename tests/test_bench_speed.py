"""``ci-gate bench speed`` end to end on a tiny model: both runs, the comparison, the FLOP floor."""

from __future__ import annotations

import json

import pytest

from ci_gate.cli import main


def test_bench_speed_writes_a_comparison(tmp_path, capsys):
    out = tmp_path / "speed"
    argv = ["bench", "speed", "--model", "tiny-32", "--classes", "4", "--pool-size", "16", "--batch-size", "8",
            "--threads", "1", "--peak-tflops", "0.05", "--out", str(out)]  # fmt: skip
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 0
    rep = json.loads((out / "speed.json").read_text())
    c = rep["comparison"]
    assert c["same_verdict"] and c["same_status"] and c["max_anomaly_diff"] < 1e-3
    assert rep["fast"]["seconds"] > 0 and rep["reference"]["seconds"] > 0
    assert rep["fast"]["memory_method"] and rep["fast"]["peak_memory_bytes"] is not None
    fl = rep["flops"]
    assert 0 < fl["fast_total"] < fl["reference_total"]  # truncation and prefix sharing do less work
    assert fl["floor_seconds"] == pytest.approx(fl["fast_total"] / 0.05e12)
    assert "speed-up" in (out / "speed.md").read_text()


def test_bench_speed_rejects_unknown_model(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["bench", "speed", "--model", "ViT-Z", "--out", str(tmp_path)])
    assert info.value.code == 2
