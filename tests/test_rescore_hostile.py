"""``ci-gate report --rescore`` and ``ci-gate report`` on a result.json written to attack them
(review 23, findings 4, 5, 7): artifact paths that leave the result folder, settings that switch
the gate off, and files built to exhaust the parser. Bad input exits 2 with one line naming
result.json; nothing is written outside --out; no input changes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from result_factory import make_ladder_result, saved_result, write_png

from ci_gate.cli import main
from ci_gate.policy import load_policy
from ci_gate.rescore import settings_sha256


def _scan(folder: Path, **kwargs) -> Path:
    """A ladder result saved as a scan saves it (the policy's settings and their sha256); returns
    result.json. Class 2 is flagged under the bundled default policy."""
    from ci_gate.result import PolicyInfo

    result, policy = make_ladder_result(folder, **kwargs)
    info = PolicyInfo(name=policy.name, path=None, sha256=policy.sha256(), settings=policy.model_dump(mode="json"))
    return result.model_copy(update={"policy": info}).save(folder / "result.json")


def _edit(path: Path, edit, *, sign: bool = True) -> None:
    """Edit result.json as a tamperer would; ``sign``: with the stored sha256 recomputed to match."""
    data = json.loads(path.read_text())
    edit(data)
    if sign:
        data["policy"]["sha256"] = settings_sha256(data["policy"]["settings"])
    path.write_text(json.dumps(data))


def _run(args: list[str], capsys) -> tuple[int, list[str], str]:
    with pytest.raises(SystemExit) as exc:
        main(args)
    captured = capsys.readouterr()
    return exc.value.code, captured.err.strip().splitlines(), captured.out


def _tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


# -- finding 4: artifact paths ------------------------------------------------------------------


@pytest.mark.parametrize(
    "field, rel",
    [
        # resolves inside the result folder from there, but from the staging folder beside --out
        # it points to <out's parent>/rep/triggers/evil.png
        ("trigger_png", "triggers/../../rep/triggers/evil.png"),
        ("trigger_tensor", "triggers/../../rep/triggers/evil.png"),
        ("trigger_png", "ABSOLUTE"),  # inside the result folder: once copied onto itself (SameFileError, exit 3)
        ("clean_png", "../rep/triggers/evil.png"),
    ],
)
def test_rescore_refuses_an_artifact_path_that_would_leave_out(tmp_path, capsys, field, rel):
    rep = tmp_path / "downloads" / "rep"
    path = _scan(rep)
    write_png(rep / "triggers" / "evil.png", seed=1)
    rel = str(rep / "triggers" / "evil.png") if rel == "ABSOLUTE" else rel
    example = {"class_name": "bird", "clean_png": "triggers/evil.png", "triggered_png": "triggers/evil.png",
               "predicted_clean": "cat", "predicted_triggered": "bird"}

    def plant(data):
        if field == "clean_png":
            data["examples"] = [{**example, "clean_png": rel}]
        else:
            data["classes"][0][field] = rel

    _edit(path, plant)
    # a file already where the copy would land outside --out: it must survive unchanged
    victim = tmp_path / "reports" / "rep" / "triggers" / "evil.png"
    victim.parent.mkdir(parents=True)
    victim.write_text("victim file\n")
    before = _tree(tmp_path)
    code, err, _ = _run(["report", str(path), "--rescore", "--out", str(tmp_path / "reports" / "out")], capsys)
    assert code == 2 and len(err) == 1, err
    where = "examples[0].clean_png" if field == "clean_png" else f"classes[0].{field}"
    assert str(path) in err[0] and where in err[0] and "not a path inside" in err[0]
    assert _tree(tmp_path) == before  # nothing written anywhere, inputs and the victim unchanged
    assert sorted(p.name for p in (tmp_path / "reports").iterdir()) == ["rep"]


def test_rescore_copies_each_named_file_once_and_never_over_a_file(tmp_path, capsys):
    rep = tmp_path / "rep"
    path = _scan(rep)
    write_png(rep / "triggers" / "t.png", seed=1)
    (rep / ".ci-gate-report").write_text("not the marker\n")
    (rep / "triggers" / "t.pt").write_bytes(b"tensor")

    def name_files(data):
        data["classes"][0].update(trigger_png="triggers/t.png", trigger_tensor="triggers/t.pt")
        data["classes"][1].update(trigger_png="./triggers//t.png", trigger_tensor=".ci-gate-report")  # the same file; the folder's marker
        data["classes"][3].update(trigger_png="triggers/missing.png")

    _edit(path, name_files)
    before = _tree(rep)
    out = tmp_path / "out"
    code, err, _ = _run(["report", str(path), "--rescore", "--out", str(out)], capsys)
    assert code == 1  # class 2 is flagged under the default policy
    assert any("classes[3].trigger_png" in line and "not copied" in line for line in err)
    assert (out / "triggers" / "t.png").read_bytes() == (rep / "triggers" / "t.png").read_bytes()
    assert (out / "triggers" / "t.pt").read_bytes() == b"tensor"
    assert (out / ".ci-gate-report").read_text() != "not the marker\n"  # still ci-gate's own marker
    assert not (out / "triggers" / "missing.png").exists()
    assert _tree(rep) == before
    # the copied result.json names files that are there: it re-renders with no placeholder
    code, err, _ = _run(["report", str(out / "result.json"), "--format", "html", "--out", str(tmp_path / "again")], capsys)
    assert code is None or code == 0
    assert not any("placeholder" in line and "t.png" in line for line in err)


# -- finding 5: the decision's settings come from the command line ---------------------------------


@pytest.mark.parametrize("modified", [False, True])
def test_a_result_that_sets_its_own_fail_on_to_never_still_fails_the_gate(tmp_path, capsys, modified):
    path = _scan(tmp_path / "rep", modified=modified)
    _edit(path, lambda d: d["policy"]["settings"]["report"].update(fail_on="never"))  # sha256 recomputed to match
    code, err, out = _run(["report", str(path), "--rescore", "--set", "detection.k=3", "--out", str(tmp_path / "out")], capsys)
    assert code == 1 and out.startswith("backdoor"), (out, err)
    saved = json.loads((tmp_path / "out" / "result.json").read_text())
    assert saved["policy"]["settings"]["report"]["fail_on"] == "backdoor" and saved["detection"]["k"] == 3
    # the one re-deciding may switch the gate off, as with verify
    code, _, _ = _run(["report", str(path), "--rescore", "--set", "report.fail_on=never", "--out", str(tmp_path / "never")], capsys)
    assert code == 0


def test_rescore_takes_detection_settings_from_policy_and_the_scan_shape_from_the_file(tmp_path, capsys):
    path = _scan(tmp_path / "rep")

    def lenient(data):
        data["policy"]["settings"]["detection"].update(k=1000.0, extreme=2000.0)
        data["policy"]["settings"]["seed"] = 7

    _edit(path, lenient)
    code, _, _ = _run(["report", str(path), "--rescore", "--out", str(tmp_path / "out")], capsys)
    assert code == 1  # the default policy's k, not the file's 1000
    saved = json.loads((tmp_path / "out" / "result.json").read_text())
    assert saved["policy"]["settings"]["seed"] == 7  # what was scanned stays as it was
    assert saved["policy"]["sha256"] == settings_sha256(saved["policy"]["settings"])
    policy_file = tmp_path / "lenient.yaml"
    policy_file.write_text("version: 1\nname: lenient\ndetection: {k: 1000, extreme: 2000}\ninversion: {epochs: 3}\n")
    code, err, out = _run(["report", str(path), "--rescore", "--policy", str(policy_file), "--out", str(tmp_path / "lenient")], capsys)
    assert code == 0 and out.startswith("clean") and "lenient" in out
    assert any("warning" in line and "inversion" in line for line in err)  # its own scan settings are not the scan's
    saved = json.loads((tmp_path / "lenient" / "result.json").read_text())
    assert saved["policy"]["name"] == "lenient" and saved["policy"]["path"] == str(policy_file)
    assert saved["policy"]["settings"]["inversion"] == load_policy("default")[0].inversion.model_dump(mode="json")
    code, err, _ = _run(["report", str(path), "--policy", "strict"], capsys)
    assert code == 2 and "--policy" in err[0] and "--rescore" in err[0]


def test_rescore_refuses_a_policy_record_that_does_not_match_its_hash(tmp_path, capsys):
    path = _scan(tmp_path / "rep")
    before = path.read_bytes()
    _edit(path, lambda d: d["policy"]["settings"]["report"].update(fail_on="never"), sign=False)
    code, err, _ = _run(["report", str(path), "--rescore", "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and len(err) == 1 and str(path) in err[0] and "policy.sha256" in err[0]
    assert not (tmp_path / "out").exists() and path.read_bytes() != before


def test_settings_sha256_is_the_policys_own_hash_through_a_saved_result(tmp_path):
    from ci_gate.result import PolicyInfo, Result

    for name, overrides in (("default", []), ("strict", ["detection.k=2.5", "inversion.epsilon=[1/255, 3/255]"]), ("permissive", ["report.fail_on=never"])):
        policy, _ = load_policy(name, overrides)
        info = PolicyInfo(name=policy.name, path=name, sha256=policy.sha256(), settings=policy.model_dump(mode="json"))
        back = Result.model_validate_json(make_ladder_result(tmp_path / name)[0].model_copy(update={"policy": info}).to_json())
        assert settings_sha256(back.policy.settings) == policy.sha256() == back.policy.sha256


def test_rescore_refuses_reference_none_with_the_references_values(tmp_path, capsys):
    path = _scan(tmp_path / "rep")
    _edit(path, lambda d: d["detection"].update(reference="none"))
    code, err, _ = _run(["report", str(path), "--rescore", "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and len(err) == 1 and str(path) in err[0] and "detection.reference is 'none'" in err[0]
    assert not (tmp_path / "out").exists()


def test_rescore_refuses_a_result_with_the_transfer_losses_at_some_rungs_only(tmp_path, capsys):
    path = _scan(tmp_path / "rep")
    _edit(path, lambda d: d["classes"][2]["rungs"][1].update(ref_cross_loss=None))
    code, err, _ = _run(["report", str(path), "--rescore", "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and len(err) == 1 and str(path) in err[0] and "ref_cross_loss" in err[0]
    assert not (tmp_path / "out").exists()


def test_a_scan_without_the_transfer_losses_is_rescored_only_by_statistics_that_do_not_need_them(tmp_path, capsys):
    # a scan from before schema 1.5, or one edited to drop them: ref_specificity cannot decide it
    path = _scan(tmp_path / "rep")
    _edit(path, lambda d: [r.update(ref_cross_loss=None) for c in d["classes"] for r in c["rungs"]])
    code, err, _ = _run(["report", str(path), "--rescore", "--set", "detection.statistic=ref_specificity", "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and len(err) == 1 and "scan again" in err[0]
    assert not (tmp_path / "out").exists()
    code, _, _ = _run(["report", str(path), "--rescore", "--set", "detection.statistic=ref_loss_gain", "--out", str(tmp_path / "out2")], capsys)
    assert code == 1, "the planted class still fails the gate under a statistic the saved values serve"


# -- finding 7: results built to crash the reader -------------------------------------------------


def _deep(depth: int) -> str:
    return "[" * depth + "]" * depth


def test_a_deeply_nested_result_is_bad_input(tmp_path, capsys):
    path = tmp_path / "deep" / "result.json"
    path.parent.mkdir()
    path.write_text('{"schema_version": "1.4", "x": ' + _deep(200_000) + "}")
    for args in (["report", str(path)], ["report", str(path), "--rescore", "--out", str(tmp_path / "out")]):
        code, err, _ = _run(args, capsys)
        assert code == 2 and len(err) == 1 and str(path) in err[0] and "nested too deeply" in err[0], err


def test_deep_nesting_the_decoder_accepts_is_rendered_or_refused_never_a_crash(tmp_path, capsys):
    # policy.settings is free-form in a Result: just below the decoder's limit there
    path = saved_result(tmp_path / "rep")
    path.write_text(path.read_text().replace('"settings": {', '"settings": {"deep": ' + _deep(900) + ",", 1))
    code, _, _ = _run(["report", str(path), "--out", str(tmp_path / "out")], capsys)
    assert code in (None, 0)
    code, err, _ = _run(["report", str(path), "--rescore", "--out", str(tmp_path / "re")], capsys)
    assert code == 2 and len(err) == 1 and "not a valid policy" in err[0]


def test_an_oversized_result_is_bad_input(tmp_path, capsys, monkeypatch):
    import ci_gate.result

    path = saved_result(tmp_path / "rep")
    monkeypatch.setattr(ci_gate.result, "MAX_RESULT_BYTES", path.stat().st_size - 1)
    code, err, _ = _run(["report", str(path)], capsys)
    assert code == 2 and len(err) == 1 and str(path) in err[0] and "larger than" in err[0]


@pytest.mark.parametrize(
    "report, problem",
    [(5, "report is not a mapping"), ({"formats": 5}, "formats"), ({"formats": ["bogus"]}, "formats")],
)
def test_a_report_section_that_is_not_one_is_bad_input(tmp_path, capsys, report, problem):
    path = saved_result(tmp_path / "rep")
    _edit(path, lambda d: d["policy"]["settings"].update(report=report), sign=False)
    code, err, _ = _run(["report", str(path), "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and len(err) == 1 and str(path) in err[0] and problem in err[0], err


@pytest.mark.parametrize("rel", ["triggers/a\x00b.png", "a" * 5000 + ".png"])
def test_an_artifact_name_the_filesystem_cannot_hold_is_a_missing_image(tmp_path, capsys, rel):
    path = saved_result(tmp_path / "rep")
    _edit(path, lambda d: d["classes"][3].update(trigger_png=rel), sign=False)
    code, err, _ = _run(["report", str(path), "--format", "html", "--out", str(tmp_path / "out")], capsys)
    assert code in (None, 0) and any("placeholder" in line for line in err)
