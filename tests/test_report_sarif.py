"""SARIF: valid 2.1.0, what GitHub code scanning needs, stable fingerprints, policy levels, limits."""

from __future__ import annotations

import copy
import json
import urllib.parse
from pathlib import Path

import pytest

from ci_gate.report import render, sarif
from ci_gate.report.sarif import SarifLimitError, build_sarif, checkpoint_uri
from result_factory import DEFAULT_NAMES, make_result

SCHEMA = Path(__file__).resolve().parents[1].parent / "shared" / "schemas" / "sarif-schema-2.1.0.json"


@pytest.fixture(scope="module")
def validator():
    if not SCHEMA.is_file():
        pytest.skip(f"SARIF schema not found at {SCHEMA} (it ships in the workspace's shared/schemas folder)")
    import jsonschema

    schema = json.loads(SCHEMA.read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def _log(tmp_path: Path, **kwargs) -> dict:
    result = make_result(tmp_path, **kwargs)
    return json.loads(render(result, tmp_path, ["sarif"])["sarif"].read_text())


def _errors(validator, log: dict) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(log)]


@pytest.mark.parametrize("verdict", ["backdoor", "clean"])
def test_validates_against_the_sarif_schema(tmp_path, validator, verdict):
    assert _errors(validator, _log(tmp_path, verdict=verdict)) == []


def test_the_schema_check_is_real(tmp_path, validator):
    log = _log(tmp_path)
    broken = copy.deepcopy(log)
    broken["runs"][0]["results"][0]["level"] = "critical"
    del broken["version"]
    assert len(_errors(validator, broken)) >= 2


def test_non_finite_scores_still_give_strict_json(tmp_path, validator):
    result = make_result(tmp_path)
    result.classes[3].anomaly = float("inf")
    result.classes[7].final_loss = float("nan")
    text = render(result, tmp_path, ["sarif"])["sarif"].read_text()
    log = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert _errors(validator, log) == []
    assert {r["properties"]["class"]: r["properties"]["anomaly"] for r in log["runs"][0]["results"]}["cat"] is None


def test_has_what_github_code_scanning_requires(tmp_path):
    log = _log(tmp_path)
    assert log["$schema"] == "https://json.schemastore.org/sarif-2.1.0.json" and log["version"] == "2.1.0"
    [run] = log["runs"]
    driver = run["tool"]["driver"]
    assert driver["name"] == "ci-gate" and driver["version"] == "0.1.0"
    rules = {r["id"]: r for r in driver["rules"]}
    assert rules["CIG001"]["name"] == "backdoor-detected" and rules["CIG002"]["name"] == "suspicious-class"
    for rule in rules.values():
        for key in ("shortDescription", "fullDescription", "help"):
            assert rule[key]["text"].strip()
        assert len(rule["shortDescription"]["text"]) <= 1024 and len(rule["fullDescription"]["text"]) <= 1024
        assert "security" in rule["properties"]["tags"]
        assert 0 < float(rule["properties"]["security-severity"]) <= 10
    for res in run["results"]:
        assert driver["rules"][res["ruleIndex"]]["id"] == res["ruleId"]
        assert res["message"]["text"].strip()
        [location] = res["locations"]
        physical = location["physicalLocation"]
        assert physical["artifactLocation"]["uri"] == "models/coop_cifar10.safetensors"
        assert physical["region"]["startLine"] == 1
        assert res["partialFingerprints"]


def test_one_result_per_flagged_and_suspicious_class_with_policy_levels(tmp_path):
    [run] = _log(tmp_path)["runs"]
    found = {(r["ruleId"], r["level"], r["properties"]["class"]) for r in run["results"]}
    assert found == {("CIG001", "error", "cat"), ("CIG002", "warning", "horse")}
    assert "cat" in run["results"][0]["message"]["text"] and "6.40" in run["results"][0]["message"]["text"]


def test_levels_follow_the_policy_and_none_drops_suspicious(tmp_path):
    [run] = _log(tmp_path, report={"backdoor_level": "warning", "suspicious_level": "none"})["runs"]
    assert [(r["ruleId"], r["level"]) for r in run["results"]] == [("CIG001", "warning")]
    rules = {r["id"]: r for r in run["tool"]["driver"]["rules"]}
    assert rules["CIG001"]["defaultConfiguration"]["level"] == "warning"
    assert rules["CIG001"]["properties"]["security-severity"] == "6.0"

    [run] = _log(tmp_path / "note", report={"suspicious_level": "note"})["runs"]
    assert ("CIG002", "note") in [(r["ruleId"], r["level"]) for r in run["results"]]


def test_clean_model_gives_one_run_with_zero_results(tmp_path):
    log = _log(tmp_path, verdict="clean")
    assert len(log["runs"]) == 1 and log["runs"][0]["results"] == []
    assert log["runs"][0]["properties"]["verdict"] == "clean"


def test_fingerprints_are_stable_across_reruns_and_distinct_per_finding(tmp_path):
    first = make_result(tmp_path / "a")
    rerun = make_result(tmp_path / "b")
    rerun.created_at = "2030-01-01T00:00:00+00:00"
    rerun.timings.total_s = 99.0
    rerun.classes[3].anomaly = 7.1  # scores move a little between runs; the finding is the same

    def prints(result) -> list[dict]:
        return [r["partialFingerprints"] for r in build_sarif(result)["runs"][0]["results"]]

    assert prints(first) == prints(rerun)
    values = [next(iter(p.values())) for p in prints(first)]
    assert len(set(values)) == 2  # backdoor and suspicious findings differ
    other_model = make_result(tmp_path / "c", model_sha="cd" * 32)
    assert prints(other_model) != prints(first)
    assert sarif.fingerprint("CIG001", "x", "cat") != sarif.fingerprint("CIG002", "x", "cat")
    assert sarif.fingerprint("CIG001", "x", "cat") != sarif.fingerprint("CIG001", "x", "dog")


def test_each_checkpoint_gets_its_own_category(tmp_path):
    a = _log(tmp_path / "a", model_path="models/a.safetensors")["runs"][0]["automationDetails"]["id"]
    b = _log(tmp_path / "b", model_path="models/b.safetensors")["runs"][0]["automationDetails"]["id"]
    assert a != b and a.endswith("/")


@pytest.mark.parametrize(
    ("path", "root", "expected"),
    [
        ("models/a.safetensors", None, "models/a.safetensors"),
        ("./models/./a.safetensors", None, "models/a.safetensors"),
        ("models\\sub\\a.safetensors", None, "models/sub/a.safetensors"),
        ("/work/repo/models/a.safetensors", Path("/work/repo"), "models/a.safetensors"),
        ("/elsewhere/a.safetensors", Path("/work/repo"), "file:///elsewhere/a.safetensors"),
        ("C:\\runner\\repo\\m.safetensors", None, "file:///C:/runner/repo/m.safetensors"),
        ("models/my model #2?.safetensors", None, "models/my%20model%20%232%3F.safetensors"),
        ("v1:final.safetensors", None, "v1%3Afinal.safetensors"),
        ("/work/repo/a b/m.safetensors", Path("/work/repo"), "a%20b/m.safetensors"),
        ("/elsewhere/a b.safetensors", None, "file:///elsewhere/a%20b.safetensors"),
    ],
)
def test_checkpoint_uri_is_repository_relative_with_forward_slashes(path, root, expected):
    assert checkpoint_uri(path, root) == expected


def test_absolute_checkpoint_path_made_relative_with_source_root(tmp_path):
    result = make_result(tmp_path, model_path=str(tmp_path / "repo" / "models" / "a.safetensors"))
    written = render(result, tmp_path, ["sarif"], source_root=tmp_path / "repo")["sarif"]
    [res, _] = json.loads(written.read_text())["runs"][0]["results"]
    assert res["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == "models/a.safetensors"


def test_too_many_results_for_github_is_an_error(tmp_path):
    names = [f"class {i}" for i in range(sarif.MAX_RESULTS_PER_RUN + 2)]  # class 0 ok, 3 backdoor, rest suspicious
    result = make_result(tmp_path, names=names, suspicious=tuple(range(1, len(names))), with_images=False)
    with pytest.raises(SarifLimitError, match="5001 results"):
        render(result, tmp_path, ["sarif"])
    assert not (tmp_path / "report.sarif").exists()  # nothing half-written


def test_gzipped_size_limit_is_enforced(tmp_path, monkeypatch):
    monkeypatch.setattr(sarif, "MAX_GZIP_BYTES", 500)
    with pytest.raises(SarifLimitError, match="gzipped SARIF is \\d+ bytes; GitHub accepts at most 500"):
        render(make_result(tmp_path), tmp_path, ["sarif"])


def test_other_github_limits(tmp_path):
    log = build_sarif(make_result(tmp_path, names=DEFAULT_NAMES))
    encoded = json.dumps(log).encode()
    sarif.check_github_limits(log, encoded)  # within limits
    too_many_runs = {**log, "runs": log["runs"] * 21}
    with pytest.raises(SarifLimitError, match="21 runs"):
        sarif.check_github_limits(too_many_runs, encoded)
    tagged = copy.deepcopy(log)
    tagged["runs"][0]["tool"]["driver"]["rules"][0]["properties"]["tags"] = [f"t{i}" for i in range(21)]
    with pytest.raises(SarifLimitError, match="21 tags"):
        sarif.check_github_limits(tagged, encoded)


def test_information_uri_comes_from_project_url(tmp_path, validator, monkeypatch):
    import ci_gate

    # set: an absolute https URL, the same one everywhere
    if ci_gate.PROJECT_URL is not None:
        parsed = urllib.parse.urlsplit(ci_gate.PROJECT_URL)
        assert parsed.scheme == "https" and parsed.netloc, "PROJECT_URL must be an absolute https URL"
    monkeypatch.setattr(ci_gate, "PROJECT_URL", "https://example.org/ci-gate")
    log = _log(tmp_path / "set")
    assert log["runs"][0]["tool"]["driver"]["informationUri"] == "https://example.org/ci-gate"
    assert _errors(validator, log) == []
    # unset: the optional field is left out, never filled with a placeholder
    monkeypatch.setattr(ci_gate, "PROJECT_URL", None)
    log = _log(tmp_path / "unset")
    assert "informationUri" not in log["runs"][0]["tool"]["driver"]
    assert _errors(validator, log) == []
