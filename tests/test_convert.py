"""``ci-gate convert``: Dassl CoOp/CoCoOp files -> ci-gate checkpoints, and every refusal on the way.

The Dassl files are fabricated the way Dassl writes them (torch.save of a dict with an fp16
``state_dict``), with prompt tokens computed by CoOp's own recipe from the tiny backbone's token
embedding, written here independently of ci-gate's PromptTokens.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from ci_gate.checkpoint.format import OPENAI_MEAN, OPENAI_STD, load_checkpoint
from ci_gate.cli import main
from ci_gate.errors import InputError
from ci_gate.io import sha256_file
from ci_gate.model.factory import build_classifier, load_classifier
from ci_gate.learners.cocoop import CoCoOp
from ci_gate.learners.coop import CoOp
from ci_gate.model.small import embedded_backbone, random_clip_state, small_config

TINY = small_config("tiny-32")
NAMES = ["cat", "dog", "golden_retriever", "traffic light"]
N_CTX = 4
WIDTH = TINY["text_cfg"]["width"]
VIS = TINY["embed_dim"]


@dataclass(frozen=True)
class Tiny:
    state: dict[str, torch.Tensor]
    weights: Path
    other_weights: Path  # same architecture, different training: a different backbone
    config: Path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Tiny:
    root = tmp_path_factory.mktemp("backbone")
    state = random_clip_state(TINY, seed=0)
    save_file(state, str(root / "tiny.safetensors"))
    torch.save(random_clip_state(TINY, seed=1), root / "other.pt")
    (root / "tiny.json").write_text(json.dumps(TINY))
    return Tiny(state, root / "tiny.safetensors", root / "other.pt", root / "tiny.json")


def dassl_state(state: dict[str, torch.Tensor], names: list[str], kind: str = "coop", seed: int = 0, init: str | None = None) -> dict:
    """CoOp/CoCoOp PromptLearner.state_dict() in fp16, as Dassl saves it."""
    tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=77)
    prefix_text = init or " ".join(["X"] * N_CTX)
    tokens = tokenizer([f"{prefix_text} {n.replace('_', ' ')}." for n in names])
    embedding = F.embedding(tokens, state["token_embedding.weight"]).half()
    gen = torch.Generator().manual_seed(seed)
    sd = {
        "ctx": (torch.randn(N_CTX, WIDTH, generator=gen) * 0.02).half(),
        "token_prefix": embedding[:, :1].clone(),
        "token_suffix": embedding[:, 1 + N_CTX :].clone(),
    }
    if kind == "cocoop":
        sd["meta_net.linear1.weight"] = (torch.randn(VIS // 16, VIS, generator=gen) * 0.1).half()
        sd["meta_net.linear1.bias"] = (torch.randn(VIS // 16, generator=gen) * 0.1).half()
        sd["meta_net.linear2.weight"] = (torch.randn(WIDTH, VIS // 16, generator=gen) * 0.1).half()
        sd["meta_net.linear2.bias"] = (torch.randn(WIDTH, generator=gen) * 0.1).half()
    return sd


def write_dassl(path: Path, sd: dict, **extra) -> Path:
    torch.save({"state_dict": sd, "epoch": 10, "optimizer": None, **extra}, path)
    return path


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(["convert", *args])
    captured = capsys.readouterr()
    return int(exit_info.value.code or 0), captured.out, captured.err


def backbone_args(tiny: Tiny, weights: Path | None = None) -> list[str]:
    return ["--config", str(tiny.config), "--backbone-weights", str(weights or tiny.weights)]


def reference_classifier(tiny: Tiny, sd: dict, kind: str):
    """What the converted file must reproduce: the same fp16 tensors on the same backbone, built directly."""
    _, backbone = embedded_backbone(TINY, tiny.state)
    learner = CoCoOp(sd["ctx"].float(), VIS) if kind == "cocoop" else CoOp(sd["ctx"].float())
    if kind == "cocoop":
        learner.meta_net.load_state_dict({k[len("meta_net.") :]: v.float() for k, v in sd.items() if k.startswith("meta_net.")})
    return build_classifier(backbone, kind, learner, NAMES, N_CTX, 32, OPENAI_MEAN, OPENAI_STD).eval()


@pytest.mark.parametrize("kind", ["coop", "cocoop"])
def test_conversion_round_trips_to_the_same_logits(tiny, tmp_path, capsys, kind) -> None:
    sd = dassl_state(tiny.state, NAMES, kind)
    src = write_dassl(tmp_path / "model.pth.tar-10", sd)
    out = tmp_path / "model.safetensors"
    code, stdout, stderr = run_cli(capsys, str(src), "--classes", ",".join(NAMES), *backbone_args(tiny), "--out", str(out))
    assert code == 0, stderr
    digest, printed = stdout.split()
    assert Path(printed) == out and digest == sha256_file(out)

    loaded = load_classifier(out, weights=tiny.weights)
    assert loaded.checkpoint.meta.learner.kind == kind  # detected, not told
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(loaded.classifier.eval()(images), reference_classifier(tiny, sd, kind)(images), rtol=1e-5, atol=1e-5)


def test_metadata_records_backbone_preprocessing_and_provenance(tiny, tmp_path, capsys) -> None:
    sd = dassl_state(tiny.state, NAMES)
    src = write_dassl(tmp_path / "model.pth.tar-10", sd)
    names_file = tmp_path / "names.txt"
    names_file.write_text("\n".join(NAMES) + "\n\n")
    out = tmp_path / "m.safetensors"
    code, _, stderr = run_cli(capsys, str(src), "--classes", str(names_file), *backbone_args(tiny), "--out", str(out), "--ctx-init", "a photo of a")
    assert code == 0, stderr
    ckpt = load_checkpoint(out)
    meta = ckpt.meta
    assert meta.learner.class_names == NAMES and meta.learner.n_ctx == N_CTX and meta.learner.ctx_init == "a photo of a"
    assert meta.backbone.config == TINY and meta.backbone.architecture is None
    assert meta.backbone.pretrained == "tiny.safetensors" and meta.backbone.sha256 == sha256_file(tiny.weights)
    assert meta.backbone.quick_gelu is False and not meta.backbone.embedded
    assert meta.preprocessing.image_size == 32 and meta.preprocessing.mean == OPENAI_MEAN and meta.preprocessing.std == OPENAI_STD
    assert meta.provenance["converted_from"] == "model.pth.tar-10"
    assert meta.provenance["source_sha256"] == sha256_file(src) and meta.provenance["source_epoch"] == 10
    assert set(ckpt.learner_tensors) == {"ctx"} and ckpt.learner_tensors["ctx"].dtype == torch.float16
    assert torch.equal(ckpt.learner_tensors["ctx"], sd["ctx"])


def test_converted_checkpoint_pins_the_backbone_weights(tiny, tmp_path, capsys) -> None:
    src = write_dassl(tmp_path / "model.pth.tar-10", dassl_state(tiny.state, NAMES))
    out = tmp_path / "m.safetensors"
    assert run_cli(capsys, str(src), "--classes", ",".join(NAMES), *backbone_args(tiny), "--out", str(out))[0] == 0
    with pytest.raises(InputError, match="does not match the pinned"):
        load_classifier(out, weights=tiny.other_weights)


def test_openai_format_weights_record_quick_gelu(tiny, tmp_path, capsys) -> None:
    weights = tmp_path / "tiny-openai.pt"
    markers = {"input_resolution": torch.tensor(32), "context_length": torch.tensor(77), "vocab_size": torch.tensor(49408)}
    torch.save({**tiny.state, **markers}, weights)
    src = write_dassl(tmp_path / "model.pth.tar-10", dassl_state(tiny.state, NAMES))
    out = tmp_path / "m.safetensors"
    code, _, stderr = run_cli(capsys, str(src), "--classes", ",".join(NAMES), *backbone_args(tiny, weights), "--out", str(out))
    assert code == 0 and "note: OpenAI weights detected" in stderr
    meta = load_checkpoint(out).meta
    assert meta.backbone.quick_gelu is True and "QuickGELU" in meta.provenance["notes"][0]
    assert load_classifier(out, weights=weights).backbone.quick_gelu is True


def test_embedded_backbone_loads_without_weights(tiny, tmp_path, capsys) -> None:
    sd = dassl_state(tiny.state, NAMES, "cocoop")
    src = write_dassl(tmp_path / "model.pth.tar-10", sd)
    out = tmp_path / "m.safetensors"
    code, _, stderr = run_cli(capsys, str(src), "--classes", ",".join(NAMES), *backbone_args(tiny), "--embed-backbone", "--out", str(out))
    assert code == 0, stderr
    loaded = load_classifier(out)
    assert loaded.checkpoint.meta.backbone.embedded
    assert loaded.checkpoint.meta.provenance["backbone_weights_sha256"] == sha256_file(tiny.weights)
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(loaded.classifier.eval()(images), reference_classifier(tiny, sd, "cocoop")(images), rtol=1e-5, atol=1e-5)


def test_input_is_never_modified_and_output_is_deterministic(tiny, tmp_path, capsys) -> None:
    src = write_dassl(tmp_path / "model.pth.tar-10", dassl_state(tiny.state, NAMES))
    before = (sha256_file(src), os.stat(src).st_mtime_ns)
    digests = []
    for name in ("a.safetensors", "b.safetensors"):
        code, stdout, _ = run_cli(capsys, str(src), "--classes", ",".join(NAMES), *backbone_args(tiny), "--out", str(tmp_path / name))
        assert code == 0
        digests.append(stdout.split()[0])
    assert digests[0] == digests[1]
    assert (sha256_file(src), os.stat(src).st_mtime_ns) == before
    code, _, stderr = run_cli(capsys, str(src), "--classes", ",".join(NAMES), *backbone_args(tiny), "--out", str(src))
    assert code == 2 and "safetensors" in stderr


def test_wrong_class_name_is_named(tiny, tmp_path, capsys) -> None:
    src = write_dassl(tmp_path / "model.pth.tar-10", dassl_state(tiny.state, NAMES))
    wrong = ["cat", "dog", "labrador", "traffic light"]
    code, _, stderr = run_cli(capsys, str(src), "--classes", ",".join(wrong), *backbone_args(tiny), "--out", str(tmp_path / "m.safetensors"))
    assert code == 2
    assert "'labrador' (#3)" in stderr and str(src) in stderr
    assert "Traceback" not in stderr
    assert not (tmp_path / "m.safetensors").exists()


def test_swapped_class_order_is_explained(tiny, tmp_path, capsys) -> None:
    src = write_dassl(tmp_path / "model.pth.tar-10", dassl_state(tiny.state, NAMES))
    swapped = ["dog", "cat", "golden_retriever", "traffic light"]
    code, _, stderr = run_cli(capsys, str(src), "--classes", ",".join(swapped), *backbone_args(tiny), "--out", str(tmp_path / "m.safetensors"))
    assert code == 2 and "'dog' (#1)" in stderr and "matches 'cat'" in stderr


def test_wrong_number_of_class_names(tiny, tmp_path, capsys) -> None:
    src = write_dassl(tmp_path / "model.pth.tar-10", dassl_state(tiny.state, NAMES))
    code, _, stderr = run_cli(capsys, str(src), "--classes", "cat,dog", *backbone_args(tiny), "--out", str(tmp_path / "m.safetensors"))
    assert code == 2 and "2 class names given" in stderr and "4 classes" in stderr


def test_duplicate_class_names(tiny, tmp_path, capsys) -> None:
    src = write_dassl(tmp_path / "model.pth.tar-10", dassl_state(tiny.state, NAMES))
    code, _, stderr = run_cli(capsys, str(src), "--classes", "cat,dog,cat,wolf", *backbone_args(tiny), "--out", str(tmp_path / "m.safetensors"))
    assert code == 2 and "unique" in stderr


def test_different_backbone_is_refused(tiny, tmp_path, capsys) -> None:
    src = write_dassl(tmp_path / "model.pth.tar-10", dassl_state(tiny.state, NAMES))
    args = backbone_args(tiny, weights=tiny.other_weights)
    code, _, stderr = run_cli(capsys, str(src), "--classes", ",".join(NAMES), *args, "--out", str(tmp_path / "m.safetensors"))
    assert code == 2 and "different backbone" in stderr


def _csc(sd: dict, seed: int = 1) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {**sd, "ctx": (torch.randn(len(NAMES), N_CTX, WIDTH, generator=gen) * 0.02).half()}


@pytest.fixture(scope="module")
def tiny_backbone(tiny):
    return embedded_backbone(TINY, tiny.state)[1]


def _reference_logits(backbone, sd: dict, position: str, images: torch.Tensor) -> torch.Tensor:
    """The reference implementation's construct_prompts (tests/coop_reference.py), not ci-gate's."""
    import coop_reference

    return coop_reference.logits(backbone.clip, backbone.tokenizer, NAMES, sd["ctx"].float(), position, images, OPENAI_MEAN, OPENAI_STD)


@pytest.mark.parametrize(("csc", "position"), [(True, "end"), (False, "front"), (True, "middle")], ids=["csc", "front", "csc-middle"])
def test_coop_variants_convert_to_the_reference_logits(tiny, tiny_backbone, tmp_path, capsys, csc, position) -> None:
    # CSC is read off the 3-D ctx; the class token position is a training setting Dassl does not
    # store (its token_prefix/suffix are the same for every position), so the user states it
    sd = dassl_state(tiny.state, NAMES)
    sd = _csc(sd) if csc else sd
    src = write_dassl(tmp_path / "model.pth.tar-10", sd)
    out = tmp_path / "m.safetensors"
    stated = [] if position == "end" else ["--learner-option", f"class_token_position={position}"]
    code, _, stderr = run_cli(capsys, str(src), "--classes", ",".join(NAMES), *backbone_args(tiny), *stated, "--out", str(out))
    assert code == 0, stderr
    meta = load_checkpoint(out).meta
    assert meta.learner.kind == "coop" and meta.learner.options == {"csc": csc, "class_token_position": position}
    assert meta.provenance.get("learner_options_stated") == ({"class_token_position": position} if stated else None)
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = load_classifier(out, weights=tiny.weights).classifier.eval()(images)
    torch.testing.assert_close(got, _reference_logits(tiny_backbone, sd, position, images), rtol=0, atol=2e-5)
    if position != "end":  # the stated position matters: the end layout gives other logits
        assert (got - _reference_logits(tiny_backbone, sd, "end", images)).abs().max() > 1e-3


def test_class_specific_context_is_refused_for_cocoop(tiny, tmp_path, capsys) -> None:
    src = write_dassl(tmp_path / "model.pth.tar-10", _csc(dassl_state(tiny.state, NAMES, "cocoop")))
    code, _, stderr = run_cli(capsys, str(src), "--classes", ",".join(NAMES), *backbone_args(tiny), "--out", str(tmp_path / "m.safetensors"))
    assert code == 2 and "class-specific context" in stderr and "CoCoOp" in stderr
    assert not (tmp_path / "m.safetensors").exists()


@pytest.mark.parametrize(
    ("kind", "csc", "options", "needle"),
    [
        ("coop", False, ["class_token_position=middel"], "class_token_position=middel: Input should be 'end', 'middle' or 'front'"),
        ("coop", False, ["depth=3"], "depth: CoOp has no such option (its options are csc, class_token_position)"),
        ("coop", True, ["csc=false"], "csc=false, but the checkpoint's tensors give csc=true"),
        ("coop", False, ["csc=true"], "csc=true, but the checkpoint's tensors give csc=false"),
        ("coop", False, ["class_token_position"], "'class_token_position' is not KEY=VALUE"),
        ("coop", False, ["csc=false", "csc=false"], "csc given twice"),
        ("cocoop", False, ["class_token_position=front"], "CoCoOp has no class_token_position setting"),
    ],
    ids=["bad-value", "unknown-key", "contradicts-csc", "contradicts-shared", "no-value", "twice", "cocoop"],
)
def test_learner_options_are_validated_by_the_learner(tiny, tmp_path, capsys, kind, csc, options, needle) -> None:
    sd = dassl_state(tiny.state, NAMES, kind)
    src = write_dassl(tmp_path / "model.pth.tar-10", _csc(sd) if csc else sd)
    flags = [arg for option in options for arg in ("--learner-option", option)]
    code, _, stderr = run_cli(capsys, str(src), "--classes", ",".join(NAMES), *backbone_args(tiny), *flags, "--out", str(tmp_path / "m.safetensors"))
    assert code == 2 and stderr.startswith("ci-gate: error: --learner-option: ") and needle in stderr, stderr
    assert not (tmp_path / "m.safetensors").exists()


def test_explicit_kind_must_match_the_tensors(tiny, tmp_path, capsys) -> None:
    src = write_dassl(tmp_path / "model.pth.tar-10", dassl_state(tiny.state, NAMES, "cocoop"))
    code, _, stderr = run_cli(capsys, str(src), "--classes", ",".join(NAMES), *backbone_args(tiny), "--kind", "coop", "--out", str(tmp_path / "m.safetensors"))
    assert code == 2 and "meta-net" in stderr


def test_ctx_init_must_have_n_ctx_tokens(tiny, tmp_path, capsys) -> None:
    src = write_dassl(tmp_path / "model.pth.tar-10", dassl_state(tiny.state, NAMES))
    code, _, stderr = run_cli(capsys, str(src), "--classes", ",".join(NAMES), *backbone_args(tiny), "--ctx-init", "a photo", "--out", str(tmp_path / "m.safetensors"))
    assert code == 2 and "n_ctx=4" in stderr


class _Payload:
    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (os.mkdir, (str(self.target),))


def test_pickled_code_is_refused_and_never_runs(tiny, tmp_path, capsys) -> None:
    marker = tmp_path / "payload-ran"
    src = write_dassl(tmp_path / "model.pth.tar-10", dassl_state(tiny.state, NAMES), optimizer=_Payload(marker))
    code, _, stderr = run_cli(capsys, str(src), "--classes", ",".join(NAMES), *backbone_args(tiny), "--out", str(tmp_path / "m.safetensors"))
    assert code == 2 and "refused" in stderr and "mkdir" in stderr
    assert not marker.exists()


def _fake_dassl_module() -> types.ModuleType:
    """Dassl's ConstantWarmupScheduler, importable only while the test file is written."""
    from torch.optim.lr_scheduler import LRScheduler

    module = types.ModuleType("dassl.optim.lr_scheduler")

    class ConstantWarmupScheduler(LRScheduler):
        def __init__(self, optimizer, successor, warmup_epoch, cons_lr):
            self.successor, self.warmup_epoch, self.cons_lr = successor, warmup_epoch, cons_lr
            super().__init__(optimizer)

        def get_lr(self):
            return [self.cons_lr for _ in self.base_lrs]

    ConstantWarmupScheduler.__module__ = module.__name__
    module.ConstantWarmupScheduler = ConstantWarmupScheduler
    return module


def test_real_dassl_training_state_is_read_without_importing_it(tiny, tmp_path, capsys, monkeypatch) -> None:
    # Dassl's warmup scheduler pickles its successor scheduler object, and through it the SGD
    # optimizer (defaultdict state): plain weights_only refuses such files.
    sd = dassl_state(tiny.state, NAMES)
    ctx = torch.nn.Parameter(sd["ctx"].float())
    optimizer = torch.optim.SGD([ctx], lr=0.002, momentum=0.9)
    module = _fake_dassl_module()
    monkeypatch.setitem(sys.modules, module.__name__, module)
    scheduler = module.ConstantWarmupScheduler(optimizer, torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, 50), 1, 1e-5)
    ctx.sum().backward()
    optimizer.step()
    scheduler.step()
    src = write_dassl(tmp_path / "model.pth.tar-50", sd, optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(), val_result=None)
    monkeypatch.delitem(sys.modules, module.__name__)
    with pytest.raises(Exception):
        torch.load(src, weights_only=True)  # the case this converter has to handle

    code, _, stderr = run_cli(capsys, str(src), "--classes", ",".join(NAMES), *backbone_args(tiny), "--out", str(tmp_path / "m.safetensors"))
    assert code == 0, stderr
    assert "dassl.optim.lr_scheduler" not in sys.modules


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_torchscript_input_is_refused(tiny, tmp_path, capsys) -> None:
    src = tmp_path / "model.pth.tar-10"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(src))
    code, _, stderr = run_cli(capsys, str(src), "--classes", ",".join(NAMES), *backbone_args(tiny), "--out", str(tmp_path / "m.safetensors"))
    assert code == 2 and "TorchScript" in stderr


@pytest.mark.parametrize(
    ("mutate_args", "expected"),
    [
        (lambda a, t: a + ["--arch", "ViT-B-16"], "exactly one of --arch and --config"),
        (lambda a, t: [x for x in a if x not in ("--backbone-weights", str(t.weights))], "--backbone-weights"),
        (lambda a, t: a[:1] + [str(t.config) + ".missing"] + a[2:], "model config not found"),
        (lambda a, t: ["--arch", "No-Such-Arch", "--backbone-weights", str(t.weights)], "unknown open_clip architecture"),
    ],
)
def test_backbone_argument_errors(tiny, tmp_path, capsys, mutate_args, expected) -> None:
    src = write_dassl(tmp_path / "model.pth.tar-10", dassl_state(tiny.state, NAMES))
    args = mutate_args(backbone_args(tiny), tiny)
    code, _, stderr = run_cli(capsys, str(src), "--classes", ",".join(NAMES), *args, "--out", str(tmp_path / "m.safetensors"))
    assert code == 2 and expected in stderr, stderr


def test_missing_or_garbage_input(tiny, tmp_path, capsys) -> None:
    common = ["--classes", ",".join(NAMES), *backbone_args(tiny), "--out", str(tmp_path / "m.safetensors")]
    code, _, stderr = run_cli(capsys, str(tmp_path / "nope.pth.tar"), *common)
    assert code == 2 and "not found" in stderr
    garbage = tmp_path / "garbage.pth.tar"
    garbage.write_bytes(b"\x00not a torch file" * 10)
    code, _, stderr = run_cli(capsys, str(garbage), *common)
    assert code == 2 and str(garbage) in stderr


def test_end_to_end_subprocess_error_has_no_traceback(tiny, tmp_path) -> None:
    src = write_dassl(tmp_path / "model.pth.tar-10", dassl_state(tiny.state, NAMES))
    cmd = [sys.executable, "-m", "ci_gate", "convert", str(src), "--classes", "cat,dog,wolf,traffic light", *backbone_args(tiny), "--out", str(tmp_path / "m.safetensors")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 2
    assert "'wolf' (#3)" in proc.stderr and "Traceback" not in proc.stderr
