"""``ci-gate report``: re-rendering a saved result.json, and the exit-code contract."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ci_gate.cli import main
from ci_gate.report import sarif
from result_factory import make_result, saved_result


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(argv)
    out = capsys.readouterr()
    return info.value.code, out.out, out.err


def test_rerenders_requested_formats_next_to_the_result(tmp_path, capsys):
    result_json = saved_result(tmp_path)
    code, out, err = run(["report", str(result_json), "--format", "html,sarif,md"], capsys)
    assert code == 0, err
    assert out.split() == [str(tmp_path / n) for n in ("report.html", "report.sarif", "summary.md")]
    assert "data:image/png;base64," in (tmp_path / "report.html").read_text()
    assert json.loads((tmp_path / "report.sarif").read_text())["runs"][0]["results"]


def test_default_formats_come_from_the_results_policy(tmp_path, capsys):
    result_json = saved_result(tmp_path, report={"formats": ["md"]})
    code, out, _ = run(["report", str(result_json)], capsys)
    assert code == 0 and out.split() == [str(tmp_path / "summary.md")]
    assert not (tmp_path / "report.html").exists()


def test_out_folder_is_a_complete_bundle(tmp_path, capsys):
    result_json = saved_result(tmp_path / "scan")
    out_dir = tmp_path / "bundle"
    code, _, err = run(["report", str(result_json), "-f", "json,html,md", "--out", str(out_dir), "--artifact-name", "reports"], capsys)
    assert code == 0, err
    assert (out_dir / "triggers" / "class_03.png").read_bytes() == (tmp_path / "scan" / "triggers" / "class_03.png").read_bytes()
    assert (out_dir / "examples" / "1_triggered.png").is_file()
    assert "`reports`" in (out_dir / "summary.md").read_text()
    assert (out_dir / "result.json").read_bytes() == result_json.read_bytes()  # copied, not re-serialised
    # the copied result.json re-renders from its new home with every image found
    code, _, err = run(["report", str(out_dir / "result.json"), "-f", "html"], capsys)
    assert code == 0 and "warning" not in err
    assert "image missing" not in (out_dir / "report.html").read_text()


def test_missing_images_warn_but_still_render(tmp_path, capsys):
    result_json = saved_result(tmp_path)
    (tmp_path / "triggers" / "class_07.png").unlink()
    code, _, err = run(["report", str(result_json), "-f", "html"], capsys)
    assert code == 0
    assert "triggers/class_07.png: image missing or not a PNG" in err
    assert "image missing" in (tmp_path / "report.html").read_text()


@pytest.mark.parametrize(
    ("setup", "args", "message"),
    [
        (lambda d: saved_result(d), ["--format", "html,pdf"], "--format: unknown format(s) pdf"),
        (lambda d: d / "absent.json", [], "result file not found"),
        (lambda d: (d / "r.json").write_text("{oops") and d / "r.json", [], "not valid JSON"),
        (lambda d: (d / "r.json").write_text('{"schema_version": "9.0"}') and d / "r.json", [], "unsupported result schema version"),
        (lambda d: (d / "r.json").write_text('{"schema_version": "1.0"}') and d / "r.json", [], "not a ci-gate result"),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, setup, args, message):
    path = setup(tmp_path)
    code, _, err = run(["report", str(path), *args], capsys)
    assert code == 2
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_sarif_over_githubs_limits_exits_2(tmp_path, capsys, monkeypatch):
    result_json = saved_result(tmp_path)
    monkeypatch.setattr(sarif, "MAX_RESULTS_PER_RUN", 1)
    code, _, err = run(["report", str(result_json), "-f", "sarif"], capsys)
    assert code == 2 and "GitHub shows at most 1 per run" in err


def test_reporters_do_not_import_torch(tmp_path):
    saved_result(tmp_path)
    script = (
        "import sys; from pathlib import Path;"
        "from ci_gate.result import load_result; from ci_gate.report import render; import ci_gate.github.outputs;"
        f"d = Path({str(tmp_path)!r}); render(load_result(d / 'result.json'), d, ['html', 'sarif', 'md', 'json']);"
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "report.html").is_file()


def test_make_result_round_trips_through_json(tmp_path):
    from ci_gate.result import load_result

    result = make_result(tmp_path)
    assert load_result(result.save(tmp_path / "result.json")) == result
