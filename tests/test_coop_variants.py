"""CoOp's class-specific context (CSC) and class token positions middle/front (issue 17, item 5).

ci-gate's logits are compared with tests/coop_reference.py, the reference implementation's
construct_prompts rewritten independently (full 77-token prompts, one class at a time), on the
fast path (text truncated at the longest EOS, cached) and on ``running(fast=False)``; mutants of
the reference (another half split, a name counted with its '.', classes' contexts swapped) show
the comparison is tight enough to see a wrong layout. Then the header-only checks, the refusal of
extra candidate classes for CSC, CoCoOp's refusal of both options and the ONNX export.
"""

from __future__ import annotations

import pytest
import torch

from ci_gate.bench.speed_run import random_pool
from ci_gate.checkpoint.format import MAX_CTX_WIDTH, OPENAI_MEAN, OPENAI_STD, CheckpointMeta, LearnerSpec, Preprocessing, load_checkpoint, save_checkpoint
from ci_gate.errors import InputError
from ci_gate.learners import learner_class
from ci_gate.model.factory import build_classifier, load_classifier, new_learner
from ci_gate.model.small import embedded_backbone, random_clip_state, small_config

import coop_reference

pytestmark = pytest.mark.usefixtures("one_thread")

# 1 to 8 name tokens; "st. bernard" has a '.' inside, "yahoo!" ends in punctuation that merges with
# the prompt's '.' (2 tokens alone, 2 with it), so name_lens is not "tokens up to the '.'"
NAMES = ["cat", "golden_retriever", "traffic light", "st. bernard", "hot-air balloon", "yahoo!", "crème brûlée"]
N_CTX = 3  # odd: n_ctx // 2 differs from the other rounding
ATOL = 2e-5  # logits are ~3; float32 rounding differences measured ~1e-6
VARIANTS = [(csc, pos) for csc in (False, True) for pos in ("end", "middle", "front")]


def _id(variant) -> str:
    csc, pos = variant
    return f"{'csc' if csc else 'shared'}-{pos}"


@pytest.fixture(scope="module")
def backbone():
    cfg = small_config("tiny-32")
    state = random_clip_state(cfg, 0)
    spec, bb = embedded_backbone(cfg, state)
    return spec, bb, state


@pytest.fixture(scope="module")
def images():
    return random_pool(8, 32, seed=1)


def _spec(csc: bool, position: str, names=NAMES) -> LearnerSpec:
    return LearnerSpec(kind="coop", class_names=names, n_ctx=N_CTX, ctx_init=None, options={"csc": csc, "class_token_position": position})


def _classifier(bb, learner, names=NAMES):
    return build_classifier(bb, "coop", learner, names, N_CTX, 32, OPENAI_MEAN, OPENAI_STD).eval().freeze()


@pytest.fixture(scope="module", params=VARIANTS, ids=_id)
def model(request, backbone):
    csc, position = request.param
    bb = backbone[1]
    learner = new_learner(bb, _spec(csc, position), seed=1)
    return csc, position, learner, _classifier(bb, learner)


def _reference(bb, learner, position, images, **mutant):
    return coop_reference.logits(bb.clip, bb.tokenizer, NAMES, learner.ctx.detach(), position, images, OPENAI_MEAN, OPENAI_STD, **mutant)


def _ours(clf, images, fast: bool):
    with clf.running(fast=fast), torch.no_grad():
        return clf(images)


def test_options_build_the_learner_they_name(model):
    csc, position, learner, clf = model
    assert learner.csc == csc and tuple(learner.ctx.shape[:-1]) == ((len(NAMES), N_CTX) if csc else (N_CTX,))
    assert clf.prompts.class_token_position == position


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "full"])
def test_logits_equal_the_reference_construct_prompts(backbone, images, model, fast):
    _, position, learner, clf = model
    want = _reference(backbone[1], learner, position, images)
    assert want.std() > 0.1  # not a degenerate model
    if fast:  # truncated at the longest EOS, which no layout moves
        eos = torch.tensor([len(backbone[1].tokenizer.encode(n.replace("_", " ") + ".")) + N_CTX + 1 for n in NAMES])
        assert clf.text_length() == int(eos.max()) + 1 < clf.text.context_length
        assert torch.equal(clf.prompts.eos_index, eos)
    torch.testing.assert_close(_ours(clf, images, fast), want, atol=ATOL, rtol=0)


def test_positions_and_csc_change_the_logits(backbone, images):
    # the variants are not one model under several names: same ctx values, other layouts
    bb = backbone[1]
    shared = new_learner(bb, _spec(False, "end"), seed=1)
    outs = {}
    for position in ("end", "middle", "front"):
        learner = learner_class("coop").from_tensors(bb, _spec(False, position), shared.named_tensors())
        outs[position] = _ours(_classifier(bb, learner), images, True)
    assert (outs["end"] - outs["middle"]).abs().max() > 100 * ATOL
    assert (outs["end"] - outs["front"]).abs().max() > 100 * ATOL
    assert (outs["middle"] - outs["front"]).abs().max() > 100 * ATOL


def _assert_caught(ours, mutant):
    with pytest.raises(AssertionError):
        torch.testing.assert_close(ours, mutant, atol=ATOL, rtol=0)
    assert (ours - mutant).abs().max() > 100 * ATOL


@pytest.mark.parametrize("csc", [False, True], ids=["shared", "csc"])
def test_mutants_of_the_layout_are_caught(backbone, images, csc):
    bb = backbone[1]
    learner = new_learner(bb, _spec(csc, "middle"), seed=1)
    ours = _ours(_classifier(bb, learner), images, True)
    torch.testing.assert_close(ours, _reference(bb, learner, "middle", images), atol=ATOL, rtol=0)
    # the half split rounded up instead of down
    _assert_caught(ours, _reference(bb, learner, "middle", images, half=(N_CTX + 1) // 2))
    # the name counted up to and including the prompt's '.'
    lens = [len(bb.tokenizer.encode(n.replace("_", " ") + ".")) for n in NAMES]
    _assert_caught(ours, _reference(bb, learner, "middle", images, name_lens=lens))
    front = learner_class("coop").from_tensors(bb, _spec(csc, "front"), learner.named_tensors())
    ours_front = _ours(_classifier(bb, front), images, True)
    lens = [len(bb.tokenizer.encode(n.replace("_", " "))) - 1 for n in NAMES]  # one name token short
    _assert_caught(ours_front, _reference(bb, front, "front", images, name_lens=lens))
    if csc:  # each class must get its own context, in class order
        swapped = learner.ctx.detach()[[1, 0, *range(2, len(NAMES))]]
        mutant = coop_reference.logits(bb.clip, bb.tokenizer, NAMES, swapped, "middle", images, OPENAI_MEAN, OPENAI_STD)
        _assert_caught(ours, mutant)


def test_csc_tuning_gradients_equal_the_full_path(backbone, images):
    # prompt tuning (repair, canary) trains the per-class contexts through the fast path
    bb = backbone[1]
    learner = new_learner(bb, _spec(True, "middle"), seed=2)
    clf = _classifier(bb, learner)
    labels = torch.arange(images.shape[0]) % len(NAMES)

    def grad(fast: bool) -> torch.Tensor:
        clf.invalidate_cache()
        learner.ctx.requires_grad_(True)
        try:
            with clf.running(fast=fast):
                loss = torch.nn.functional.cross_entropy(clf(images), labels)
                return torch.autograd.grad(loss, [learner.ctx])[0]
        finally:
            learner.ctx.requires_grad_(False)
            clf.freeze()

    ref, fast = grad(False), grad(True)
    assert ref.abs().amax(dim=(1, 2)).min() > 0  # every class's context is trained
    torch.testing.assert_close(fast, ref, atol=1e-5 * float(ref.abs().max()), rtol=1e-4)


def test_fresh_csc_context_is_seeded_and_ctx_init_starts_every_class(backbone):
    bb = backbone[1]
    a, b = (new_learner(bb, _spec(True, "end"), seed=s).ctx for s in (0, 0))
    assert torch.equal(a, b) and not torch.equal(a[0], a[1])
    spec = LearnerSpec(kind="coop", class_names=NAMES, n_ctx=4, ctx_init="a photo of a", options={"csc": True})
    ctx = new_learner(bb, spec, seed=0).ctx
    assert ctx.shape[:2] == (len(NAMES), 4) and all(torch.equal(ctx[i], ctx[0]) for i in range(len(NAMES)))


# -- the checkpoint --------------------------------------------------------------------------------


def _save(path, backbone, csc: bool, position: str, ctx: torch.Tensor | None = None):
    spec, bb, state = backbone
    learner_spec = _spec(csc, position)
    tensors = {"ctx": ctx} if ctx is not None else new_learner(bb, learner_spec, seed=1).named_tensors()
    meta = CheckpointMeta(learner=learner_spec, backbone=spec, preprocessing=Preprocessing(image_size=32))
    save_checkpoint(path, meta, tensors, state)
    return path, tensors


def test_checkpoint_round_trip_records_the_options(backbone, images, tmp_path):
    path, tensors = _save(tmp_path / "m.safetensors", backbone, True, "front")
    ckpt = load_checkpoint(path)
    assert ckpt.meta.learner.options == {"csc": True, "class_token_position": "front"}
    loaded = load_classifier(path)
    want = coop_reference.logits(backbone[1].clip, backbone[1].tokenizer, NAMES, tensors["ctx"], "front", images, OPENAI_MEAN, OPENAI_STD)
    with torch.no_grad():
        torch.testing.assert_close(loaded.classifier.eval()(images), want, atol=ATOL, rtol=0)


@pytest.mark.parametrize(
    ("csc", "shape", "needle"),
    [
        (True, (len(NAMES) - 1, N_CTX, 32), f"expected ({len(NAMES)}, {N_CTX}, width): class-specific context"),
        (True, (N_CTX, 32), "class-specific context (options.csc)"),
        (False, (len(NAMES), N_CTX, 32), f"expected ({N_CTX}, width)"),
    ],
    ids=["csc-wrong-classes", "csc-2d", "shared-3d"],
)
def test_header_check_refuses_a_context_that_does_not_fit_the_options(backbone, tmp_path, csc, shape, needle):
    width = backbone[1].clip.token_embedding.weight.shape[1]
    shape = (*shape[:-1], width)
    path, _ = _save(tmp_path / "m.safetensors", backbone, csc, "middle", ctx=torch.zeros(shape))
    with pytest.raises(InputError, match="ctx has shape") as info:
        load_checkpoint(path)
    assert needle in str(info.value)
    with pytest.raises(ValueError, match="ctx has shape"):  # the same check, from the header alone
        learner_class("coop").check_shapes(_spec(csc, "middle"), {"ctx": shape}, MAX_CTX_WIDTH)


def test_extra_classes_are_refused_for_csc_and_scanned_for_a_shared_context(backbone, images, tmp_path):
    path, _ = _save(tmp_path / "csc.safetensors", backbone, True, "middle")
    with pytest.raises(InputError) as info:
        load_classifier(path, extra_classes=["zebra"])
    assert str(info.value.path) == "policy" and "candidates.extra_classes" in info.value.problem and "class-specific" in info.value.problem
    assert load_classifier(path, extra_classes=[NAMES[0]]).classifier.n_classes == len(NAMES)  # a duplicate adds nothing
    # a shared context prompts any name, in the trained layout: the extra is one more reference class
    path, tensors = _save(tmp_path / "shared.safetensors", backbone, False, "middle")
    clf = load_classifier(path, extra_classes=["zebra"]).classifier.eval()
    bb = backbone[1]
    want = coop_reference.logits(bb.clip, bb.tokenizer, [*NAMES, "zebra"], tensors["ctx"], "middle", images, OPENAI_MEAN, OPENAI_STD)
    with torch.no_grad():
        torch.testing.assert_close(clf(images), want, atol=ATOL, rtol=0)


@pytest.mark.parametrize("options", [{"csc": True}, {"class_token_position": "front"}, {"class_token_position": "middle"}])
def test_cocoop_refuses_the_coop_variants(options):
    with pytest.raises(ValueError, match="CoCoOp has no") as info:
        LearnerSpec(kind="cocoop", class_names=NAMES, n_ctx=4, options=options)
    assert "options" in str(info.value)
    # CoOp's defaults are accepted and written as nothing: CoCoOp files are as before
    assert LearnerSpec(kind="cocoop", class_names=NAMES, n_ctx=4, options={"csc": False, "class_token_position": "end"}).options == {}


def test_onnx_export_folds_the_variant_text_features(backbone, images, tmp_path):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from ci_gate.export.onnx import export_onnx

    path, tensors = _save(tmp_path / "m.safetensors", backbone, True, "middle")
    report = export_onnx(path, tmp_path / "m.onnx", None, allow_unverified=True)
    assert report.parity_max_abs is not None and report.parity_max_abs <= 1e-4  # the exporter's own probe
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(["logits"], {"images": images.numpy()})[0])
    bb = backbone[1]
    want = coop_reference.logits(bb.clip, bb.tokenizer, NAMES, tensors["ctx"], "middle", images, OPENAI_MEAN, OPENAI_STD)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)


def test_dassl_import_reads_csc_off_the_tensor_and_checks_its_classes():
    coop, cocoop = learner_class("coop"), learner_class("cocoop")
    tokens = {"token_prefix": torch.zeros(5, 1, 8), "token_suffix": torch.zeros(5, 3, 8)}
    assert coop.dassl_import({"ctx": torch.zeros(5, 4, 8), **tokens}).options == {"csc": True}
    assert coop.dassl_import({"ctx": torch.zeros(4, 8), **tokens}).options == {"csc": False}
    with pytest.raises(ValueError, match="class-specific ctx holds 6 classes, token_prefix 5"):
        coop.dassl_import({"ctx": torch.zeros(6, 4, 8), **tokens})
    with pytest.raises(ValueError, match=r"ctx has shape \(2, 5, 4, 8\)"):
        coop.dassl_import({"ctx": torch.zeros(2, 5, 4, 8), **tokens})
    meta_net = {k: torch.zeros(1) for k in ("meta_net.linear1.weight", "meta_net.linear1.bias", "meta_net.linear2.weight", "meta_net.linear2.bias")}
    with pytest.raises(ValueError, match="not supported by CoCoOp"):
        cocoop.dassl_import({"ctx": torch.zeros(5, 4, 8), **tokens, **meta_net})


def test_reports_name_the_learners_settings(tmp_path):
    # a CSC / middle CoOp model is a different model from a shared-context one: every report says which
    from ci_gate.report.html import render_html
    from ci_gate.report.markdown import summary_markdown
    from ci_gate.result import Result
    from result_factory import make_result

    plain = make_result(tmp_path / "a")
    assert plain.model.learner_label == "coop" and "coop, 10 classes" in summary_markdown(plain)
    data = plain.model_dump(mode="json")
    data["model"]["learner_options"] = {"csc": True, "class_token_position": "middle|<b>"}
    res = Result.model_validate(data)
    assert res.model.learner_label == "coop (class_token_position=middle|<b>, csc=True)"
    md = summary_markdown(res)
    assert "csc=True" in md and "middle\\|" in md and "<b>" not in md  # no table break, no HTML
    html = render_html(res, tmp_path / "a")
    assert "csc=True" in html and "middle|&lt;b&gt;" in html
