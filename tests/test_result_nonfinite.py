"""Non-finite scores (a degenerate scan) survive Result -> result.json -> load_result, as strict JSON."""

from __future__ import annotations

import json
import math

import pytest

from ci_gate.cli import main
from ci_gate.result import load_result
from result_factory import make_result

NAN, INF = float("nan"), float("inf")


def _strict_json(text: str):
    def refuse(constant: str):
        raise AssertionError(f"non-standard JSON constant {constant} in result.json")

    return json.loads(text, parse_constant=refuse)


def _degenerate(tmp_path):
    result = make_result(tmp_path)
    result.classes[0].statistic = NAN
    result.classes[0].anomaly = NAN
    result.classes[1].anomaly = INF
    result.classes[2].final_loss = -INF
    result.detection.mad = NAN
    return result


def test_nan_and_inf_round_trip(tmp_path):
    path = _degenerate(tmp_path).save(tmp_path / "result.json")
    data = _strict_json(path.read_text())
    assert data["classes"][0]["anomaly"] == "NaN" and data["classes"][1]["anomaly"] == "Infinity"
    assert data["classes"][2]["final_loss"] == "-Infinity" and data["detection"]["mad"] == "NaN"

    loaded = load_result(path)
    assert math.isnan(loaded.classes[0].statistic) and math.isnan(loaded.classes[0].anomaly)
    assert loaded.classes[1].anomaly == INF and loaded.classes[2].final_loss == -INF
    assert math.isnan(loaded.detection.mad)
    assert loaded.classes[3] == make_result(tmp_path / "other").classes[3]  # finite values unchanged
    # and saving again writes the same file
    assert loaded.save(tmp_path / "again.json").read_text() == path.read_text()


def test_null_from_older_result_files_reads_as_nan(tmp_path):
    path = make_result(tmp_path).save(tmp_path / "result.json")
    data = json.loads(path.read_text())
    data["classes"][0]["anomaly"] = None
    data["detection"]["median"] = None
    path.write_text(json.dumps(data))
    loaded = load_result(path)
    assert math.isnan(loaded.classes[0].anomaly) and math.isnan(loaded.detection.median)


def test_report_re_renders_a_degenerate_result(tmp_path, capsys):
    path = _degenerate(tmp_path).save(tmp_path / "result.json")
    with pytest.raises(SystemExit) as info:
        main(["report", str(path), "--format", "json,html,sarif,md"])
    assert info.value.code == 0, capsys.readouterr().err
    _strict_json((tmp_path / "report.sarif").read_text())
    assert math.isnan(load_result(tmp_path / "result.json").classes[0].anomaly)
