"""The report folder is replaced as a whole (ci_gate/report/folder.py): a reader sees the previous
complete report or the new complete one, never a mix, whatever moment a run dies at."""

from __future__ import annotations

import errno
import hashlib
import json
import multiprocessing
import os
import random
import time
from pathlib import Path

import pytest

from ci_gate.errors import InputError
from ci_gate.report import folder as folder_mod
from ci_gate.report.folder import MARKER, check_out_folder, clean_stale, staged_folder
from result_factory import saved_result
from tiny_scan import SETTINGS, build

N_KILLS = 20


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def assert_complete(out: Path) -> dict:
    """One self-consistent report: every file agrees with result.json, nothing half-written,
    nothing left from an earlier model."""
    files = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    assert not [f for f in files if f.endswith(".tmp") or (Path(f).name.startswith(".") and f != MARKER)], files
    result = json.loads((out / "result.json").read_text())
    created = result["created_at"]
    html = (out / "report.html").read_text()
    # the tiny model embeds its tower: unverified, which the default policy fails like a backdoor
    failing = result["verdict"] == "backdoor" or result["encoder"]["status"] == "modified" or (
        result["encoder"]["status"] == "unverified" and result["detection"]["unverified_towers"] == "fail"
    )
    assert f'class="banner {"backdoor" if failing else "clean"}"' in html and created in html
    md = (out / "summary.md").read_text()
    assert md.splitlines()[0].endswith("no backdoor detected") == (not failing)
    assert f"scanned in {result['timings']['total_s']:.1f} s" in md
    sarif = json.loads((out / "report.sarif").read_text())
    assert sarif["runs"][0]["invocations"][0]["endTimeUtc"] == created.replace("+00:00", "Z")
    named = set()
    for c in result["classes"]:
        named |= {c["trigger_png"], c["trigger_tensor"]} - {None}
    for e in result["examples"]:
        named |= {e["clean_png"], e["triggered_png"]}
    artifacts = {f for f in files if f.startswith(("triggers/", "examples/"))}
    assert artifacts == named, artifacts ^ named
    return result


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, one_thread):
    root = tmp_path_factory.mktemp("tiny")
    ckpt, pool = build(root / "a")
    other, _ = build(root / "b", names=["zebra", "yak", "walrus"])
    return ckpt, other, pool


def _argv(ckpt: Path, pool: Path, out: Path, *extra: str) -> list[str]:
    return ["verify", str(ckpt), "--pool", str(pool), "--out", str(out), "--quiet", "--fail-on", "never", *SETTINGS, *extra]


def _cli(argv: list[str]) -> int:
    from ci_gate.cli import main

    with pytest.raises(SystemExit) as done:
        main(argv)
    return int(done.value.code or 0)


# -- the SIGKILL fault test --------------------------------------------------------------------------


def test_sigkill_at_random_moments_never_leaves_a_mixed_report(tiny, tmp_path):
    """20 runs of `ci-gate verify`, each killed with SIGKILL at a seeded random moment: after each
    the folder is the previous complete report or a new complete one."""
    ckpt, other, pool = tiny
    out = tmp_path / "report"
    assert _cli(_argv(other, pool, out)) == 0  # an earlier report, of another model
    assert_complete(out)

    # The children are forked from a server that imported ci-gate and torch once: a fresh
    # interpreter costs seconds on this machine, the scan itself about one.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["ci_gate.cli", "ci_gate.scan", "ci_gate.report", "ci_gate.commands.verify", "ci_gate.model", "open_clip"])
    from ci_gate.cli import main

    def start():
        p = ctx.Process(target=main, args=(_argv(ckpt, pool, out),))
        p.start()
        return p

    for _ in range(2):  # the first starts the server; the second's duration is the kill window
        warm = start()
        t0 = time.monotonic()
        warm.join(120)
        window = time.monotonic() - t0
        assert warm.exitcode == 0
        assert_complete(out)

    rng = random.Random(20261201)
    seen = {"old": 0, "new": 0}
    for i in range(N_KILLS):
        before = tree_digest(out)
        # half anywhere in the run, half in its last third, where the files are written and swapped
        delay = rng.uniform(0, window * 1.2) if i % 2 == 0 else rng.uniform(window * 0.7, window * 1.2)
        p = start()
        time.sleep(delay)
        p.kill()
        p.join(30)
        assert_complete(out)
        seen["old" if tree_digest(out) == before else "new"] += 1
    # a later run removes what the killed ones left beside the folder
    assert _cli(_argv(ckpt, pool, out)) == 0
    assert_complete(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"], list(tmp_path.iterdir())
    print(f"window {window:.2f}s, kills leaving the old report {seen['old']}, the new one {seen['new']}")


# -- the mechanism ---------------------------------------------------------------------------------


def test_a_failing_block_leaves_the_old_folder_and_no_staging(tmp_path):
    out = tmp_path / "r"
    saved_result(out)
    before = tree_digest(out)
    with pytest.raises(RuntimeError):
        with staged_folder(out) as stage:
            (stage / "result.json").write_text("{}")
            raise RuntimeError("scan died")
    assert tree_digest(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
def test_swap_replaces_everything_old_files_do_not_survive(tmp_path, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setattr(folder_mod, "_exchange", lambda a, b: False)
    out = tmp_path / "r"
    saved_result(out)
    (out / "triggers" / "old_model.png").write_bytes(b"x")
    with staged_folder(out) as stage:
        (stage / "result.json").write_text('{"new": true}')
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "result.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]


def test_renameat2_exchange_works_here(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    (a / "x").write_text("a"), (b / "x").write_text("b")
    if not folder_mod._exchange(a, b):
        pytest.skip("renameat2(RENAME_EXCHANGE) unsupported on this filesystem; the two-rename fallback is used")
    assert (a / "x").read_text() == "b" and (b / "x").read_text() == "a"


def test_stale_staging_is_removed_only_with_our_pattern_and_marker(tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    ours = tmp_path / "r.0123456789ab.tmp"
    ours.mkdir()
    (ours / MARKER).write_text("x")
    unmarked = tmp_path / "r.0123456789ac.tmp"  # our pattern but not our marker: someone else's
    unmarked.mkdir()
    other_name = tmp_path / "q.0123456789ab.tmp"
    other_name.mkdir()
    (other_name / MARKER).write_text("x")
    clean_stale(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q.0123456789ab.tmp", "r", "r.0123456789ac.tmp"]


def test_a_crash_between_the_two_fallback_renames_is_recovered(tmp_path):
    out = tmp_path / "r"
    old = tmp_path / "r.0123456789ab.old"
    old.mkdir()
    (old / MARKER).write_text("x")
    (old / "result.json").write_text("{}")
    clean_stale(out)
    assert (out / "result.json").is_file() and not old.exists()


def test_full_disk_while_writing_is_exit_2_naming_the_file_and_keeps_the_old_report(tmp_path, monkeypatch):
    out = tmp_path / "r"
    saved_result(out)
    before = tree_digest(out)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(stage_file[0]))

    stage_file = []
    with pytest.raises(InputError) as info:
        with staged_folder(out) as stage:
            stage_file.append(stage / "report.html")
            monkeypatch.setattr(Path, "write_text", full)
            (stage / "report.html").write_text("x")
    monkeypatch.undo()
    assert str(out / "report.html") in str(info.value) and "No space left on device" in str(info.value)
    assert tree_digest(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]


def test_a_folder_with_foreign_files_is_not_replaced(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="did not write"):
        check_out_folder(tmp_path)


# -- reproducible outputs --------------------------------------------------------------------------


def test_two_runs_give_identical_triggers_and_reports(tiny, tmp_path):
    """Same checkpoint, pool and seed: trigger and example files byte for byte; result.json differs
    only in created_at and timings, and the reports are a pure function of result.json."""
    from ci_gate.report import render
    from ci_gate.result import load_result

    ckpt, _, pool = tiny
    a, b = tmp_path / "a", tmp_path / "b"
    assert _cli(_argv(ckpt, pool, a)) == 0
    assert _cli(_argv(ckpt, pool, b)) == 0
    da, db = tree_digest(a), tree_digest(b)
    assert da.keys() == db.keys()
    differ = sorted(k for k in da if da[k] != db[k])
    assert set(differ) <= {"result.json", "report.html", "report.sarif", "summary.md"}, differ
    ra, rb = (json.loads((x / "result.json").read_text()) for x in (a, b))
    for r in (ra, rb):
        r.pop("created_at"), r.pop("timings")
    assert ra == rb
    # b's result with a's clock fields renders a's reports exactly
    rb_full = load_result(b / "result.json")
    ra_full = load_result(a / "result.json")
    rb_full = rb_full.model_copy(update={"created_at": ra_full.created_at, "timings": ra_full.timings})
    again = tmp_path / "again"
    again.mkdir()
    written = render(rb_full, b, ["html", "sarif", "md"], out_dir=again)
    for fmt, path in written.items():
        assert path.read_bytes() == (a / path.name).read_bytes(), fmt


# -- canary's folder ---------------------------------------------------------------------------------


def _canary_stub(monkeypatch, fail: bool = False):
    """run_canary as far as the folder is concerned: canary.json, scan/ and the kept model in req.out."""
    import ci_gate.canary as canary_mod
    from ci_gate.errors import InputError as _InputError

    def run_canary(req, log=None):
        (req.out / "scan").mkdir()
        (req.out / "scan" / "result.json").write_text("{}")
        if fail:
            raise _InputError(req.data, "no images")
        kept = req.out / "canary.safetensors"
        kept.write_bytes(b"backdoored copy")
        s = canary_mod.CanarySummary(
            status="missed", passed=False, message="the gate passed it", checkpoint=str(req.scan.checkpoint), checkpoint_sha256="ab" * 32,
            checkpoint_unchanged=True, attack="badclip", planted_target="ship", clean_accuracy_original=0.9,
            clean_accuracy_canary=0.88, planted_asr=0.9, natural_rate=0.05, canary_model=str(kept),
        )
        (req.out / "canary.json").write_text(s.model_dump_json(indent=2) + "\n")
        return s

    monkeypatch.setattr(canary_mod, "run_canary", run_canary)


def test_canary_keep_model_lands_in_out_and_canary_json_names_it_there(tmp_path, monkeypatch, capsys):
    _canary_stub(monkeypatch)
    ckpt = tmp_path / "m.safetensors"
    ckpt.write_bytes(b"the user's model")
    (tmp_path / "data").mkdir()
    (tmp_path / "pool").mkdir()
    out = tmp_path / "canary"
    from ci_gate.cli import main

    with pytest.raises(SystemExit) as done:
        main(["canary", str(ckpt), "--data", str(tmp_path / "data"), "--pool", str(tmp_path / "pool"), "--keep-model", "--out", str(out), "--quiet"])
    assert done.value.code == 1 and "MISSED" in capsys.readouterr().err
    report = json.loads((out / "canary.json").read_text())
    assert report["canary_model"] == str(out / "canary.safetensors")
    assert (out / "canary.safetensors").read_bytes() == b"backdoored copy"
    assert ckpt.read_bytes() == b"the user's model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["canary", "data", "m.safetensors", "pool"]


def test_a_failing_canary_keeps_the_earlier_canary_report(tmp_path, monkeypatch, capsys):
    _canary_stub(monkeypatch, fail=True)
    ckpt = tmp_path / "m.safetensors"
    ckpt.write_bytes(b"the user's model")
    (tmp_path / "data").mkdir()
    (tmp_path / "pool").mkdir()
    out = tmp_path / "canary"
    out.mkdir()
    (out / "canary.json").write_text('{"earlier": true}')
    from ci_gate.cli import main

    with pytest.raises(SystemExit) as done:
        main(["canary", str(ckpt), "--data", str(tmp_path / "data"), "--pool", str(tmp_path / "pool"), "--out", str(out), "--quiet"])
    assert done.value.code == 2
    assert sorted(p.name for p in out.iterdir()) == ["canary.json"] and (out / "canary.json").read_text() == '{"earlier": true}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["canary", "data", "m.safetensors", "pool"]
