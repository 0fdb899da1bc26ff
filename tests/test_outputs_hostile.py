"""Hostile output paths and hostile names: every command that writes refuses a bad --out with exit 2
and one line naming the flag or path (no traceback), writes nothing, and leaves its inputs as they
were; every reporter shows an attacker's class name as inert text.

The scan is stubbed for the path cases (they are decided before or around it); the names go
through the real reporters and the real terminal summary.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from ci_gate.cli import main
from result_factory import factory_scan, make_result, saved_result


def _cli(capsys, argv) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as done:
        main([str(a) for a in argv])
    cap = capsys.readouterr()
    return int(done.value.code or 0), cap.out, cap.err


def _hashes(*roots: Path) -> dict[str, str]:
    found = {}
    for root in roots:
        paths = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        found.update({str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in paths})
    return found


def assert_refused(code: int, err: str, *needles: str) -> None:
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith("ci-gate: error: ") and "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.fixture
def stub_scan(monkeypatch):
    """scan returns what a scan returns (a Result with trigger and example PNGs), for verify to write."""
    calls = []

    def scan(inputs, progress=None, shard=None):
        calls.append(inputs)
        return factory_scan(verdict="backdoor", report=inputs.policy.report.model_dump(mode="json"))

    monkeypatch.setitem(sys.modules, "ci_gate.scan", types.SimpleNamespace(scan=scan))
    return calls


@pytest.fixture
def inputs(tmp_path):
    """A checkpoint file and a pool folder (the stub never reads them; the checks must not write them)."""
    src = tmp_path / "in"
    ckpt = src / "m.safetensors"
    src.mkdir()
    ckpt.write_bytes(b"checkpoint bytes")
    pool = tmp_path / "pool"
    pool.mkdir()
    (pool / "0.png").write_bytes(b"\x89PNG\r\n\x1a\npool")
    return ckpt, pool


def _verify(ckpt, pool, out, *extra):
    return ["verify", ckpt, "--pool", pool, "--out", out, "--quiet", *extra]


# -- verify: bad --out, refused before the scan ----------------------------------------------------


def _file(tmp_path):
    f = tmp_path / "afile"
    f.write_text("not a folder")
    return f


def _foreign(tmp_path):
    d = tmp_path / "mine"
    d.mkdir()
    (d / "notes.txt").write_text("keep me")
    return d


def _symlink_to_ckpt(tmp_path):
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "in" / "m.safetensors")
    return link


OUT_CASES = {
    "empty": (lambda t: "", ["--out", "empty path"]),
    "blank": (lambda t: "   ", ["--out", "empty path"]),
    "existing file": (lambda t: _file(t), ["--out", "exists and is not a folder"]),
    "under a file": (lambda t: _file(t) / "sub" / "report", ["--out", "is a file, not a folder"]),
    "inside the pool": (lambda t: t / "pool" / "report", ["--out", "inside the OOD pool"]),
    "the pool itself": (lambda t: t / "pool", ["--out", "inside the OOD pool"]),
    "holds the pool": (lambda t: t, ["--out", "holds the OOD pool"]),
    "the checkpoint": (lambda t: t / "in" / "m.safetensors", ["--out", "is the input checkpoint"]),
    "symlink to the checkpoint": (_symlink_to_ckpt, ["--out", "is the input checkpoint"]),
    "the checkpoint's folder": (lambda t: t / "in", ["--out", "holds the input checkpoint"]),
    "folder of someone else's files": (_foreign, ["--out", "did not write", "notes.txt"]),
    "filesystem root": (lambda t: "/", ["--out", "filesystem root"]),
    "name too long": (lambda t: t / ("x" * 300), ["File name too long"]),
}


@pytest.mark.parametrize("case", list(OUT_CASES))
def test_verify_refuses_a_bad_out(case, stub_scan, inputs, tmp_path, capsys):
    ckpt, pool = inputs
    make_out, needles = OUT_CASES[case]
    out = make_out(tmp_path)
    before = _hashes(tmp_path)
    listing = sorted(p.name for p in tmp_path.iterdir())
    code, _, err = _cli(capsys, _verify(ckpt, pool, out))
    assert_refused(code, err, *needles)
    assert _hashes(tmp_path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == listing  # no staging folder left either


# -- verify: the location fails while writing -------------------------------------------------------


@contextlib.contextmanager
def _mount(target: Path, *options: str):
    target.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(options), "tmpfs", str(target)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()}); the monkeypatched ENOSPC test covers it")
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], capture_output=True)


def test_read_only_filesystem_is_exit_2_naming_the_path(stub_scan, inputs, tmp_path, capsys):
    ckpt, pool = inputs
    with _mount(tmp_path / "ro", "ro", "size=1m") as ro:
        code, _, err = _cli(capsys, _verify(ckpt, pool, ro / "report"))
        assert_refused(code, err, str(ro))
        assert "Read-only file system" in err or "not writable" in err
        assert os.listdir(ro) == []


def test_full_disk_is_exit_2_and_leaves_the_earlier_report(stub_scan, inputs, tmp_path, capsys):
    ckpt, pool = inputs
    with _mount(tmp_path / "small", "size=64k") as small:
        out = small / "report"
        (out / "triggers").mkdir(parents=True)
        (out / "result.json").write_text('{"earlier": true}')
        before = _hashes(out)
        code, _, err = _cli(capsys, _verify(ckpt, pool, out, "--set", "report.formats=[json,html,sarif,md]"))
        # the stub's images, the HTML that inlines them and the earlier report do not fit twice in 64 KiB
        assert_refused(code, err, str(out), "No space left on device")
        assert _hashes(out) == before
        assert sorted(os.listdir(small)) == ["report"]


def test_immutable_folder_is_exit_2_naming_the_path(stub_scan, inputs, tmp_path, capsys):
    ckpt, pool = inputs
    parent = tmp_path / "frozen"
    parent.mkdir()
    if subprocess.run(["chattr", "+i", str(parent)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not supported here")
    try:
        code, _, err = _cli(capsys, _verify(ckpt, pool, parent / "report"))
        assert_refused(code, err, str(parent))
        assert "Operation not permitted" in err or "not writable" in err
    finally:
        subprocess.run(["chattr", "-i", str(parent)], capture_output=True)
    assert os.listdir(parent) == []


def test_a_failing_scan_leaves_the_earlier_report_untouched(monkeypatch, inputs, tmp_path, capsys):
    from ci_gate.errors import InputError

    ckpt, pool = inputs
    out = tmp_path / "report"
    saved_result(out)
    before = _hashes(out)

    class HalfWritten:
        """A scan output whose files fail half way through being written."""

        result = factory_scan(verdict="backdoor").result

        def files(self):
            yield "triggers/half.png", b"\x89PNG"
            raise InputError(ckpt, "truncated")

    def scan(inputs, progress=None, shard=None):
        return HalfWritten()

    monkeypatch.setitem(sys.modules, "ci_gate.scan", types.SimpleNamespace(scan=scan))
    code, _, err = _cli(capsys, _verify(ckpt, pool, out))
    assert_refused(code, err, str(ckpt), "truncated")
    assert _hashes(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "pool", "report"]


# -- report, canary, repair, convert ----------------------------------------------------------------


def test_report_in_place_never_rewrites_result_json(tmp_path, capsys):
    result_json = saved_result(tmp_path / "r")
    before = (result_json.read_bytes(), result_json.stat().st_ino, result_json.stat().st_mtime_ns)
    code, out, err = _cli(capsys, ["report", result_json, "-f", "json,html,sarif,md"])
    assert code == 0, err
    after = (result_json.read_bytes(), result_json.stat().st_ino, result_json.stat().st_mtime_ns)
    assert after == before
    assert str(result_json) in out.split() and (tmp_path / "r" / "report.html").is_file()


@pytest.mark.parametrize(
    ("make_out", "needles"),
    [
        (lambda t: "", ["--out", "empty path"]),
        (lambda t: t, ["--out", "holds the input result"]),
        (lambda t: _file(t), ["--out", "exists and is not a folder"]),
    ],
    ids=["empty", "holds the result", "a file"],
)
def test_report_refuses_a_bad_out(make_out, needles, tmp_path, capsys):
    result_json = saved_result(tmp_path / "r")
    out = make_out(tmp_path)
    before = _hashes(tmp_path)
    code, _, err = _cli(capsys, ["report", result_json, "-f", "json,html", "--out", out])
    assert_refused(code, err, *needles)
    assert _hashes(tmp_path) == before


def _hardlink(tmp_path):
    link = tmp_path / "hard.safetensors"
    os.link(tmp_path / "in" / "m.safetensors", link)
    return link


LINKS = {
    "the checkpoint": lambda t: t / "in" / "m.safetensors",
    "a hard link of it": _hardlink,
    "a symlink to it": _symlink_to_ckpt,
}


@pytest.mark.parametrize("what", list(LINKS))
def test_canary_keep_model_never_writes_over_the_checkpoint(what, inputs, tmp_path, capsys):
    ckpt, pool = inputs
    out = LINKS[what](tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    before = _hashes(tmp_path)
    code, _, err = _cli(capsys, ["canary", ckpt, "--data", data, "--pool", pool, "--keep-model", "--out", out, "--quiet"])
    assert_refused(code, err, "--out", "is the input checkpoint")
    assert _hashes(tmp_path) == before


def test_canary_out_holding_the_checkpoint_is_refused(inputs, tmp_path, capsys):
    ckpt, pool = inputs
    data = tmp_path / "data"
    data.mkdir()
    before = _hashes(tmp_path)
    code, _, err = _cli(capsys, ["canary", ckpt, "--data", data, "--pool", pool, "--keep-model", "--out", ckpt.parent, "--quiet"])
    assert_refused(code, err, "--out", "holds the input checkpoint")
    assert _hashes(tmp_path) == before


@pytest.mark.parametrize("what", list(LINKS))
def test_repair_out_is_never_the_input(what, inputs, tmp_path, capsys):
    ckpt, pool = inputs
    out = LINKS[what](tmp_path)
    before = _hashes(tmp_path)
    argv = ["repair", ckpt, "--clean-data", tmp_path, "--pool", pool, "--out", out, "--set", "repair.allowed=true", "--quiet"]
    code, _, err = _cli(capsys, argv)
    assert_refused(code, err, "--out", "is the input checkpoint")
    assert _hashes(tmp_path) == before


def test_repair_empty_out_is_refused(inputs, tmp_path, capsys):
    ckpt, pool = inputs
    argv = ["repair", ckpt, "--clean-data", tmp_path, "--pool", pool, "--out", "", "--set", "repair.allowed=true", "--quiet"]
    code, _, err = _cli(capsys, argv)
    assert_refused(code, err, "--out", "empty path")


def test_convert_out_hard_link_of_the_source_is_refused(tmp_path, capsys):
    src = tmp_path / "model.pth.tar-10"
    src.write_bytes(b"not really a torch file")
    link = tmp_path / "model.safetensors"
    os.link(src, link)
    before = _hashes(tmp_path)
    code, _, err = _cli(capsys, ["convert", src, "--classes", "a,b", "--arch", "ViT-B-16", "--out", link])
    assert_refused(code, err, "--out", "is the input source")
    assert _hashes(tmp_path) == before


# -- hostile names at every output boundary ---------------------------------------------------------

HOSTILE = {
    "rich markup": "[bold red]PWNED[/bold red]",
    "ANSI colour": "\x1b[31mred\x1b[0m cat",
    "OSC 8 hyperlink": "\x1b]8;;https://evil.example/\x1b\\click\x1b]8;;\x1b\\",
    "terminal title": "\x1b]0;owned\x07dog",
    "bidi override": "cat\u202egnp.exe",
    "bidi isolate": "\u2066dog\u2069\u200f",
    "mention": "@octocat please approve",
    "issue reference": "fixes #1",
    "image injection": "![x](https://evil.example/pixel.png)",
    "link injection": "[click](javascript:alert(1))",
    "bare link": "https://evil.example/steal",
    "html": "<script>alert(1)</script><img src=x onerror=alert(1)>",
    "table breaker": "a | b\n| --- |\nc",
    "carriage return": "safe\rBACKDOOR",
    "very long": "x" * 10_000,
    "nul and bell": "ca\x00t\x07",
}

_CONTROL = [chr(c) for c in range(32) if chr(c) not in "\n"] + ["\x7f", "\u202e", "\u2066", "\u2069", "\u200f"]


def _render_all(tmp_path: Path, name: str, k: float = 2.0) -> dict[str, str]:
    from rich.console import Console

    from ci_gate.console import one_line, print_summary
    from ci_gate.report import render

    names = ["airplane", "automobile", "bird", name, "deer", "dog", "frog", "horse", "ship", "truck"]
    result = make_result(tmp_path, names=names, target=3, suspicious=(3,), model_path=f"models/{name[:50]}.safetensors")
    result = result.model_copy(update={"detection": result.detection.model_copy(update={"k": k})})
    written = render(result, tmp_path, ["html", "sarif", "md"])
    buf = io.StringIO()
    print_summary(Console(file=buf, force_terminal=True, width=200, color_system="truecolor"), result, str(tmp_path))
    texts = {fmt: p.read_text() for fmt, p in written.items()}
    texts["terminal"] = buf.getvalue()
    texts["one_line"] = one_line(result)
    return texts


@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_hostile_class_name_is_inert_everywhere(case, tmp_path):
    name = HOSTILE[case]
    texts = _render_all(tmp_path, name)
    # only rich's own styling escapes may reach the terminal: strip them, then nothing may remain
    import re

    terminal_plain = re.sub(r"\x1b\[[0-9;]*m", "", texts["terminal"])
    for where, text in {**texts, "terminal": terminal_plain}.items():
        bad = [c for c in _CONTROL if c in text]
        assert not bad, (where, [hex(ord(c)) for c in bad])
    html, sarif = texts["html"], json.loads(texts["sarif"])
    # a code span shows its content literally on GitHub (no mention, link or HTML): check the rest
    md = re.sub(r"(`+).*?\1", "`code`", texts["md"])
    assert "<script" not in md and "<script" not in html and "<img src=x" not in html
    assert "@octocat" not in md and "](http" not in md and "](javascript" not in md and "https://evil" not in md
    assert "#1" not in md.replace("#&#8203;1", "")
    table = [line for line in md.splitlines() if line.startswith("| ")]
    assert all(line.endswith("|") for line in table)  # no raw newline split a row
    for res in sarif["runs"][0]["results"]:
        assert not [c for c in _CONTROL if c in res["message"]["text"]]
        assert len(res["message"]["text"]) < 2000
    assert len(texts["one_line"]) < 1000 and len(md) < 40_000
    if case == "rich markup":
        assert "[bold red]PWNED[/bold red]" in terminal_plain  # shown, not applied


@pytest.mark.parametrize("k", [float("inf"), float("-inf"), float("nan")], ids=["inf", "-inf", "nan"])
def test_a_non_finite_k_renders(k, tmp_path):
    texts = _render_all(tmp_path, "cat", k=k)
    assert "no threshold line" in texts["html"]


# -- property: any text at all comes out inert ------------------------------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

# every code point class that matters: controls, bidi/format characters, Markdown and HTML specials
_ALPHABET = st.one_of(
    st.characters(codec="utf-8"),
    st.sampled_from(list("\x1b\x07\x00\r\n\t\x7f\u202e\u2066\u2069\u200b\u200f\u2028`*_[]()<>|#@!~:/\\&;")),
)
_TEXT = st.text(_ALPHABET, max_size=300)


def _check_inert(text: str) -> None:
    from ci_gate.report import sanitize

    for out in (sanitize.visible(text), sanitize.plain(text), sanitize.terminal(text), sanitize.markdown(text)):
        assert not [c for c in out if c in _CONTROL or c in "\n\r\u2028\u2029"], repr(out)
    md = sanitize.markdown(text)
    import re

    assert "<" not in md and ">" not in md
    assert not re.search(r"@\w", md) and not re.search(r"(?<!&)#\w", md) and "://" not in md
    # every Markdown special is backslash-escaped (entities aside)
    bare = re.sub(r"&#?\w+;", "", md)
    assert not re.search(r"(?<!\\)[`*_\[\]|~]", bare.replace("\\\\", "")), md


@settings(max_examples=300, deadline=None)
@given(_TEXT)
def test_any_text_is_inert_after_sanitising(text):
    _check_inert(text)


def _check_table(tmp_path_factory, name: str) -> None:
    import re

    from ci_gate.report.markdown import TOP_K, summary_markdown

    names = ["airplane", "automobile", "bird", name or "x", "deer", "dog", "frog", "horse", "ship", "truck"]
    if len(set(names)) < len(names):
        return
    md = summary_markdown(make_result(tmp_path_factory.mktemp("md"), names=names, with_images=False))
    rows = [line for line in md.splitlines() if re.match(r"^\| \d+ \|", line)]
    assert len(rows) == TOP_K  # the summary's top classes (the full table is in report.html)
    for row in rows:
        assert len(re.findall(r"(?<!\\)\|", row.replace("\\\\", ""))) == 8, row


@settings(max_examples=100, deadline=None)
@given(_TEXT)
def test_any_class_name_keeps_the_markdown_table_whole(tmp_path_factory, text):
    _check_table(tmp_path_factory, text)


@pytest.mark.bench
@settings(max_examples=10_000, deadline=None)
@given(_TEXT)
def test_any_text_is_inert_after_sanitising_bench(text):
    _check_inert(text)
