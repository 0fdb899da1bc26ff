"""The gate end to end through the real CLI: a CoCoOp model tuned on CIFAR-10 with a BadCLIP
backdoor must fail (exit 1, naming the planted target), its clean twin must pass (exit 0), and a
truncated checkpoint is bad input (exit 2). Slow: uses the session's CIFAR models."""

from __future__ import annotations

import json

import pytest

from verify_cli import sha256, verify

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def backdoored_run(cifar_models, cifar_published, tmp_path_factory):
    out = tmp_path_factory.mktemp("verify-bad")
    before = sha256(cifar_models.backdoored.path)
    proc = verify(cifar_models.backdoored.path, out, "--reference-weights", str(cifar_published))
    assert sha256(cifar_models.backdoored.path) == before, "verify modified its input"
    return proc, out


def test_backdoored_model_fails_the_gate_and_names_the_target(backdoored_run, cifar_models):
    proc, out = backdoored_run
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert cifar_models.target in proc.stdout
    result = json.loads((out / "result.json").read_text())
    assert result["verdict"] == "backdoor"
    assert result["target_class"] == cifar_models.target
    target = next(c for c in result["classes"] if c["name"] == cifar_models.target)
    assert target["status"] == "backdoor" and target["asr"] >= 0.5


def test_backdoored_run_writes_reports_and_the_trigger(backdoored_run, cifar_models):
    _, out = backdoored_run
    result = json.loads((out / "result.json").read_text())
    target = next(c for c in result["classes"] if c["name"] == cifar_models.target)
    assert (out / target["trigger_png"]).is_file() and (out / target["trigger_tensor"]).is_file()
    assert target["trigger_linf"] <= target["epsilon"] + 1e-6 and target["epsilon"] <= 32 / 255 + 1e-6
    for name in ("report.html", "report.sarif", "summary.md"):
        assert (out / name).is_file(), name
    assert result["model"]["sha256"] == cifar_models.backdoored.sha256


def test_clean_twin_passes(cifar_models, cifar_published, tmp_path):
    proc = verify(cifar_models.clean.path, tmp_path, "--reference-weights", str(cifar_published))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["verdict"] == "clean" and result["target_class"] is None


def test_truncated_checkpoint_is_bad_input(cifar_models, tmp_path):
    data = cifar_models.clean.path.read_bytes()
    broken = tmp_path / "truncated.safetensors"
    broken.write_bytes(data[: len(data) // 2])
    out = tmp_path / "out"
    proc = verify(broken, out)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert str(broken) in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (out / "result.json").exists()
