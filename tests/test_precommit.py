"""The pre-commit hook, run by the real `pre-commit` tool in a temporary git repository of models.

The hook repository is a fresh git commit of this checkout's .pre-commit-hooks.yaml (all that a
`language: system` hook takes from its repository); the `ci-gate` it runs is the one installed
next to this Python (`pip install -e .[dev]` puts it there). The `language: python` variant would
pip-install ci-gate with CUDA torch into a new environment (GBs), so only its manifest is checked.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import tiny_scan
from ci_gate.commands.precommit import hook_exit_code, report_folder

REPO = Path(__file__).resolve().parents[1]
MANIFEST = REPO / ".pre-commit-hooks.yaml"
BIN = Path(sys.executable).parent
# the cheapest scan that still runs every stage: two classes, one budget, eight images
CHEAP = [*tiny_scan.SETTINGS, "--set", "inversion.epsilon=[8/255]", "--set", "inversion.eval_images=16"]


def _pre_commit() -> str:
    found = shutil.which("pre-commit", path=str(BIN)) or shutil.which("pre-commit")
    assert found, "pre-commit is not installed: it is in the dev extra (pip install -e .[dev])"
    return found


def _git(cwd: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "commit.gpgsign=false", *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_the_manifest_is_valid_and_both_hooks_verify_safetensors():
    done = subprocess.run([_pre_commit(), "validate-manifest", str(MANIFEST)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    hooks = {h["id"]: h for h in yaml.safe_load(MANIFEST.read_text())}
    assert {hooks["ci-gate"]["language"], hooks["ci-gate-system"]["language"]} == {"python", "system"}
    for hook in hooks.values():
        assert hook["entry"] == "ci-gate precommit" and hook["pass_filenames"] is True and hook["require_serial"] is True
        assert hook["files"] == r"(?i)\.safetensors$"
        # a checkpoint renamed to another case is still a checkpoint the hook must see
        assert all(re.search(hook["files"], n) for n in ("a.safetensors", "m/b.SafeTensors", "C.SAFETENSORS"))
        assert not re.search(hook["files"], "a.safetensors.md")


def test_report_folders_mirror_the_repository_and_never_collide(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = Path("reports")
    assert report_folder(root, "models/a.safetensors") == root / "models" / "a.safetensors"
    assert report_folder(root, "a.safetensors") != report_folder(root, "models/a.safetensors")
    outside = [report_folder(root, p) for p in ("/elsewhere/a.safetensors", "/other/a.safetensors", "../a.safetensors")]
    assert len(set(outside)) == 3 and all(p.parent == root / "_outside" and p.name.endswith("-a.safetensors") for p in outside)
    assert hook_exit_code([]) == 0 and hook_exit_code([0, 0]) == 0 and hook_exit_code([0, 1]) == 1
    assert hook_exit_code([1, 2, 0]) == 2 and hook_exit_code([3, 1]) == 3  # a crash is never read as a verdict


@pytest.mark.skipif(shutil.which("git") is None, reason="git not installed")
def test_pre_commit_passes_a_clean_checkpoint_and_blocks_a_broken_one(tmp_path):
    # One commit with both files: each pre-commit run costs a torch import (~10 CPU-seconds), so
    # the clean file's pass is read off its own verify (exit 0, its report) and the broken file's
    # failure off the refused commit; hook_exit_code's rule is tested above.
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": str(REPO),
           "PRE_COMMIT_HOME": str(tmp_path / "pre-commit-cache"), "GIT_CONFIG_NOSYSTEM": "1", "OMP_NUM_THREADS": "1"}
    assert (BIN / "ci-gate").exists(), f"no ci-gate next to {sys.executable}: pip install -e .[dev]"
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    shutil.copy(MANIFEST, hooks / ".pre-commit-hooks.yaml")
    _git(hooks, "init", "-q", env=env)
    _git(hooks, "add", ".", env=env)
    assert _git(hooks, "commit", "-qm", "hooks", env=env).returncode == 0
    rev = _git(hooks, "rev-parse", "HEAD", env=env).stdout.strip()

    models = tmp_path / "models-repo"
    ckpt, pool = tiny_scan.build(tmp_path / "fixture", names=["cat", "dog"])
    (models / "models").mkdir(parents=True)
    shutil.copy(ckpt, models / "models" / "clean.safetensors")
    (models / "models" / "broken.safetensors").write_bytes(b"not a checkpoint at all")
    reports = tmp_path / "reports"
    config = {"repos": [{"repo": str(hooks), "rev": rev, "hooks": [
        {"id": "ci-gate-system", "args": ["--pool", str(pool), "--out-root", str(reports), "--reference-weights", str(tiny_scan.published_weights(tmp_path / "fixture")), *CHEAP]}]}]}
    (models / ".pre-commit-config.yaml").write_text(yaml.safe_dump(config))
    _git(models, "init", "-q", env=env)
    done = subprocess.run([_pre_commit(), "install"], cwd=models, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr

    # both checkpoints staged: each gets its own verify; the broken one refuses the commit
    _git(models, "add", ".", env=env)
    refused = _git(models, "commit", "-m", "add models", env=env)
    log = refused.stdout + refused.stderr
    assert refused.returncode != 0, log
    assert _git(models, "rev-parse", "--verify", "-q", "HEAD", env=env).returncode != 0  # nothing was committed
    assert "ci-gate precommit: models/clean.safetensors: gate passes" in log, log
    assert "ci-gate precommit: models/broken.safetensors: not scanned (exit 2)" in log
    assert "ci-gate: error: models/broken.safetensors: not a safetensors file" in log
    clean = json.loads((reports / "models" / "clean.safetensors" / "result.json").read_text())
    assert clean["verdict"] == "clean" and clean["model"]["path"] == "models/clean.safetensors"
    assert clean["encoder"]["status"] == "unmodified"  # checked against the published weights, so it may pass
    assert not (reports / "models" / "broken.safetensors").exists()


def test_a_checkpoint_named_like_an_option_is_refused_not_skipped(tmp_path, monkeypatch, capsys):
    from ci_gate.cli import main

    # pre-commit appends the staged names after the hook's args with no "--": a checkpoint named
    # --out-root=x.safetensors set --out-root, and the hook passed with nothing scanned
    monkeypatch.chdir(tmp_path)
    for name, argv in [("--out-root=evil.safetensors", ["--out-root=evil.safetensors"]),
                       ("-pevil.safetensors", ["-pevil.safetensors"]),
                       ("--backbone-weights=w.safetensors", ["models/a.safetensors", "--backbone-weights=w.safetensors"])]:
        (tmp_path / name).write_bytes(b"a backdoored checkpoint")
        with pytest.raises(SystemExit) as done:
            main(["precommit", "--pool", str(tmp_path), *argv])
        err = capsys.readouterr().err
        assert done.value.code == 2, (name, err)
        assert err == f"ci-gate: error: {name}: a checkpoint whose name starts with '-' is read as an option, not scanned; rename it\n"
    # an option value that is no such file is the user's option (nothing staged: nothing to do)
    with pytest.raises(SystemExit) as done:
        main(["precommit", "--backbone-weights=elsewhere.safetensors"])
    assert done.value.code == 0
    # a name with a leading dash that reaches verify is scanned as a file, not parsed as its option
    (tmp_path / "-x.safetensors").write_bytes(b"not a checkpoint at all")
    (tmp_path / "pool").mkdir()
    with pytest.raises(SystemExit) as done:
        main(["precommit", "--pool", str(tmp_path / "pool"), "--", "-x.safetensors"])
    err = capsys.readouterr().err
    assert done.value.code == 2 and "ci-gate: error: -x.safetensors: not a safetensors file" in err, err
    assert "ci-gate precommit: -x.safetensors: not scanned (exit 2)" in err
