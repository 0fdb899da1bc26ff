"""``ci-gate repair`` through the real CLI on the session's CIFAR-10 models.

A planted BadCLIP backdoor is repaired: the ATTACKER'S trigger (which repair never sees) loses most
of its effect on test images the repair did not train on, and the repaired model passes the
gate again. A clean model is left alone; a repair that cannot pass the gate is refused and writes
nothing; bad clean-data folders are bad input (exit 2) that name the folder.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import OOD, require

pytestmark = pytest.mark.slow

CLEAN_PER_CLASS = 30  # the user's labeled clean set; the rest of the fixture's test split measures the real trigger
# neg_loss at k=2 pinned: the settings these tests were measured with (loss_drop leaves the
# fixture's 'cat' backdoor just under k=2 with 256 pool images); the repair tests need a gate that
# sees the backdoor whatever the default becomes.
# the gate these tests were measured with: one 4/255 rung evaluated on the whole pool (the
# default before the blind ladder), neg_loss at k = 2
GATE = ["--set", "pool.max_images=256", "--set", "inversion.epsilon=4/255", "--set", "inversion.eval_images=null", "--set", "detection.statistic=neg_loss", "--set", "detection.k=2", "--set", "repair.allowed=true"]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    from ci_gate.cli import main

    with pytest.raises(SystemExit) as done:
        main([str(a) for a in argv])
    out = capsys.readouterr()
    return int(done.value.code or 0), out.out, out.err


def write_class_folders(root: Path, images: torch.Tensor, labels: torch.Tensor, names: list[str], per_class: int) -> torch.Tensor:
    """First ``per_class`` images of each class as PNGs (lossless) in root/<class>/; returns the
    indices it used."""
    used = []
    for c, name in enumerate(names):
        idx = torch.nonzero(labels == c).flatten()[:per_class]
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in idx.tolist():
            arr = (images[i].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
            Image.fromarray(arr).save(root / name / f"{i:05d}.png")
        used.append(idx)
    return torch.cat(used)


@pytest.fixture(scope="module")
def clean_data(cifar_models, tmp_path_factory):
    test = cifar_models.test
    root = tmp_path_factory.mktemp("repair-clean") / "clean"
    used = write_class_folders(root, test.images, test.labels, test.class_names, CLEAN_PER_CLASS)
    rest = torch.ones(len(test), dtype=torch.bool)
    rest[used] = False
    return root, test.subset(torch.nonzero(rest).flatten())


@pytest.fixture(scope="module")
def repaired(cifar_models, cifar_published, clean_data, tmp_path_factory):
    require(OOD)
    out_dir = tmp_path_factory.mktemp("repaired")
    src = cifar_models.backdoored.path
    before = _sha(src)
    from ci_gate.cli import main

    code = None
    try:
        # 60 held-out images: one image is 1.7 points, so the 1-point default cannot be met by
        # construction; this test is about the backdoor, the accuracy rule has its own test.
        main(["repair", str(src), "--clean-data", str(clean_data[0]), "--out", str(out_dir / "repaired.safetensors"),
              "--pool", str(OOD), "--reference-weights", str(cifar_published), *GATE, "--set", "repair.max_clean_acc_drop=0.05", "--quiet"])
    except SystemExit as exc:
        code = exc.code
    assert _sha(src) == before, "repair modified its input"
    return code, out_dir


def test_backdoor_is_repaired_and_reverified(repaired, cifar_models):
    code, out_dir = repaired
    assert code in (0, None), f"exit {code}"
    summary = json.loads((out_dir / "repair.json").read_text())
    assert summary["status"] == "repaired"
    assert summary["verify"]["verdict"] == "backdoor" and summary["target_class"] == cifar_models.target
    last = summary["rounds"][-1]["reverify"]
    assert last["gate_passes"] and last["verdict"] == "clean"
    # the reconstructed trigger no longer works on held-out images
    assert summary["after"]["trigger_asr"] < 0.5 * summary["before"]["trigger_asr"]
    assert summary["before"]["clean_accuracy"] - summary["after"]["clean_accuracy"] <= 0.05 + 1e-9
    assert summary["output_sha256"] == _sha(out_dir / "repaired.safetensors")


def test_attackers_real_trigger_loses_its_effect(repaired, cifar_models, clean_data):
    from ci_gate.model import load_classifier
    from ci_gate.accuracy import clean_accuracy as accuracy
    from ci_gate.accuracy import trigger_asr as attack_success_rate

    _, out_dir = repaired
    _, held = clean_data  # test images the repair never saw
    bad = cifar_models.backdoored
    target = held.class_names.index(cifar_models.target)
    fixed = load_classifier(out_dir / "repaired.safetensors").classifier
    asr_before = attack_success_rate(bad.classifier, held, bad.trigger, target)
    asr_after = attack_success_rate(fixed, held, bad.trigger, target)
    assert asr_before >= 0.4, f"the fixture's backdoor is too weak to test repair ({asr_before:.1%})"
    assert asr_after < 0.5 * asr_before, (asr_before, asr_after)
    # "repaired" must not mean "broken": accuracy on the same images stays close
    assert accuracy(fixed, held) >= accuracy(bad.classifier, held) - 0.05


def test_repaired_checkpoint_records_its_parent_and_the_repair(repaired, cifar_models):
    from ci_gate.checkpoint.format import load_checkpoint

    _, out_dir = repaired
    ckpt = load_checkpoint(out_dir / "repaired.safetensors")
    prov = ckpt.meta.provenance
    assert prov["producer"] == "ci-gate repair"
    assert prov["parent"]["sha256"] == cifar_models.backdoored.sha256
    assert prov["repair"]["settings"]["epochs"] >= 1 and prov["repair"]["settings"]["max_clean_acc_drop"] == 0.05
    assert prov["repair"]["summary"]["target_class"] == cifar_models.target
    assert prov["repair"]["summary"]["rounds"][-1]["reverify"]["verdict"] == "clean"
    # only the prompt learner changed
    parent = load_checkpoint(cifar_models.backdoored.path)
    assert set(ckpt.backbone_tensors) == set(parent.backbone_tensors)
    assert all(torch.equal(ckpt.backbone_tensors[k], parent.backbone_tensors[k]) for k in parent.backbone_tensors)
    assert not torch.equal(ckpt.learner_tensors["ctx"], parent.learner_tensors["ctx"])


def test_clean_model_is_left_alone(cifar_models, cifar_published, clean_data, tmp_path, capsys):
    require(OOD)
    out = tmp_path / "out" / "repaired.safetensors"
    code, stdout, _ = _cli(capsys, "repair", cifar_models.clean.path, "--clean-data", clean_data[0], "--out", out, "--pool", OOD, "--reference-weights", cifar_published, *GATE, "--quiet")
    assert code == 0
    assert "nothing to repair" in stdout
    # no copy: a file at --out would read as "repaired" to the action and to reviewers
    assert not out.exists() and not (out.parent / "repair.json").exists()


def test_repair_that_does_not_pass_the_gate_is_refused_and_writes_nothing(cifar_models, cifar_published, clean_data, tmp_path, capsys):
    require(OOD)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "repaired.safetensors").write_bytes(b"previous")  # an earlier artifact must survive a refusal
    # a learning rate that cannot move the learner: the re-scan still finds the backdoor
    code, _, err = _cli(capsys, "repair", cifar_models.backdoored.path, "--clean-data", clean_data[0], "--out", out_dir / "repaired.safetensors",
                        "--pool", OOD, "--reference-weights", cifar_published, *GATE, "--set", "repair.lr=1e-9", "--set", "repair.epochs=1", "--set", "repair.rounds=1", "--quiet")
    assert code == 1, err
    assert "refused" in err and "still fails verification" in err
    assert sorted(p.name for p in out_dir.iterdir()) == ["repaired.safetensors"]
    assert (out_dir / "repaired.safetensors").read_bytes() == b"previous"


def _bad_input(capsys, checkpoint, clean, out, *extra):
    return _cli(capsys, "repair", checkpoint, "--clean-data", clean, "--out", out, "--pool", OOD, *GATE, *extra, "--quiet")


def test_missing_clean_data_folder_is_bad_input(cifar_models, tmp_path, capsys):
    missing = tmp_path / "no-such-folder"
    code, _, err = _bad_input(capsys, cifar_models.backdoored.path, missing, tmp_path / "o" / "r.safetensors")
    assert code == 2 and str(missing) in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_empty_clean_data_folder_is_bad_input(cifar_models, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = _bad_input(capsys, cifar_models.backdoored.path, empty, tmp_path / "o" / "r.safetensors")
    assert code == 2 and str(empty) in err
    assert not (tmp_path / "o").exists()


def test_wrong_class_names_are_bad_input(cifar_models, clean_data, tmp_path, capsys):
    wrong = tmp_path / "wrong"
    test = cifar_models.test
    names = [("kitten" if n == "cat" else n) for n in test.class_names]
    write_class_folders(wrong, test.images, test.labels, names, 2)
    code, _, err = _bad_input(capsys, cifar_models.backdoored.path, wrong, tmp_path / "o" / "r.safetensors")
    assert code == 2 and str(wrong) in err and "cat" in err
    assert not (tmp_path / "o").exists()


def test_class_folder_without_images_is_named(cifar_models, tmp_path, capsys):
    root = tmp_path / "sparse"
    test = cifar_models.test
    write_class_folders(root, test.images, test.labels, test.class_names, 2)
    for f in (root / "cat").iterdir():
        f.unlink()
    code, _, err = _bad_input(capsys, cifar_models.backdoored.path, root, tmp_path / "o" / "r.safetensors")
    assert code == 2 and str(root / "cat") in err
    assert not (tmp_path / "o").exists()


def test_policy_must_allow_repair_and_output_must_not_be_the_input(cifar_models, clean_data, tmp_path, capsys):
    src = cifar_models.backdoored.path
    before = _sha(src)
    code, _, err = _cli(capsys, "repair", src, "--clean-data", clean_data[0], "--out", tmp_path / "r.safetensors", "--policy", "default", "--pool", OOD, "--quiet")
    assert code == 2 and "repair.allowed" in err
    code, _, err = _bad_input(capsys, src, clean_data[0], src)
    assert code == 2 and "is the input checkpoint" in err and "inputs are never modified" in err
    assert _sha(src) == before


def test_benchmark_measures_what_the_cli_does(repaired, cifar_models, cifar_published, clean_data):
    """``bench repair``'s ``reconstructed`` variant runs the CLI's own repair rounds: same seed,
    same data, same gate -> the same re-verification and the same repaired learner."""
    from ci_gate.data import load_labeled_folder
    from ci_gate.policy import load_policy
    from ci_gate.repair.core import split_holdout
    from ci_gate.repair.evaluate import evaluate_repair

    code, out_dir = repaired
    assert code in (0, None)
    summary = json.loads((out_dir / "repair.json").read_text())
    policy, _ = load_policy("default", overrides=[g for g in GATE if g != "--set"] + ["repair.max_clean_acc_drop=0.05"])
    bad = cifar_models.backdoored
    names = list(cifar_models.test.class_names)
    data = load_labeled_folder(clean_data[0], 32, class_names=names)
    train, _ = split_holdout(data, policy.repair.holdout, policy.seed)  # the CLI trains on this part
    _, held = clean_data
    target = names.index(cifar_models.target)
    ev = evaluate_repair(bad.path, bad.trigger, target, train, held, str(OOD), policy, variants=("reconstructed", "clean_only"), reference_weights=cifar_published)
    assert ev.detected and ev.target_correct
    rec, clean_only = ev.variants
    assert rec.reverify["gate_passes"] and rec.reverify["rounds"] == len(summary["rounds"])
    assert rec.reverify["triggers"] == summary["rounds"][-1]["triggers"]
    assert rec.after.real_asr < 0.5 * ev.before.real_asr
    assert rec.after.real_asr < clean_only.after.real_asr  # the trigger, not the extra steps, does it
    # same process, same thread count: the re-scans of the two repaired learners agree
    cli_scan = summary["rounds"][-1]["reverify"]
    assert max(c["anomaly"] for c in rec.reverify["classes"].values()) == pytest.approx(cli_scan["max_anomaly"], abs=1e-4)
    assert rec.reverify["target_class"] == cli_scan["target_class"]
