"""``ci-gate canary`` through the real CLI: a BadCLIP backdoor planted in a copy of the session's
clean CIFAR-10 model is caught with the right target, the user's checkpoint is never touched, and
bad input exits 2."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from conftest import OOD, require
from test_repair import write_class_folders

pytestmark = pytest.mark.slow

# neg_loss: see test_repair.GATE. poison_rate 0.5: on this tiny backbone the attack's own 0.2
# plants a backdoor of only ~20-40% held-out ASR, which the canary (rightly) calls inconclusive.
# the gate these tests were measured with: one 4/255 rung evaluated on the whole pool (the
# default before the blind ladder), neg_loss at k = 2, the canary planted at 4/255
GATE = ["--set", "pool.max_images=256", "--set", "inversion.epsilon=4/255", "--set", "inversion.eval_images=null", "--set", "detection.statistic=neg_loss", "--set", "detection.k=2", "--set", "canary.poison_rate=0.5", "--set", "canary.epsilon=4/255"]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _cli(capsys, *argv) -> tuple[int, str, str]:
    from ci_gate.cli import main

    with pytest.raises(SystemExit) as done:
        main([str(a) for a in argv])
    out = capsys.readouterr()
    return int(done.value.code or 0), out.out, out.err


@pytest.fixture(scope="module")
def user_data(cifar_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("canary-data") / "data"
    t = cifar_models.test
    write_class_folders(root, t.images, t.labels, t.class_names, 60)
    return root


@pytest.fixture(scope="module")
def user_model(cifar_models, tmp_path_factory):
    """A private copy of the clean model, so the hash check sees only what canary does to it."""
    path = tmp_path_factory.mktemp("canary-model") / "model.safetensors"
    path.write_bytes(cifar_models.clean.path.read_bytes())
    return path


def test_planted_backdoor_is_caught_with_the_right_target(user_model, user_data, tmp_path, capsys):
    require(OOD)
    before = _sha(user_model)
    siblings = sorted(p.name for p in user_model.parent.iterdir())
    out = tmp_path / "canary"
    code, stdout, err = _cli(capsys, "canary", user_model, "--data", user_data, "--pool", OOD, "--target", "ship", "--out", out, *GATE, "--quiet")
    assert code == 0, stdout + err
    assert "CAUGHT" in stdout
    report = json.loads((out / "canary.json").read_text())
    assert report["status"] == "caught" and report["passed"]
    assert report["planted_target"] == "ship" and report["predicted_target"] == "ship"
    assert report["planted_asr"] >= 0.5 and report["scan"]["verdict"] == "backdoor"
    assert json.loads((out / "scan" / "result.json").read_text())["target_class"] == "ship"
    # the user's file: same bytes, nothing written next to it, no backdoored copy left behind
    assert _sha(user_model) == before and report["checkpoint_unchanged"] and report["checkpoint_sha256"] == before
    assert sorted(p.name for p in user_model.parent.iterdir()) == siblings
    assert report["canary_model"] is None and not (out / "canary.safetensors").exists()


def test_a_backdoor_that_does_not_take_is_inconclusive(user_model, user_data, tmp_path, capsys):
    before = _sha(user_model)
    out = tmp_path / "canary"
    # one epoch at a tiny learning rate cannot plant anything: exit 1, and no scan is run
    code, _, err = _cli(capsys, "canary", user_model, "--data", user_data, "--pool", OOD, "--target", "ship", "--out", out, *GATE,
                        "--set", "canary.epochs=1", "--set", "canary.lr=1e-9", "--set", "canary.trigger_lr=1e-9",
                        "--set", "canary.epsilon=8/255", "--quiet")
    assert code == 1 and "INCONCLUSIVE" in err
    report = json.loads((out / "canary.json").read_text())
    assert report["status"] == "inconclusive"
    # BadCLIP's learned trigger is planted at the canary's own budget (the scan is not told it)
    assert report["settings"]["trigger"]["epsilon"] == pytest.approx(8 / 255)
    assert not (out / "scan").exists()
    assert _sha(user_model) == before


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--target", "unicorn"], "unicorn"),
        (["--attack", "nope"], "nope"),
        (["--attack", "encoder"], "encoder-level"),
    ],
)
def test_bad_options_exit_2(user_model, user_data, tmp_path, capsys, extra, needle):
    before = _sha(user_model)
    code, _, err = _cli(capsys, "canary", user_model, "--data", user_data, "--pool", OOD, "--out", tmp_path / "c", *GATE, *extra, "--quiet")
    assert code == 2 and needle in err and "Traceback" not in err
    assert _sha(user_model) == before and not (tmp_path / "c").exists()


def test_bad_data_folder_exits_2_naming_it(user_model, tmp_path, capsys):
    missing = tmp_path / "nowhere"
    code, _, err = _cli(capsys, "canary", user_model, "--data", missing, "--pool", OOD, "--out", tmp_path / "c", *GATE, "--quiet")
    assert code == 2 and str(missing) in err
    assert not (tmp_path / "c").exists()
