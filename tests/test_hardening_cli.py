"""Hostile input to the policy, ``--set`` and CLI surface, and the internal-error path.

Every hostile case runs ``ci-gate verify`` in-process on a checkpoint that does not exist: the
policy is loaded first, so a case that got past the policy would end in "checkpoint not found"
instead of the message the case expects. Each asserts exit 2, exactly one stderr line of the form
``ci-gate: error: <file, key or flag>: <problem>`` naming the culprit, no traceback, nothing
written to --out and the policy file unchanged (hash before and after).

An unexpected exception is exit 3 (never 1, which a CI system reads as "backdoor"), one line
plus a crash log with the traceback; --debug shows it.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from ci_gate.cli import main
from ci_gate.errors import GateFailure, InputError, InternalError

REPO = Path(__file__).resolve().parents[1]
V1 = "version: 1\n"


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(argv)
    out = capsys.readouterr()
    return info.value.code, out.out, out.err


# (id, policy file content (None: the bundled default; a str: a bundled name or spec), --set items
# or other flags, text the one line must contain besides the culprit)
FILE_CASES = [
    ("empty", "", [], "a policy must state its version: 1"),
    ("comment-only", "# nothing here\n# at all\n", [], "a policy must state its version: 1"),
    ("document-marker-only", "---\n...\n", [], "a policy must state its version: 1"),
    ("no-version", "name: mine\ndetection: {k: 3}\n", [], "a policy must state its version: 1"),
    ("version-2", "version: 2\n", [], "unsupported policy version 2"),
    ("version-true", "version: true\n", [], "unsupported policy version true"),
    ("version-string", "version: '1'\n", [], "unsupported policy version str"),
    ("k-inf", V1 + "detection:\n  k: .inf\n", [], "'detection.k': Input should be a finite number"),
    ("k-minus-inf", V1 + "detection: {k: -.inf}\n", [], "'detection.k': Input should be a finite number"),
    ("lr-nan", V1 + "inversion:\n  lr: .nan\n", [], "'inversion.lr': Input should be a finite number"),
    ("epsilon-inf-string", V1 + "inversion: {epsilon: inf}\n", [], ("'inversion.epsilon", "Input should be a finite number")),
    ("min-asr-nan-string", V1 + "detection: {min_asr: nan}\n", [], "'detection.min_asr': Input should be a finite number"),
    ("poison-rate-inf", V1 + "canary: {poison_rate: .inf}\n", [], "'canary.poison_rate'"),
    ("epsilon-fraction-overflow", V1 + "inversion: {epsilon: 1e999/1}\n", [], "'inversion.epsilon': not a finite number or fraction"),
    ("epsilon-division-by-zero", V1 + "inversion: {epsilon: 1/0}\n", [], "'inversion.epsilon': not a finite number or fraction"),
    ("duplicate-nested-key", V1 + "detection:\n  k: 2.0\n  k: 9.0\n", [], "duplicate key 'detection.k' at line 4 (first at line 3)"),
    ("duplicate-section", V1 + "pool: {min_images: 5}\nseed: 1\npool: {max_images: 9}\n", [], "duplicate key 'pool' at line 4"),
    ("duplicate-version", V1 + V1, [], "duplicate key 'version' at line 2"),
    ("min-above-max", V1 + "pool: {min_images: 600, max_images: 500}\n", [], "'pool': min_images (600) is more than max_images (500)"),
    ("unknown-key", V1 + "detection:\n  kk: 3\n", [], "unknown key 'detection.kk' (did you mean 'k'?)"),
    ("unknown-section", V1 + "detections: {k: 3}\n", [], "unknown key 'detections' (did you mean 'detection'?)"),
    ("section-is-scalar", V1 + "detection: 5\n", [], "bad value for 'detection'"),
    ("not-a-mapping", "- version\n- 1\n", [], "a policy must be a YAML mapping"),
    ("bad-syntax", "version: [1\n", [], "not valid YAML: line 2, column 1"),
    ("python-tag", V1 + "name: !!python/object/apply:os.system [echo owned]\n", [], "not valid YAML: line 2"),
    ("5000-digit-int", V1 + "seed: " + "7" * 5000 + "\n", [], "not valid YAML"),
    ("nested-too-deeply", V1 + "name: " + "[" * 5000 + "\n", [], "not valid YAML"),
    ("self-referencing-alias", V1 + "candidates: {extra_classes: &a [*a]}\n", [], "'candidates.extra_classes[0]'"),
    ("not-utf8", b"version: 1\nname: \xff\xfe\n", [], "not UTF-8 text"),
    ("nul-character", "version: 1\nname: a\x00b\n", [], "unacceptable character #x0000"),
    ("seed-beyond-64-bits", V1 + "seed: 18446744073709551616\n", [], "'seed': Input should be less than"),
    ("name-with-escape", V1 + 'name: "ok\\e[31m"\n', [], "'name': must be printable text on one line"),
    ("class-name-with-newline", V1 + 'candidates: {extra_classes: ["cat\\n::error::forged"]}\n', [], "'candidates.extra_classes[0]': must be printable"),
    ("unknown-format", V1 + "report: {formats: [json, pdf]}\n", [], "'report.formats[1]'"),
    ("class-batch-word", V1 + "inversion: {class_batch: many}\n", [], "'inversion.class_batch'"),
    ("too-large", V1 + "# " + "x" * (1 << 20) + "\n", [], "policy file larger than 1024 KiB"),
]

SET_CASES = [
    ("set-k-inf", ["--set", "detection.k=.inf"], "--set detection.k=.inf", "'detection.k': Input should be a finite number"),
    ("set-lr-nan", ["--set", "inversion.lr=.nan"], "--set inversion.lr=.nan", "'inversion.lr': Input should be a finite number"),
    ("set-epsilon-inf", ["--set", "inversion.epsilon=1e999/1"], "--set inversion.epsilon=1e999/1", "not a finite number or fraction"),
    ("set-invalid-yaml", ["--set", "seed=[1"], "--set seed=[1", "not a valid YAML value: line "),
    ("set-python-tag", ["--set", "name=!!python/object/apply:os.system [id]"], "--set name=!!python/object", "not a valid YAML value"),
    ("set-duplicate-key", ["--set", "pool={min_images: 5, min_images: 6}"], "--set pool={min_images", "duplicate key 'min_images'"),
    ("set-no-equals", ["--set", "detection.k"], "--set:", "expected KEY=VALUE, got detection.k"),
    ("set-empty-key", ["--set", "=3"], "--set =3", "'' is not a dotted policy key"),
    ("set-empty-segment", ["--set", "detection..k=3"], "--set detection..k=3", "is not a dotted policy key"),
    ("set-unknown-key", ["--set", "detection.nope=1"], "--set detection.nope=1", "unknown key 'detection.nope'"),
    ("set-unknown-section", ["--set", "detectoin.k=1"], "--set detectoin.k=1", "unknown key 'detectoin' (did you mean 'detection'?)"),
    ("set-not-a-section", ["--set", "detection.k.x=1"], "--set detection.k.x=1", "'detection.k' is not a section"),
    ("set-bad-value", ["--set", "inversion.lr=-1"], "--set inversion.lr=-1", "'inversion.lr': Input should be greater than 0"),
    ("set-bad-literal", ["--set", "device=tpu"], "--set device=tpu", "'device'"),
    ("set-version", ["--set", "version=2"], "--set version=2", "unsupported policy version 2"),
    ("set-section-to-scalar", ["--set", "pool=3"], "--set pool=3", "bad value for 'pool'"),
    ("set-max-below-strict-min", ["--policy", "strict", "--set", "pool.max_images=10"], "--set pool.max_images=10", "min_images (500) is more than max_images (10)"),
    ("set-second-item-blamed", ["--set", "detection.k=2", "--set", "inversion.lr=.inf"], "--set inversion.lr=.inf", "'inversion.lr'"),
    ("set-forged-line", ["--set", "detection.kk=1\n::error::forged"], "--set 'detection.kk=1\\n::error::forged'", "unknown key 'detection.kk'"),
    ("set-ansi-escape", ["--set", "name=\x1b[31mred"], "--set 'name=\\x1b[31mred'", "not a valid YAML value"),
    ("fail-on-word", ["--fail-on", "sometimes"], "--fail-on:", "expected backdoor, suspicious or never"),
    ("policy-missing", ["--policy", "no-such-policy"], "no-such-policy:", "policy file not found (bundled policies: default, permissive, strict)"),
    ("policy-missing-yaml", ["--policy", "nope/strict.yaml"], "nope/strict.yaml:", "policy file not found"),
    ("policy-nul-in-name", ["--policy", "bad\x00name"], "'bad\\x00name'", "policy file not found"),
]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _assert_one_line(err: str, out: str, code: int, expected: list[str], out_dir: Path) -> str:
    assert code == 2, err
    assert "Traceback" not in err + out
    lines = err.splitlines()
    assert len(lines) == 1, err
    [line] = lines
    assert line.startswith("ci-gate: error: ") and "\x1b" not in line, line
    for text in expected:
        assert text in line, (text, line)
    assert not out_dir.exists(), "the run wrote to --out"
    return line


@pytest.mark.parametrize(("content", "flags", "message"), [c[1:] for c in FILE_CASES], ids=[c[0] for c in FILE_CASES])
def test_hostile_policy_file(tmp_path, capsys, content, flags, message):
    policy = tmp_path / "policy.yaml"
    policy.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    before = _digest(policy)
    out_dir = tmp_path / "out"
    code, out, err = run(["verify", str(tmp_path / "absent.safetensors"), "--policy", str(policy), "--out", str(out_dir), *flags], capsys)
    messages = [message] if isinstance(message, str) else list(message)
    _assert_one_line(err, out, code, [f"ci-gate: error: {policy}: ", *messages], out_dir)
    assert _digest(policy) == before


@pytest.mark.parametrize(("flags", "culprit", "message"), [c[1:] for c in SET_CASES], ids=[c[0] for c in SET_CASES])
def test_hostile_flags_blame_the_flag(tmp_path, capsys, flags, culprit, message):
    out_dir = tmp_path / "out"
    bundled = {p: _digest(p) for p in (REPO / "policies").glob("*.yaml")}
    code, out, err = run(["verify", str(tmp_path / "absent.safetensors"), "--out", str(out_dir), *flags], capsys)
    line = _assert_one_line(err, out, code, [culprit, message], out_dir)
    # a --set error is never blamed on the policy file
    assert "policies/" not in line and ".yaml: " not in line.split(culprit)[0]
    assert {p: _digest(p) for p in bundled} == bundled


def test_the_corpus_is_large_enough():
    assert len(FILE_CASES) + len(SET_CASES) >= 30


def test_a_broken_policy_directory_is_named(tmp_path, capsys):
    folder = tmp_path / "policy.yaml"
    folder.mkdir()
    out_dir = tmp_path / "out"
    code, out, err = run(["verify", str(tmp_path / "absent.safetensors"), "--policy", str(folder), "--out", str(out_dir)], capsys)
    _assert_one_line(err, out, code, [f"{folder}: not a regular file"], out_dir)


def test_bundled_names_work_with_or_without_a_suffix(tmp_path, capsys, monkeypatch):
    """`--policy strict.yaml` (the design card's example) with no such file here: the bundled
    strict policy. The run gets past the policy to the missing checkpoint."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pool").mkdir()
    for spec in ("strict", "strict.yaml", "strict.yml"):
        code, _, err = run(["verify", "absent.safetensors", "--policy", spec, "--pool", "pool", "--out", "out"], capsys)
        assert code == 2 and "absent.safetensors" in err and "policy" not in err, err
    # a file of that name in the working folder does not replace the bundled one; as a path it is read
    (tmp_path / "strict.yaml").write_text("name: local\n")
    code, _, err = run(["verify", "absent.safetensors", "--policy", "strict.yaml", "--pool", "pool", "--out", "out"], capsys)
    assert code == 2 and "absent.safetensors" in err and "policy" not in err, err
    code, _, err = run(["verify", "absent.safetensors", "--policy", "./strict.yaml", "--out", "out"], capsys)
    assert code == 2 and "strict.yaml: a policy must state its version: 1" in err


# --- the internal-error path ---------------------------------------------------------------

CRASH_LINE = re.compile(r"^ci-gate: internal error: (?P<what>.+) \(traceback in (?P<log>.+)\)$")


@pytest.fixture
def crash_dir(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


@pytest.fixture
def result_json(tmp_path) -> Path:
    from result_factory import saved_result

    return saved_result(tmp_path / "scan")


def _explode(exc: BaseException):
    def load_result(path):
        raise exc

    return load_result


@pytest.mark.parametrize(
    "exc",
    [RuntimeError("boom"), ValueError("bad\nthing"), OverflowError("cannot convert float infinity to integer"), KeyError("k"),
     ZeroDivisionError("division by zero"), RecursionError("maximum recursion depth exceeded"), OSError(5, "I/O error"),
     SystemExit(1)],  # a library's sys.exit(1) under a command is not "backdoor"
    ids=lambda e: type(e).__name__,
)
def test_an_unexpected_exception_exits_3_with_a_crash_log(monkeypatch, capsys, crash_dir, result_json, exc):
    monkeypatch.setattr("ci_gate.result.load_result", _explode(exc))
    code, out, err = run(["report", str(result_json)], capsys)
    assert code == 3, err
    assert "Traceback" not in err + out
    [line] = err.splitlines()
    match = CRASH_LINE.match(line)
    assert match, line
    assert match["what"].startswith(f"{type(exc).__name__}: ")
    log = Path(match["log"])
    assert log.parent == crash_dir and log.name.startswith("ci-gate-crash-") and log.suffix == ".log"
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    text = log.read_text()
    assert "Traceback (most recent call last)" in text and type(exc).__name__ in text and "'report'" in text
    assert not (result_json.parent / "report.html").exists()


def test_debug_shows_the_traceback_and_still_exits_3(monkeypatch, capsys, crash_dir, result_json):
    monkeypatch.setattr("ci_gate.result.load_result", _explode(RuntimeError("boom")))
    code, _, err = run(["--debug", "report", str(result_json)], capsys)
    assert code == 3
    assert "Traceback (most recent call last)" in err and "RuntimeError: boom" in err
    assert CRASH_LINE.match(err.splitlines()[-1])


def test_no_crash_log_possible_is_still_exit_3(monkeypatch, capsys, tmp_path, result_json):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "does-not-exist"))
    monkeypatch.setattr("ci_gate.result.load_result", _explode(RuntimeError("boom")))
    code, _, err = run(["report", str(result_json)], capsys)
    assert code == 3
    assert err.strip() == "ci-gate: internal error: RuntimeError: boom (no crash log could be written; rerun with --debug for the traceback)"


def test_an_exception_that_cannot_print_itself(monkeypatch, capsys, crash_dir, result_json):
    class Unprintable(Exception):
        def __str__(self):
            raise RuntimeError("nope")

    monkeypatch.setattr("ci_gate.result.load_result", _explode(Unprintable()))
    code, _, err = run(["report", str(result_json)], capsys)
    assert code == 3 and "Unprintable: <unprintable>" in err and len(err.splitlines()) == 1


def test_internal_error_class_is_exit_3(monkeypatch, capsys, crash_dir, result_json):
    monkeypatch.setattr("ci_gate.result.load_result", _explode(InternalError("scores lost their classes")))
    code, _, err = run(["report", str(result_json)], capsys)
    assert code == 3 and err.startswith("ci-gate: internal error: scores lost their classes (traceback in ")


@pytest.mark.parametrize(("exc", "expected"), [(KeyboardInterrupt(), 130), (GateFailure("refused"), 1), (InputError("x.json", "bad"), 2)],
                         ids=["interrupt", "gate-failure", "input-error"])
def test_other_exits_keep_their_codes(monkeypatch, capsys, crash_dir, result_json, exc, expected):
    monkeypatch.setattr("ci_gate.result.load_result", _explode(exc))
    code, _, err = run(["report", str(result_json)], capsys)
    assert code == expected and "Traceback" not in err
    assert not list(crash_dir.iterdir())


def test_debug_with_bad_input_is_still_exit_2(tmp_path, capsys):
    # before: --debug re-raised the InputError, and Python exits 1 for an uncaught exception
    code, _, err = run(["--debug", "verify", str(tmp_path / "x.safetensors"), "--set", "detection.k=.inf", "--out", str(tmp_path / "o")], capsys)
    assert code == 2
    assert "Traceback" in err and err.splitlines()[-1].startswith("ci-gate: error: --set detection.k=.inf: ")


def test_a_closed_stdout_is_not_a_verdict(tmp_path):
    """A reader that goes away (`ci-gate ... | head -1`) gets 141 (128 + SIGPIPE), never 1 or 3."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run([sys.executable, "-m", "ci_gate", "--help"], stdout=write_end, stderr=subprocess.PIPE, text=True,
                              cwd=tmp_path, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, timeout=60)
    finally:
        os.close(write_end)
    assert done.returncode == 141, done.stderr
    assert "Traceback" not in done.stderr


def test_a_crash_never_shows_a_registered_secret(monkeypatch, capsys, crash_dir, result_json):
    from ci_gate.github import redact

    secret = "ghs_crashLogSecret123"
    monkeypatch.setattr(redact, "_secrets", set())
    redact.register_secret(secret)
    monkeypatch.setattr("ci_gate.result.load_result", _explode(RuntimeError(f"request with {secret} failed")))
    code, out, err = run(["--debug", "report", str(result_json)], capsys)
    assert code == 3 and "Traceback" in err and "request with *** failed" in err
    log = Path(CRASH_LINE.match(err.splitlines()[-1])["log"])
    assert secret not in err + out + log.read_text() and "***" in log.read_text()
