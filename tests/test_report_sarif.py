"""SARIF: valid 2.1.0, what GitHub code scanning needs, stable fingerprints, policy levels, limits."""

from __future__ import annotations

import copy
import json
import re
import urllib.parse
from pathlib import Path

import pytest

from ci_gate.report import links, render, sarif
from ci_gate.report.alerts import best_asr, best_asr_gain
from ci_gate.report.sarif import SarifLimitError, build_sarif, checkpoint_uri
from result_factory import DEFAULT_NAMES, make_result

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO.parent / "shared" / "schemas" / "sarif-schema-2.1.0.json"


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


# ---- links: informationUri and helpUri -------------------------------------------------------


def _github_slugs(markdown: str) -> set[str]:
    """The anchors GitHub gives the headings of a Markdown file (lower case, punctuation dropped,
    spaces to hyphens)."""
    return {re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-") for line in markdown.splitlines() if line.startswith("#")}


def _absolute_https(url: str) -> bool:
    parts = urllib.parse.urlsplit(url)
    return parts.scheme == "https" and bool(parts.netloc)


def test_project_url_if_set_is_absolute_https():
    import ci_gate

    assert ci_gate.PROJECT_URL is None or _absolute_https(ci_gate.PROJECT_URL), "PROJECT_URL must be an absolute https URL"


def test_links_default_to_the_method_paper_while_unpublished(tmp_path, validator, monkeypatch):
    import ci_gate

    monkeypatch.setattr(ci_gate, "PROJECT_URL", None)
    log = _log(tmp_path)
    driver = log["runs"][0]["tool"]["driver"]
    assert driver["informationUri"] == links.METHOD_URL and _absolute_https(links.METHOD_URL)
    assert [r["helpUri"] for r in driver["rules"]] == [links.METHOD_URL] * 4
    assert _errors(validator, log) == []


def test_links_point_at_the_project_and_each_rules_section(tmp_path, validator, monkeypatch):
    import ci_gate

    monkeypatch.setattr(ci_gate, "PROJECT_URL", "https://github.com/octo/ci-gate/")
    log = _log(tmp_path)
    driver = log["runs"][0]["tool"]["driver"]
    assert driver["informationUri"] == "https://github.com/octo/ci-gate/"
    slugs = _github_slugs((REPO / links.ALERTS_DOC).read_text())
    for rule in driver["rules"]:
        url = rule["helpUri"]
        assert _absolute_https(url)
        page, anchor = url.split("#")
        assert page == "https://github.com/octo/ci-gate/blob/HEAD/docs/alerts.md"
        assert anchor == f"{rule['id'].lower()}-{rule['name']}" and anchor in slugs, (anchor, slugs)
    assert _errors(validator, log) == []


@pytest.mark.parametrize("bad", ["docs/alerts.md", "//github.com/x", "http://example.org/ci-gate", "file:///tmp/x"])
def test_a_relative_or_non_https_project_url_is_refused(tmp_path, monkeypatch, bad):
    import ci_gate

    monkeypatch.setattr(ci_gate, "PROJECT_URL", bad)
    with pytest.raises(ValueError, match="not an absolute https URL"):
        build_sarif(make_result(tmp_path))


# ---- each rule: when it fires, and that its text says so ------------------------------------


def _rule(log: dict, rule_id: str) -> dict:
    return next(r for r in log["runs"][0]["tool"]["driver"]["rules"] if r["id"] == rule_id)


def _hits(log: dict, rule_id: str) -> list[dict]:
    return [r for r in log["runs"][0]["results"] if r["ruleId"] == rule_id]


def _with_class(result, index: int, **update):
    classes = [c.model_copy(update=update) if c.index == index else c for c in result.classes]
    return result.model_copy(update={"classes": classes})


def test_cig001_fires_on_the_backdoor_class_and_states_its_rule(tmp_path):
    log = build_sarif(make_result(tmp_path))
    rule = _rule(log, "CIG001")
    assert "anomaly index is above k = 2" in rule["fullDescription"]["text"]
    assert "at least 50.0% of the pool" in rule["fullDescription"]["text"]
    [hit] = _hits(log, "CIG001")
    assert hit["properties"]["class"] == "cat"
    text = hit["message"]["text"]
    assert "class 'cat' is the likely target" in text
    assert "anomaly index 6.40 > k = 2 and best trigger ASR 93.0% >= 50.0%" in text
    assert _hits(build_sarif(make_result(tmp_path / "clean", verdict="clean")), "CIG001") == []


def test_min_asr_is_compared_with_the_best_budget_not_the_scored_one(tmp_path):
    # the demo's backdoor: scored at 4/255 where its trigger moves 16%, 80% at 16/255
    from ci_gate.result import RungResult

    rungs = [RungResult(epsilon=e / 255, asr=a, final_loss=0.0, statistic=0.0, anomaly=0.0) for e, a in ((4, 0.16), (16, 0.80))]
    log = build_sarif(_with_class(make_result(tmp_path), 3, asr=0.16, epsilon=4 / 255, rungs=rungs))
    [hit] = _hits(log, "CIG001")
    assert "best trigger ASR 80.0% >= 50.0%; base rate 10.0%, scored at budget 4/255" in hit["message"]["text"]
    assert hit["properties"]["asr"] == 0.16 and hit["properties"]["bestAsr"] == 0.80


def test_cig001_fires_on_an_extreme_outlier_whatever_its_asr(tmp_path):
    result = make_result(tmp_path)
    result = _with_class(result, 3, asr=0.2, anomaly=9.5)
    result = result.model_copy(update={"detection": result.detection.model_copy(update={"extreme": 8.0})})
    log = build_sarif(result)
    assert "or its anomaly index is above the extreme threshold 8" in _rule(log, "CIG001")["fullDescription"]["text"]
    assert "and its index stays at or below the extreme threshold 8" in _rule(log, "CIG002")["fullDescription"]["text"]
    [hit] = _hits(log, "CIG001")
    assert "anomaly index 9.50 > extreme threshold 8, best trigger ASR 20.0%" in hit["message"]["text"]


def test_cig002_fires_on_an_outlier_below_min_asr_and_states_its_rule(tmp_path):
    log = build_sarif(make_result(tmp_path))
    rule = _rule(log, "CIG002")
    assert rule["name"] == "suspicious-class"
    assert "outlier in trigger inversion (anomaly index above k = 2)" in rule["fullDescription"]["text"]
    assert "fewer than 50.0% of the pool to it at every budget" in rule["fullDescription"]["text"]
    [hit] = _hits(log, "CIG002")
    assert hit["properties"]["class"] == "horse"
    assert "an outlier (anomaly index 2.60 > k = 2), but its trigger reaches at most 31.0% of the pool at any budget (below the minimum ASR of 50%)" in hit["message"]["text"]
    assert _hits(build_sarif(make_result(tmp_path / "none", report={"suspicious_level": "none"})), "CIG002") == []


def test_cig002_never_fires_on_a_class_that_is_no_outlier(tmp_path):
    # what the demo's clean model got before: status suspicious on trigger ASR alone, anomaly -0.72
    result = _with_class(make_result(tmp_path, verdict="clean"), 5, status="suspicious", asr=0.62, anomaly=-0.72)
    log = build_sarif(result)
    assert log["runs"][0]["results"] == []
    # the same class as an outlier with a weak trigger is an alert
    outlier = _with_class(result, 5, asr=0.31, anomaly=2.6)
    assert [h["properties"]["class"] for h in _hits(build_sarif(outlier), "CIG002")] == ["dog"]


def test_cig003_fires_on_a_modified_encoder_only(tmp_path):
    from ci_gate.result import EncoderInfo, TensorChange

    clean = make_result(tmp_path, verdict="clean")
    assert _hits(build_sarif(clean), "CIG003") == []
    same = clean.model_copy(update={"encoder": EncoderInfo(status="unmodified", reference="pub.safetensors", n_tensors=40)})
    assert _hits(build_sarif(same), "CIG003") == []
    change = TensorChange(name="visual.proj", max_abs=0.25, rel_l2=0.01)
    modified = clean.model_copy(update={"encoder": EncoderInfo(status="modified", reference="pub.safetensors", n_tensors=40, n_changed=1, max_rel_l2=0.01, changed=[change])})
    log = build_sarif(modified)
    assert "tensors differ from the published weights" in _rule(log, "CIG003")["fullDescription"]["text"]
    [hit] = _hits(log, "CIG003")
    assert hit["message"]["text"].startswith("1 of 40 backbone tensors differ from the published weights: visual.proj")


def test_every_alert_meets_its_rule(tmp_path):
    # one scan with every kind of class: each result's class satisfies the condition its rule states
    result = make_result(tmp_path, suspicious=(5, 7))
    result = result.model_copy(update={"detection": result.detection.model_copy(update={"extreme": 8.0})})
    result = _with_class(result, 1, status="suspicious", asr=0.8, anomaly=-0.72)  # stale: no outlier
    result = _with_class(result, 8, status="backdoor", asr=0.1, anomaly=11.0)  # extreme
    # under min_asr_gain: an outlier whose trigger reaches min_asr but only as well as the published model's
    from ci_gate.result import RungResult

    result = result.model_copy(update={"detection": result.detection.model_copy(update={"min_asr_gain": 0.2, "reference": "published"})})
    level = [RungResult(epsilon=8 / 255, asr=0.7, final_loss=0.1, ref_asr=0.6, ref_final_loss=0.5, statistic=0.4, anomaly=3.0)]
    result = _with_class(result, 6, status="suspicious", asr=0.7, anomaly=3.0, rungs=level)
    det = result.detection
    hits = build_sarif(result)["runs"][0]["results"]
    by_class = {h["properties"]["classIndex"]: h["ruleId"] for h in hits}
    assert by_class == {3: "CIG001", 8: "CIG001", 5: "CIG002", 6: "CIG002", 7: "CIG002"}
    for index, rule_id in by_class.items():
        c = result.classes[index]
        assert c.anomaly > det.k
        gain = best_asr_gain(c)
        gained = gain is None or gain >= det.min_asr_gain
        if rule_id == "CIG001":
            assert (best_asr(c) >= det.min_asr and gained) or c.anomaly > det.extreme
        else:
            assert (best_asr(c) < det.min_asr or not gained) and c.anomaly <= det.extreme


def test_cig002_names_the_gain_over_the_published_model_it_missed(tmp_path):
    # an outlier whose trigger reaches the ASR floor, but only as well as the published model's
    from ci_gate.result import RungResult

    result = make_result(tmp_path, verdict="clean")
    result = result.model_copy(update={"detection": result.detection.model_copy(update={"min_asr_gain": 0.2, "reference": "published"})})
    rungs = [RungResult(epsilon=8 / 255, asr=0.67, final_loss=0.1, ref_asr=0.58, ref_final_loss=0.5, statistic=0.4, anomaly=4.8), RungResult(epsilon=32 / 255, asr=0.96, final_loss=-1.0, ref_asr=0.97, ref_final_loss=-1.1, statistic=0.1, anomaly=1.0)]
    result = _with_class(result, 6, status="suspicious", asr=0.67, anomaly=4.8, rungs=rungs)
    log = build_sarif(result)
    assert "or no more than 20.0% more of it than the same inversion on the published model" in _rule(log, "CIG002")["fullDescription"]["text"]
    [hit] = _hits(log, "CIG002")
    assert "sends at most 9.0% more of the pool to it than the same inversion on the published model at any budget (below the minimum gain of 20%)" in hit["message"]["text"]
    # the same class with a trigger that beats the reference's: a backdoor, and the message says by how much
    strong = _with_class(result, 6, status="backdoor", rungs=[rungs[0].model_copy(update={"asr": 0.9}), rungs[1]])
    strong = strong.model_copy(update={"verdict": "backdoor", "target_index": 6, "target_class": strong.classes[6].name})
    [hit] = _hits(build_sarif(strong), "CIG001")
    assert "32.0% above the published model's" in hit["message"]["text"]


def test_a_modified_tower_names_its_likely_target_in_every_report(tmp_path):
    from ci_gate.console import one_line
    from ci_gate.report.markdown import summary_markdown
    from ci_gate.result import EncoderInfo, TensorChange

    change = TensorChange(name="visual.proj", max_abs=0.25, rel_l2=0.01)
    clean = make_result(tmp_path, verdict="clean")
    enc = EncoderInfo(status="modified", reference="pub.safetensors", n_tensors=40, n_changed=1, max_rel_l2=0.01, changed=[change])
    ranked = clean.model_copy(update={"encoder": enc, "target_index": 4, "target_class": clean.classes[4].name})
    assert ranked.target_by_rank and not clean.target_by_rank
    name = ranked.target_class
    [hit] = _hits(build_sarif(ranked), "CIG003")
    assert f"Likely target: class '{name}', ranked first by trigger inversion" in hit["message"]["text"]
    assert f"likely target class **{name}** (ranked first)" in summary_markdown(ranked).splitlines()[0]
    assert f"likely_target='{name}'" in one_line(ranked)
    from ci_gate.report.html import render_html

    page = render_html(ranked, tmp_path)
    assert f"likely target class “{name}” (ranked first)" in page
    assert f"Likely target: “{name}”, the class the scan ranks first" in page
