"""The scan computes and writes nothing; the report folder is written from its in-memory output.

Issue 17: ``ci_gate.scan.scan`` takes one ScanInputs and returns a ScanOutput (the Result and the
trigger and example tensors its paths name) without touching the filesystem; verify, repair,
canary and the API share ScanInputs and the CLI's scan options, so ``--reference-weights`` reaches
repair's and canary's re-scans. On tests/tiny_scan.py's one-second random-weight checkpoint.
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import io
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import tiny_scan
from ci_gate.policy import load_policy
from ci_gate.scan_inputs import ScanInputs

# tiny_scan's settings, plus one cheap rung
CHEAP = ["pool.min_images=8", "pool.max_images=8", "inversion.batch_size=8", "inversion.epochs=1", "device=cpu",
         "inversion.epsilon=[8/255]", "inversion.eval_images=16"]
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def _tree(*roots: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for root in roots for p in sorted(root.rglob("*"))}


@contextlib.contextmanager
def refused_writes(monkeypatch: pytest.MonkeyPatch):
    """Every Python-level way to create, change, move or delete a file raises PermissionError and
    is recorded (reads still work). Code that writes from outside Python (a C library) is caught by
    the tree comparison the tests add."""
    attempts: list[tuple] = []
    real_open, real_os_open = builtins.open, os.open

    def refuse(what, *args):
        attempts.append((what, *map(str, args)))
        raise PermissionError(13, f"test: no writes allowed ({what})", str(args[0]) if args else None)

    def guarded_open(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+"):
            refuse("open", file, mode)
        return real_open(file, mode, *args, **kwargs)

    def guarded_os_open(path, flags, *args, **kwargs):
        if flags & _WRITE_FLAGS:
            refuse("os.open", path)
        return real_os_open(path, flags, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(builtins, "open", guarded_open)
        m.setattr(io, "open", guarded_open)
        m.setattr(os, "open", guarded_os_open)
        for name in ("replace", "rename", "mkdir", "makedirs", "remove", "unlink", "rmdir", "symlink", "link", "truncate"):
            m.setattr(os, name, lambda *a, _n=name, **k: refuse(f"os.{_n}", *a))
        yield attempts


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("scan-io")
    ckpt, pool = tiny_scan.build(root / "fixture")
    return ckpt, pool


@pytest.fixture(scope="module")
def scanned(tiny, tmp_path_factory):
    """One real scan, run with every write refused and from an empty working folder."""
    from ci_gate.scan import scan

    ckpt, pool = tiny
    policy, _ = load_policy("default", CHEAP)
    cwd = tmp_path_factory.mktemp("cwd")
    before = _tree(ckpt.parent, cwd)
    mp = pytest.MonkeyPatch()
    old = os.getcwd()
    os.chdir(cwd)
    try:
        with refused_writes(mp) as attempts:
            found = scan(ScanInputs(checkpoint=ckpt, policy=policy, pool=str(pool)))
    finally:
        os.chdir(old)
        mp.undo()
    return found, attempts, before, _tree(ckpt.parent, cwd)


def test_the_guard_refuses_what_the_report_writer_does(tmp_path, monkeypatch, scanned):
    """The guard can fail: writing the scan's folder is refused and recorded."""
    from ci_gate.report.folder import write_scan_files

    found, *_ = scanned
    with refused_writes(monkeypatch) as attempts, pytest.raises(PermissionError):
        write_scan_files(found, tmp_path / "out")
    assert attempts and not (tmp_path / "out").exists()


def test_the_scan_writes_nothing_and_returns_what_the_reports_need(scanned):
    found, attempts, before, after = scanned
    assert attempts == []
    assert after == before  # the checkpoint's folder (pool inside it) and the working folder
    result = found.result
    assert [t.index for t in found.triggers] == [c.index for c in result.classes]
    for cls in result.classes:
        trig = found.trigger(cls.index)
        assert (trig.png, trig.tensor) == (cls.trigger_png, cls.trigger_tensor)
        assert trig.delta.device.type == "cpu" and trig.epsilon == cls.epsilon
        assert float(trig.delta.abs().max()) == pytest.approx(cls.trigger_linf)
    assert [(e.clean_png, e.triggered_png) for e in found.examples] == [(e.clean_png, e.triggered_png) for e in result.examples]


def test_the_written_folder_is_the_one_the_scan_used_to_write(scanned, tmp_path):
    """Every file the Result names, and nothing else; the trigger files are the bytes
    ci_gate.artifacts.write_trigger (what the scan called before) writes for the same tensor."""
    from ci_gate.artifacts import write_trigger
    from ci_gate.report.folder import write_report_folder
    from ci_gate.result import load_result

    found, *_ = scanned
    result = found.result
    out = tmp_path / "report"
    reports = write_report_folder(found, out, ["json", "html", "sarif", "md"])
    assert reports == {"json": out / "result.json", "html": out / "report.html", "sarif": out / "report.sarif", "md": out / "summary.md"}
    named = {c.trigger_png for c in result.classes} | {c.trigger_tensor for c in result.classes}
    named |= {p for e in result.examples for p in (e.clean_png, e.triggered_png)}
    written = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    assert written == named | {"result.json", "report.html", "report.sarif", "summary.md", ".ci-gate-report"}
    assert load_result(out / "result.json") == result
    old = tmp_path / "old"
    for cls in result.classes:
        trig = found.trigger(cls.index)
        write_trigger(old, cls.index, cls.name, trig.delta, trig.epsilon)
        for rel in (cls.trigger_png, cls.trigger_tensor):
            assert (out / rel).read_bytes() == (old / rel).read_bytes(), rel
        assert torch.equal(load_file(str(out / cls.trigger_tensor))["delta"].float(), found.delta(cls.index))
    assert sorted(os.listdir(tmp_path)) == ["old", "report"]  # staged and swapped in: no leftovers


# -- --reference-weights reaches repair's and canary's scans ----------------------------------------


@pytest.fixture(scope="module")
def published(tiny, tmp_path_factory):
    """(the published backbone the tiny checkpoint embeds unchanged, one whose tower differs)."""
    from ci_gate.checkpoint.format import load_checkpoint

    from ci_gate.model.architecture import write_config_file

    ckpt, _ = tiny
    checkpoint = load_checkpoint(ckpt)
    state = {k: v.contiguous() for k, v in checkpoint.backbone_tensors.items()}
    root = tmp_path_factory.mktemp("published")
    write_config_file(root, checkpoint.meta.backbone.config)  # the published architecture, beside the weights
    same, other = root / "same.safetensors", root / "other.safetensors"
    save_file(state, str(same))
    key = next(k for k in sorted(state) if k.endswith("proj") or k.endswith("weight"))
    save_file({**state, key: state[key] + 0.05}, str(other))
    return same, other


@pytest.fixture(scope="module")
def labeled(tiny, tmp_path_factory):
    """A labeled folder per class of the tiny checkpoint (6 images each)."""
    from ci_gate.artifacts import write_png
    from ci_gate.bench.speed_run import candidate_names, random_pool

    root = tmp_path_factory.mktemp("labeled") / "data"
    for c, name in enumerate(candidate_names(4)):
        for i, img in enumerate(random_pool(6, 32, seed=10 + c)):
            write_png(root / name / f"{i}.png", img)
    return root


def _spy(monkeypatch, module) -> list:
    """Record what each scan of ``module`` was given and what it found; the scan itself is real."""
    real = module.scan
    seen = []

    def recording(inputs, *args, **kwargs):
        found = real(inputs, *args, **kwargs)
        seen.append((inputs, found.result))
        return found

    monkeypatch.setattr(module, "scan", recording)
    return seen


def _cli(capsys, *argv) -> tuple[int, str, str]:
    from ci_gate.cli import main

    with pytest.raises(SystemExit) as done:
        main([str(a) for a in argv])
    cap = capsys.readouterr()
    return int(done.value.code or 0), cap.out, cap.err


def _sets(*items: str) -> list[str]:
    return [x for item in items for x in ("--set", item)]


def test_repair_refuses_a_tower_that_differs_from_the_published_one(tiny, published, labeled, tmp_path, monkeypatch, capsys):
    """The delivered checkpoint embeds a tower that differs from the published one: with
    --reference-weights the first scan finds the modified encoder, and since every repaired
    candidate re-embeds that tower (and would fail verification the same way), repair is refused
    before any fine-tuning, with the reason; nothing is written."""
    import ci_gate.repair.flow as flow

    ckpt, pool = tiny
    _, other = published
    seen = _spy(monkeypatch, flow)
    code, out, err = _cli(capsys, "repair", ckpt, "--clean-data", labeled, "--out", tmp_path / "fixed.safetensors", "--pool", pool,
                          "--reference-weights", other, "--quiet",
                          # a reference-free statistic: the encoder check alone needs the published weights
                          *_sets(*CHEAP, "detection.statistic=loss_drop", "repair.allowed=true", "repair.epochs=1", "repair.rounds=1",
                                 "repair.holdout=0.5", "repair.refresh_blocks=1"))
    assert code == 1, out + err
    assert "prompt repair cannot undo an encoder-level change" in out + err
    assert len(seen) == 1  # the delivered checkpoint only: no candidate was tuned
    ((first, before),) = seen
    assert first.reference_weights == other and before.encoder.status == "modified"
    assert not (tmp_path / "fixed.safetensors").exists() and not (tmp_path / "repair.json").exists()


def test_repair_refuses_a_tower_nobody_could_check(tiny, labeled, tmp_path, monkeypatch, capsys):
    """No --reference-weights: the embedded tower is unverified, which fails the default gate
    whatever a prompt repair does (every candidate re-embeds it), so repair is refused before any
    fine-tuning, saying how to fix it; nothing is written."""
    import ci_gate.repair.flow as flow

    ckpt, pool = tiny
    seen = _spy(monkeypatch, flow)
    code, out, err = _cli(capsys, "repair", ckpt, "--clean-data", labeled, "--out", tmp_path / "fixed.safetensors", "--pool", pool, "--quiet",
                          *_sets(*CHEAP, "repair.allowed=true", "repair.epochs=1", "repair.rounds=1", "repair.holdout=0.5", "repair.refresh_blocks=1"))
    assert code == 1, out + err
    assert "could not be checked against published weights" in out + err and "--reference-weights" in out + err
    ((first, before),) = seen
    assert first.reference_weights is None and before.encoder.status == "unverified" and before.verdict == "clean"
    assert not (tmp_path / "fixed.safetensors").exists() and not (tmp_path / "repair.json").exists()


def test_canary_scans_its_copy_with_the_published_reference(tiny, published, labeled, tmp_path, monkeypatch, capsys):
    import ci_gate.canary as canary

    ckpt, pool = tiny
    same, _ = published
    seen = _spy(monkeypatch, canary)
    out = tmp_path / "canary"
    code, stdout, err = _cli(capsys, "canary", ckpt, "--data", labeled, "--pool", pool, "--out", out, "--reference-weights", same, "--quiet",
                             *_sets(*CHEAP, "canary.epochs=1", "canary.min_attack_asr=0", "canary.holdout=0.5"))
    assert code in (0, 1), stdout + err  # a verdict either way: a one-epoch canary on a random model may be missed
    [(inputs, result)] = seen
    assert inputs.reference_weights == same and inputs.checkpoint != ckpt
    assert result.model.path == f"canary of {ckpt}"
    # the copy embeds the published tower unchanged: checked against it, and scored with the
    # reference the published weights give (without them the tower would be "unverified")
    assert result.encoder.status == "unmodified" and result.detection.reference == "published"
    assert (out / "scan" / "result.json").is_file() and (out / "canary.json").is_file()
