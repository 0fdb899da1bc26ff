"""The policy JSON Schema: generated from the pydantic model, shipped as a file, and true to what
ci-gate itself accepts (the bundled policies pass, a mistake ci-gate refuses fails)."""

from __future__ import annotations

import json

import jsonschema
import pytest
import yaml

from ci_gate.cli import main
from ci_gate.errors import InputError
from ci_gate.policy import load_policy
from ci_gate.policy_schema import policy_json_schema, policy_json_schema_text, shipped_schema_path
from ci_gate.resources import bundled_policy_names, policies_dir


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(shipped_schema_path().read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_the_shipped_file_is_the_generated_schema():
    # regenerate with: ci-gate policy schema --out policies/policy.schema.json
    assert shipped_schema_path() == policies_dir() / "policy.schema.json"
    assert shipped_schema_path().read_text(encoding="utf-8") == policy_json_schema_text()


def test_the_bundled_policies_validate(validator):
    names = bundled_policy_names()
    assert {"default", "strict", "permissive"} <= set(names)
    for name in names:
        data = yaml.safe_load((policies_dir() / f"{name}.yaml").read_text(encoding="utf-8"))
        assert list(validator.iter_errors(data)) == [], name


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("version: 1\ndetection: {kk: 3}\n", "detection"),  # an unknown key (a typo of k)
        ("version: 1\ninversion: {epsilon: [4/255, 2.0]}\n", "inversion"),  # a budget above 1
        ("version: 1\nreport: {fail_on: always}\n", "report"),
        ("pool: {min_images: 10}\n", ""),  # no version
        ("version: 2\n", "version"),
    ],
)
def test_what_ci_gate_refuses_the_schema_refuses(validator, tmp_path, text, where):
    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(InputError):
        load_policy(str(path))
    errors = list(validator.iter_errors(yaml.safe_load(text)))
    assert errors and any(where == (e.absolute_path[0] if e.absolute_path else "") for e in errors), [e.message for e in errors]


def test_fractions_and_single_budgets_are_valid_as_ci_gate_reads_them(validator, tmp_path):
    text = "version: 1\ninversion: {epsilon: 8/255}\ncanary: {epsilon: 4/255}\n"
    (tmp_path / "p.yaml").write_text(text)
    load_policy(str(tmp_path / "p.yaml"))
    assert list(validator.iter_errors(yaml.safe_load(text))) == []


def test_policy_schema_prints_or_writes_it(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["policy", "schema"])
    assert info.value.code == 0
    assert json.loads(capsys.readouterr().out) == policy_json_schema()
    target = tmp_path / "schema.json"
    with pytest.raises(SystemExit) as info:
        main(["policy", "schema", "--out", str(target)])
    assert info.value.code == 0 and target.read_text(encoding="utf-8") == policy_json_schema_text()
    assert [p.name for p in tmp_path.iterdir()] == ["schema.json"]  # no staging file left behind
    with pytest.raises(SystemExit) as info:
        main(["policy", "schema", "--out", str(tmp_path)])
    assert info.value.code == 2 and "--out" in capsys.readouterr().err
