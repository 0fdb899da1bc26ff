"""The report-format registry (ci_gate/report/formats/): every registered reporter writes its file
from a Result, and every place that lists formats takes the list from the registry."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

from ci_gate.errors import InputError
from ci_gate.io import atomic_write_text
from ci_gate.policy import Policy, ReportPolicy
from ci_gate.policy_schema import policy_json_schema
from ci_gate.report import FILE_NAMES, FORMATS, SummaryLinks, render
from ci_gate.report import formats as formats_mod
from ci_gate.report.folder import OWN_ENTRIES
from ci_gate.report.formats import ReportInputs, Reporter, reporter, reporters
from ci_gate.report.settings import report_settings
from ci_gate.result import load_result
from result_factory import make_result

REPO = Path(__file__).resolve().parents[1]
REGISTERED = list(reporters())


@pytest.fixture(scope="module")
def scanned(tmp_path_factory):
    """A backdoor Result with its trigger and example PNGs, the way a scan leaves its folder."""
    folder = tmp_path_factory.mktemp("scan")
    return make_result(folder, verdict="backdoor"), folder


@pytest.mark.parametrize("name", REGISTERED)
def test_every_reporter_writes_its_file_from_the_result(scanned, tmp_path, name):
    result, folder = scanned
    written = render(result, folder, [name], out_dir=tmp_path / "out")
    path = tmp_path / "out" / reporter(name).file_name
    assert written == {name: path} and path.is_file()
    text = path.read_text(encoding="utf-8")
    # read from the Result, not a template alone: the target class and the checkpoint's digest
    assert result.target_class in text, name
    assert result.model.sha256 in text or result.model.sha256[:12] in text, name
    # the same Result and artifacts write the same bytes, straight through the registry too
    again = tmp_path / "again" / path.name
    again.parent.mkdir()
    reporter(name).write(result, ReportInputs(result_dir=folder, links=SummaryLinks()), again)
    assert again.read_bytes() == path.read_bytes()
    # and nothing is left beside it but the artifacts the Result names
    leftovers = {p.name for p in path.parent.iterdir()} - {path.name, "triggers", "examples"}
    assert leftovers == set(), leftovers


@pytest.mark.parametrize("name", REGISTERED)
def test_every_reporter_writes_a_clean_result_too(tmp_path, name):
    result = make_result(tmp_path / "scan", verdict="clean")
    written = render(result, tmp_path / "scan", [name])
    assert written[name].stat().st_size > 0


def test_the_json_reporter_writes_a_result_that_loads_back_equal(scanned, tmp_path):
    result, folder = scanned
    path = render(result, folder, ["json"], out_dir=tmp_path)["json"]
    assert load_result(path) == result


def test_names_and_file_names_are_unique_and_the_package_lists_every_module():
    names = [rep.name for rep in reporters().values()]
    files = [rep.file_name for rep in reporters().values()]
    assert len(set(names)) == len(names) and len(set(files)) == len(files)
    assert all(re.fullmatch(r"[a-z][a-z0-9_-]*", n) for n in names)
    modules = {p.stem for p in Path(formats_mod.__file__).parent.glob("*.py")} - {"__init__"}
    assert modules == set(formats_mod._MODULES), "a module in ci_gate/report/formats/ is not registered"
    assert all(isinstance(rep, Reporter) and rep.description for rep in reporters().values())


def test_every_format_list_comes_from_the_registry():
    from ci_gate.commands.report import FORMATS_HELP

    assert list(FORMATS) == REGISTERED == FORMATS_HELP.split(",")
    assert FILE_NAMES == {n: r.file_name for n, r in reporters().items()}
    assert ReportPolicy().formats == REGISTERED
    assert set(FILE_NAMES.values()) <= OWN_ENTRIES  # a report folder holding them is ours to replace
    schema = policy_json_schema()
    assert schema["$defs"]["ReportPolicy"]["properties"]["formats"]["items"]["enum"] == REGISTERED
    shipped = json.loads((REPO / "policies" / "policy.schema.json").read_text(encoding="utf-8"))
    assert shipped["$defs"]["ReportPolicy"]["properties"]["formats"]["items"]["enum"] == REGISTERED
    doc = (REPO / "docs" / "ci-integration.md").read_text(encoding="utf-8")
    assert f"`--format` takes any of `{','.join(REGISTERED)}`" in doc


def test_an_unregistered_format_is_refused_everywhere(scanned, tmp_path):
    from ci_gate.commands.report import parse_formats

    result, folder = scanned
    with pytest.raises(ValueError, match="unknown report format"):
        render(result, folder, ["pdf"], out_dir=tmp_path)
    assert not tmp_path.joinpath("report.pdf").exists()
    with pytest.raises(InputError) as err:
        parse_formats("html,pdf")
    assert err.value.problem == f"unknown format(s) pdf; choose from {','.join(REGISTERED)}"
    with pytest.raises(ValueError, match="formats"):
        Policy.model_validate({"report": {"formats": ["pdf"]}})


def test_report_settings_fall_back_to_the_policy_defaults(tmp_path):
    old = make_result(tmp_path, verdict="clean", with_images=False)
    old.policy.settings = {}  # a result written before the report section existed
    defaults = ReportPolicy()
    assert report_settings(old) == {"fail_on": defaults.fail_on, "backdoor_level": defaults.backdoor_level,
                                    "suspicious_level": defaults.suspicious_level}
    strict = make_result(tmp_path, verdict="clean", with_images=False, report={"fail_on": "suspicious", "suspicious_level": "error"})
    assert report_settings(strict) == {"fail_on": "suspicious", "backdoor_level": defaults.backdoor_level, "suspicious_level": "error"}


def test_a_new_format_is_one_module(scanned, tmp_path, monkeypatch):
    # what a newcomer writes: a module with REPORTER, listed in _MODULES
    module = types.ModuleType("ci_gate.report.formats.classes_txt")

    def write(result, inputs, path):
        atomic_write_text(path, "".join(f"{c.name}\t{c.status}\n" for c in result.classes))

    module.REPORTER = Reporter("txt", "classes.txt", write, "one line per class")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setattr(formats_mod, "_MODULES", (*formats_mod._MODULES, "classes_txt"))
    result, folder = scanned
    written = render(result, folder, ["txt", "md"], out_dir=tmp_path)
    assert list(written) == ["txt", "md"]
    lines = written["txt"].read_text().splitlines()
    assert f"{result.target_class}\tbackdoor" in lines and len(lines) == len(result.classes)


def test_listing_the_formats_loads_no_renderer():
    # the policy and the CLI's --help list formats; jinja2 loads only when HTML is written
    probe = "import sys; import ci_gate.policy, ci_gate.commands.report; print('jinja2' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_two_modules_claiming_one_format_name_are_refused(monkeypatch):
    monkeypatch.setattr(formats_mod, "_MODULES", ("result_json", "report_html", "result_json"))
    with pytest.raises(ValueError, match="result_json: Reporter name 'json' is taken"):
        reporters()
