"""Hostile review 24: what reaches a reviewer (job log, PR comment, summary, SARIF, HTML) from text
the checkpoint's author or a hand-edited result.json chose. No torch, no model: factory Results.

- GitHub's runner honours the legacy ``##[command]`` form *anywhere* in a log line (and ``::cmd::``
  at a line's start, which rich's wrapping can give a name): a class name ``##[add-mask]backdoor``
  printed by verify, ``github outputs`` or an error message was a workflow command.
- A result.json's ``policy.settings.report`` values (fail_on, the SARIF levels) reached the Markdown
  summary unescaped (a forged "clean" heading) and SARIF as a KeyError (exit 3).
- Its digests reached the summary's code spans unescaped (a backtick closes them).
- The HTML report skipped sanitising any string that merely started like a data URI.
- ``$...$`` in a name rendered as GitHub math.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
from result_factory import make_result, saved_result

from ci_gate.cli import main

COMMANDS = {
    "add-mask": "##[add-mask]backdoor",
    "set-output": "##[set-output name=exit-code;]0",
    "annotation": "##[notice title=ci-gate: gate passes]verified clean",
    "v2 form": "::error title=ci-gate::gate passes",
}


def _cli(capsys, argv) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as done:
        main([str(a) for a in argv])
    cap = capsys.readouterr()
    return int(done.value.code or 0), cap.out, cap.err


def _commands_in(text: str) -> list[str]:
    """Lines GitHub's runner would read a workflow command from (ActionCommand.TryParse/TryParseV2;
    a bare CR ends a line for it too)."""
    return [line for line in re.split(r"\r\n|\r|\n", text) if "##[" in line or line.lstrip().startswith("::")]


def _names(name: str) -> list[str]:
    return ["airplane", "automobile", "bird", name, "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.mark.parametrize("case", list(COMMANDS))
def test_a_workflow_command_in_a_class_name_never_reaches_a_log_line(case, tmp_path):
    from rich.console import Console

    from ci_gate import cli
    from ci_gate.console import one_line, print_summary
    from ci_gate.report import sanitize

    name = COMMANDS[case]
    result = make_result(tmp_path, names=_names(name), target=3, suspicious=(), with_images=False)
    buf = io.StringIO()
    print_summary(Console(file=buf, width=80), result, str(tmp_path))
    logs = {
        "quiet line": one_line(result),
        "summary": buf.getvalue(),
        "error line": cli.one_line(f"ci-gate: error: class name {name!r} does not match"),
        "plain": sanitize.plain(name),
        "terminal": sanitize.terminal(name),
        "quoted": sanitize.quoted(name),
    }
    for where, text in logs.items():
        assert not _commands_in(text), (where, text)
    assert "target='#\\x23[" in logs["quiet line"] or case == "v2 form"  # shown, in a visible form


def test_rich_wrapping_cannot_start_a_log_line_with_a_command(tmp_path):
    from rich.console import Console

    from ci_gate.console import print_summary

    # a warning (any text a result carries) padded so that a wrap at 80 columns lands on "::"
    for pad in range(30, 42):
        result = make_result(tmp_path, verdict="clean", with_images=False, warnings=["w " * pad + "::error::forged ok"])
        buf = io.StringIO()
        print_summary(Console(file=buf, width=80), result, str(tmp_path))
        assert not _commands_in(buf.getvalue()), buf.getvalue()


def test_github_outputs_logs_the_target_class_inertly_and_outputs_it_as_is(tmp_path, capsys, monkeypatch):
    name = COMMANDS["set-output"]
    result_json = saved_result(tmp_path / "r", names=_names(name), target=3, suspicious=(), with_images=False)
    out_file = tmp_path / "github_output"
    out_file.write_text("")
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    code, out, err = _cli(capsys, ["github", "outputs", result_json, "--github-output", out_file])
    assert code == 0, err
    assert not _commands_in(out + err), out
    assert "target-class=" in out
    # the step output itself is the class name, byte for byte (framed by a random delimiter)
    assert f"\n{name}\n" in out_file.read_text()


def test_an_error_line_quoting_a_name_breaks_the_legacy_command(capsys, tmp_path):
    code, out, err = _cli(capsys, ["report", tmp_path / "##[add-mask]backdoor" / "result.json"])
    assert code == 2
    assert not _commands_in(err), err


# -- result.json fed back to `ci-gate report` ------------------------------------------------------

FORGED_FAIL_ON = "backdoor) |\n\n## :white_check_mark: ci-gate: clean, no backdoor detected\n<!--"


@pytest.mark.parametrize(
    "report, fmt",
    [({"fail_on": FORGED_FAIL_ON}, "md"), ({"backdoor_level": "bogus"}, "sarif"), ({"suspicious_level": ["x"]}, "html")],
    ids=["fail_on markdown", "backdoor_level", "suspicious_level"],
)
def test_a_result_json_with_bad_report_settings_is_bad_input(report, fmt, tmp_path, capsys):
    result_json = saved_result(tmp_path / "r")
    # a hand-edited file is what `report` reads (the Result model refuses these values itself)
    data = json.loads(result_json.read_text())
    data["policy"]["settings"]["report"].update(report)
    result_json.write_text(json.dumps(data))
    code, out, err = _cli(capsys, ["report", result_json, "--format", fmt])
    assert code == 2, err
    assert "policy" in err and "report" in err and str(result_json.name) in err
    assert not (tmp_path / "r" / "summary.md").exists()


def test_a_valid_saved_report_setting_still_loads(tmp_path, capsys):
    result_json = saved_result(tmp_path / "r", report={"fail_on": "never", "suspicious_level": "none"})
    code, out, err = _cli(capsys, ["report", result_json, "--format", "md,sarif"])
    assert code == 0, err
    assert "(fail-on: never)" in (tmp_path / "r" / "summary.md").read_text()


def test_digests_in_the_summary_cannot_close_their_code_span(tmp_path):
    from ci_gate.report.markdown import summary_markdown
    from ci_gate.result import Result

    result = make_result(tmp_path, with_images=False, model_sha="x`\n\n# CLEAN ")
    policy = result.policy.model_copy(update={"sha256": "`\n## CLEAN"})
    md = summary_markdown(Result.model_validate(result.model_copy(update={"policy": policy}).model_dump()))
    lines = md.splitlines()
    assert not [line for line in lines if line.startswith("#") and "CLEAN" in line], md
    assert lines[0].startswith("## :x: ci-gate: backdoor detected")
    table = lines[1 : lines.index("")]
    assert all(line.startswith("| ") and line.endswith("|") for line in table if line != "|---|---|"), md


# -- HTML -----------------------------------------------------------------------------------------


def test_a_name_that_starts_like_a_data_uri_is_still_sanitised_in_html(tmp_path):
    from ci_gate.report.html import render_html

    name = "data:image/png;base64,\u202egnp.exe\u200b"
    result = make_result(tmp_path, names=_names(name), target=3, suspicious=(7,))
    html = render_html(result, tmp_path)
    assert "\u202e" not in html and "\u200b" not in html
    assert "data:image/png;base64,\\u202egnp.exe" in html
    # the real images are still inlined whole
    assert len(re.findall(r'src="data:image/png;base64,iVBORw0KGgo[A-Za-z0-9+/=]+"', html)) >= 2


# -- Markdown math ---------------------------------------------------------------------------------


def test_dollar_math_in_a_class_name_does_not_render(tmp_path):
    from ci_gate.report import sanitize
    from ci_gate.report.markdown import summary_markdown

    name = "$$\\Huge\\color{green}\\text{CLEAN}$$"
    md = summary_markdown(make_result(tmp_path, names=_names(name), target=3, suspicious=(), with_images=False))
    outside_code = re.sub(r"(`+).*?\1", "", md)
    assert "$" not in outside_code
    assert "&#36;&#36;" in md
    assert "$" not in sanitize.markdown("a $x$ b")


# -- the PR comment's marker -----------------------------------------------------------------------


@pytest.mark.parametrize("key", ["models/a---b.safetensors", "a----->b", "a\nb --", "x-- >y"])
def test_a_comment_key_never_breaks_its_marker(key):
    from ci_gate.github.comments import _is_ours, comment_body, marker_line

    marker = marker_line(key)
    inner = marker.removeprefix("<!--").removesuffix("-->")
    assert "--" not in inner and ">" not in inner and "\n" not in marker
    assert _is_ours(comment_body("hello", key), marker)


# -- SARIF embedded links --------------------------------------------------------------------------


def test_a_class_name_is_no_embedded_link_in_sarif_messages(tmp_path):
    from ci_gate.report.sarif import build_sarif

    name = "[approved, clean](https://evil.example/)"
    sarif = build_sarif(make_result(tmp_path, names=_names(name), target=3, suspicious=(), with_images=False))
    [res] = sarif["runs"][0]["results"]
    text = res["message"]["text"]
    # SARIF 2.1.0 3.11.6: a literal bracket in a plain-text message is backslash-escaped
    assert "\\[approved, clean\\](https" in text
    assert not re.search(r"(?<!\\)\[[^\]]*(?<!\\)\]\(", text), text
