"""Which clean reference the gate scans against, end to end through the real CLI: published weights
(``--reference-weights``) replace an embedded tower in the reference, a tower that differs from
them fails the gate and brings in the patch family (unless the L-inf ladder already names a
target), and unusable published weights are bad input. Slow: uses the session's CIFAR models."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from verify_cli import verify

pytestmark = pytest.mark.slow

REF = ["--set", "detection.statistic=ref_loss_gain"]
# for tests of the wiring (which reference, which rungs), not of detection power: a smaller pool
# and evaluation subset keep the scans cheap; the benchmark measures what they find
SMALL = ["--set", "pool.max_images=128", "--set", "inversion.eval_images=64"]


def test_reference_weights_replace_an_embedded_backbone_in_the_reference(cifar_models, cifar_published, tmp_path):
    own = verify(cifar_models.clean.path, tmp_path / "own", *REF, *SMALL)
    # the embedded tower cannot be checked: that fails the default gate on its own (a policy
    # violation, exit 1) although no class is flagged, and every report says why
    assert own.returncode == 1, own.stdout + own.stderr
    own_result = json.loads((tmp_path / "own" / "result.json").read_text())
    assert any("--reference-weights" in w and "unverified" in w for w in own_result["warnings"])
    assert own_result["verdict"] == "clean" and own_result["detection"]["unverified_towers"] == "fail"
    assert "UNVERIFIED_ENCODER" in own.stdout
    sarif = json.loads((tmp_path / "own" / "report.sarif").read_text())
    assert [(r["ruleId"], r["level"]) for r in sarif["runs"][0]["results"]] == [("CIG004", "error")]
    # re-decided with unverified_towers warn, the same scan passes: the reference-free statistic decides alone
    warned = subprocess.run(
        [sys.executable, "-m", "ci_gate", "report", str(tmp_path / "own" / "result.json"), "--rescore", "--set", "detection.unverified_towers=warn", "--out", str(tmp_path / "warned")],
        capture_output=True, text=True, timeout=300,
    )
    assert warned.returncode == 0, warned.stdout + warned.stderr
    warned_sarif = json.loads((tmp_path / "warned" / "report.sarif").read_text())
    assert [(r["ruleId"], r["level"]) for r in warned_sarif["runs"][0]["results"]] == [("CIG004", "warning")]

    ref = verify(cifar_models.clean.path, tmp_path / "ref", *REF, *SMALL, "--reference-weights", str(cifar_published))
    assert ref.returncode == 0, ref.stdout + ref.stderr
    ref_result = json.loads((tmp_path / "ref" / "result.json").read_text())
    assert not any("--reference-weights" in w for w in ref_result["warnings"])
    # the same scan inputs either way; without published weights the embedded tower is unverified
    # and a reference-free statistic decides, with them the clean reference is the published tower
    assert [[round(r["final_loss"], 4) for r in c["rungs"]] for c in ref_result["classes"]] == [[round(r["final_loss"], 4) for r in c["rungs"]] for c in own_result["classes"]]
    assert own_result["detection"]["reference"] == "none" and own_result["encoder"]["status"] == "unverified"
    assert ref_result["detection"]["reference"] == "published" and ref_result["detection"]["statistic"] == "ref_loss_gain"
    assert ref_result["encoder"]["status"] == "unmodified"
    assert not any("differs from the published weights" in w for w in ref_result["warnings"])
    # the patch family runs only on a modified tower
    assert ref_result["detection"]["patch_areas"] == [] and all(r["family"] == "linf" for c in ref_result["classes"] for r in c["rungs"])


def _published_one_tensor_off(cifar_models, tmp_path):
    """'Published' weights that differ from the checkpoints' tower in one image-tower tensor: what
    an encoder-level delivery looks like from the gate. Returns (path, the tensor's name)."""
    from safetensors.torch import save_file

    published = {k: v.clone().contiguous() for k, v in cifar_models.backbone_state.items()}
    name = next(k for k in published if k.startswith("visual.") and published[k].is_floating_point())
    published[name] += 0.01
    from ci_gate.model.architecture import write_config_file
    from ci_gate.model.small import small_config

    path = tmp_path / "published.safetensors"
    save_file(published, str(path))
    write_config_file(tmp_path, small_config("tiny-32"))  # the architecture is the published one: only the tensor differs
    return path, name


def test_a_backbone_that_differs_from_the_published_one_is_reported(cifar_models, tmp_path):
    path, name = _published_one_tensor_off(cifar_models, tmp_path)
    proc = verify(cifar_models.clean.path, tmp_path / "out", "--reference-weights", str(path), *SMALL)
    # a modified tower is a finding of its own: it fails the gate whatever the inversion says
    assert proc.returncode == 1, proc.stdout + proc.stderr
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert any("differs from the published weights" in w and str(path) in w for w in result["warnings"])
    assert result["encoder"]["status"] == "modified" and result["encoder"]["n_changed"] == 1
    assert result["encoder"]["changed"][0]["name"] == name
    assert result["encoder"]["changed"][0]["max_abs"] == pytest.approx(0.01, rel=1e-3)
    # the patch family ran beside the L-inf ladder: its area rungs follow the L-inf ones in every
    # class, with the published tower's values, and the saved result re-decides with them
    det = result["detection"]
    assert det["patch_areas"] == [0.01, 0.02, 0.04]
    layout = [("linf", e) for e in det["epsilons"]] + [("patch", a) for a in det["patch_areas"]]
    assert all([(r["family"], r["epsilon"]) for r in c["rungs"]] == layout and all(r["ref_asr"] is not None for r in c["rungs"]) for c in result["classes"])
    assert any("mask-and-pattern (patch) inversion" in w for w in result["warnings"])
    from ci_gate.policy import load_policy
    from ci_gate.rescore import rescore
    from ci_gate.result import load_result

    saved = load_result(tmp_path / "out" / "result.json")
    again = rescore(saved, load_policy("default")[0])
    assert [c.anomaly for c in again.classes] == pytest.approx([c.anomaly for c in saved.classes])


def test_a_modified_tower_whose_ladder_flags_a_class_skips_the_patch_family(cifar_models, tmp_path):
    path, _ = _published_one_tensor_off(cifar_models, tmp_path)
    proc = verify(cifar_models.backdoored.path, tmp_path / "out", "--reference-weights", str(path))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    # the target is named by the L-inf ladder already: the patch family, there to name one, is not run
    assert result["encoder"]["status"] == "modified" and result["verdict"] == "backdoor"
    assert result["target_class"] == cifar_models.target
    assert result["detection"]["patch_areas"] == [] and all(r["family"] == "linf" for c in result["classes"] for r in c["rungs"])
    assert any("was not needed" in w for w in result["warnings"])


def test_unusable_reference_weights_are_bad_input(cifar_models, tmp_path):
    bogus = tmp_path / "bogus.safetensors"
    bogus.write_bytes(b"not a weights file")
    proc = verify(cifar_models.clean.path, tmp_path / "out", *REF, "--reference-weights", str(bogus))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert str(bogus) in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out" / "result.json").exists()
