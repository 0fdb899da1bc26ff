"""MaPLe (ci_gate.learners.maple) against the reference equations, and its checkpoint paths.

``reference_logits`` below is an independent, straightforward transcription of
muzairkhattak/multimodal-prompt-learning (trainers/maple.py, clip/model.py): full 77-token text,
layer by layer over open_clip's own blocks, nothing cached or truncated. ci-gate's classifier
must give the same logits on its fast path and on ``running(fast=False)`` to float32 rounding,
and the same comparison must catch a mutant (prompts replaced one layer late, depth off by one,
vision prompts appended after ``ln_pre``). The towers have different widths (text 32, vision
48) so a swapped projection cannot pass.

The reference's checkpoints are fabricated as it writes them (torch.save of CustomCLIP's whole
state dict, fp16 where its PREC fp16 run keeps fp16) and go through ``ci-gate convert``'s code:
same logits after conversion, a changed image tower reported as a modified encoder by the scan.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from ci_gate.bench.speed_run import candidate_names, random_pool
from ci_gate.checkpoint.format import MAX_CTX_WIDTH, OPENAI_MEAN, OPENAI_STD, CheckpointMeta, LearnerSpec, Preprocessing, save_checkpoint
from ci_gate.errors import InputError
from ci_gate.learners import learner_class
from ci_gate.model import load_classifier
from ci_gate.model.factory import build_classifier, new_learner
from ci_gate.model.small import embedded_backbone, random_clip_state

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIG = {
    "embed_dim": 24,
    "vision_cfg": {"image_size": 32, "layers": 3, "width": 48, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 3},
}
NAMES = candidate_names(5)
LOGIT_ATOL = 1e-4  # logits are ~5; float32 rounding differences are ~1e-6
MAPLE = learner_class("maple")


@pytest.fixture(scope="module")
def state():
    # open_clip initialises every LayerNorm to the identity affine map, under which
    # ln_1(ln_pre(x)) == ln_1(x) and a misplaced ln_pre is invisible; trained towers are not so
    state = random_clip_state(CONFIG, 0)
    gen = torch.Generator().manual_seed(5)
    for key, value in state.items():
        if ".ln_" in f".{key}" and value.dim() == 1:
            value.add_(0.2 * torch.randn(value.shape, generator=gen))
    return state


@pytest.fixture(scope="module")
def backbone(state):
    return embedded_backbone(CONFIG, state)


@pytest.fixture(scope="module")
def images():
    return random_pool(6, 32, seed=1)


def _spec(n_ctx: int, depth: int, name_prefix: str = "", ctx_init: str | None = None) -> LearnerSpec:
    return LearnerSpec(kind="maple", class_names=NAMES, n_ctx=n_ctx, ctx_init=ctx_init, options={"prompt_depth": depth, "name_prefix": name_prefix})


def _random_tensors(spec: LearnerSpec, seed: int) -> dict[str, torch.Tensor]:
    """Tensors of the reference's shapes at a scale that moves the logits (a fresh learner's
    std-0.02 prompts and cloned projections would hide a wrong layer)."""
    gen = torch.Generator().manual_seed(seed)
    depth = spec.options["prompt_depth"]
    text, vision = CONFIG["text_cfg"]["width"], CONFIG["vision_cfg"]["width"]
    out = {"ctx": torch.randn(spec.n_ctx, text, generator=gen), "proj.weight": torch.randn(vision, text, generator=gen) * 0.3, "proj.bias": torch.randn(vision, generator=gen) * 0.3}
    for i in range(depth - 1):
        out[f"compound_prompts_text.{i}"] = torch.randn(spec.n_ctx, text, generator=gen)
        out[f"compound_prompt_projections.{i}.weight"] = torch.randn(vision, text, generator=gen) * 0.3
        out[f"compound_prompt_projections.{i}.bias"] = torch.randn(vision, generator=gen) * 0.3
    return out


def reference_logits(clip, tokenizer, t: dict[str, torch.Tensor], names, n_ctx: int, depth: int, name_prefix: str, images01, mutant: str | None = None):
    """The reference MaPLe forward (CustomCLIP.forward), written out; ``mutant`` breaks one step."""
    replace_from = 2 if mutant == "late" else 1
    depth = depth - 1 if mutant == "shallow" else depth
    # -- text: "X X ... [name_prefix] name." with positions 1..n_ctx swapped for ctx
    lead = " ".join(["X"] * n_ctx)
    tokens = tokenizer([f"{lead} {name_prefix + ' ' if name_prefix else ''}{n.replace('_', ' ')}." for n in names])
    emb = clip.token_embedding(tokens)
    c = len(names)
    x = torch.cat([emb[:, :1], t["ctx"].expand(c, -1, -1), emb[:, 1 + n_ctx :]], dim=1)
    x = x + clip.positional_embedding
    for i, blk in enumerate(clip.transformer.resblocks):
        j = i - replace_from  # index of the compound prompt this layer takes, if any
        if 0 <= j < depth - 1:
            x = torch.cat([x[:, :1], t[f"compound_prompts_text.{j}"].expand(c, -1, -1), x[:, 1 + n_ctx :]], dim=1)
        x = blk(x, attn_mask=clip.attn_mask)
    x = clip.ln_final(x)
    text = x[torch.arange(c), tokens.argmax(dim=-1)] @ clip.text_projection
    # -- vision: [CLS, patches] + pos, then proj(ctx) appended, then ln_pre
    v = clip.visual
    mean, std = torch.tensor(OPENAI_MEAN).view(1, 3, 1, 1), torch.tensor(OPENAI_STD).view(1, 3, 1, 1)
    pixels = (images01 - mean) / std
    b = pixels.shape[0]
    x = v.conv1(pixels)
    x = x.reshape(b, x.shape[1], -1).permute(0, 2, 1)
    x = torch.cat([v.class_embedding + torch.zeros(b, 1, x.shape[-1]), x], dim=1)
    x = x + v.positional_embedding
    shared = F.linear(t["ctx"], t["proj.weight"], t["proj.bias"])
    if mutant == "ln_pre_first":
        x = torch.cat([v.ln_pre(x), shared.expand(b, -1, -1)], dim=1)
    else:
        x = v.ln_pre(torch.cat([x, shared.expand(b, -1, -1)], dim=1))
    for i, blk in enumerate(v.transformer.resblocks):
        j = i - replace_from
        if 0 <= j < depth - 1:
            deep = F.linear(t[f"compound_prompts_text.{j}"], t[f"compound_prompt_projections.{j}.weight"], t[f"compound_prompt_projections.{j}.bias"])
            x = torch.cat([x[:, : x.shape[1] - n_ctx], deep.expand(b, -1, -1)], dim=1)
        x = blk(x)
    image = v.ln_post(x[:, 0]) @ v.proj
    image, text = F.normalize(image, dim=-1), F.normalize(text, dim=-1)
    return clip.logit_scale.exp() * image @ text.t()


SETUPS = {
    # the reference's default config: N_CTX 2 and "of a" left before the name, here at depth 3
    "reference-config": dict(n_ctx=2, depth=3, name_prefix="of a"),
    "shallow": dict(n_ctx=4, depth=1, name_prefix=""),
}


@pytest.fixture(scope="module")
def models(backbone):
    """Per setup: (setup, spec, tensors, frozen classifier)."""
    _, bb = backbone
    out = {}
    for name, s in SETUPS.items():
        spec = _spec(s["n_ctx"], s["depth"], s["name_prefix"])
        tensors = _random_tensors(spec, seed=2)
        learner = MAPLE.from_tensors(bb, spec, tensors)
        out[name] = s, spec, tensors, build_classifier(bb, "maple", learner, NAMES, spec.n_ctx, 32, OPENAI_MEAN, OPENAI_STD).freeze()
    return out


@pytest.fixture(params=list(SETUPS))
def setup(request, models):
    return models[request.param]


def _clf_logits(clf, images, fast: bool):
    with clf.running(fast=fast), torch.no_grad():
        return clf(images)


def test_logits_equal_the_reference_equations_fast_and_slow(setup, backbone, images):
    s, spec, tensors, clf = setup
    _, bb = backbone
    assert clf.fast and clf.text_length() < clf.text.context_length and clf._cached_text is not None
    with torch.no_grad():
        ref = reference_logits(bb.clip, bb.tokenizer, tensors, NAMES, s["n_ctx"], s["depth"], s["name_prefix"], images)
    assert ref.abs().max() > 1.0 and ref.std() > 0.1  # not a degenerate model
    torch.testing.assert_close(_clf_logits(clf, images, fast=True), ref, atol=LOGIT_ATOL, rtol=0)
    torch.testing.assert_close(_clf_logits(clf, images, fast=False), ref, atol=LOGIT_ATOL, rtol=0)


# a depth-1 learner has no deep prompts to misplace, so only the deep setup gets those mutants
@pytest.mark.parametrize("name,mutant", [("reference-config", "late"), ("reference-config", "shallow"), ("reference-config", "ln_pre_first"), ("shallow", "ln_pre_first")])
def test_the_comparison_catches_a_mutant(models, backbone, images, name, mutant):
    s, spec, tensors, clf = models[name]
    _, bb = backbone
    with torch.no_grad():
        wrong = reference_logits(bb.clip, bb.tokenizer, tensors, NAMES, s["n_ctx"], s["depth"], s["name_prefix"], images, mutant=mutant)
    diff = (_clf_logits(clf, images, fast=True) - wrong).abs().max()
    assert diff > 100 * LOGIT_ATOL, (mutant, float(diff))


def test_name_prefix_is_in_the_prompt_tokens(setup, backbone):
    s, spec, tensors, clf = setup
    _, bb = backbone
    words = " ".join(["X"] * s["n_ctx"]) + (f" {s['name_prefix']}" if s["name_prefix"] else "")
    assert torch.equal(clf.prompts.tokens, bb.tokenizer([f"{words} {n}." for n in NAMES]))


def test_checkpoint_round_trip_keeps_options_and_logits(setup, backbone, state, images, tmp_path):
    s, spec, tensors, clf = setup
    bspec, _ = backbone
    meta = CheckpointMeta(learner=spec, backbone=bspec, preprocessing=Preprocessing(image_size=32))
    path = tmp_path / "maple.safetensors"
    save_checkpoint(path, meta, {k: v.half() for k, v in clf.learner.named_tensors().items()}, state)
    loaded = load_classifier(path)
    assert loaded.checkpoint.meta.learner.options == {"prompt_depth": s["depth"], "name_prefix": s["name_prefix"]}
    assert loaded.classifier.learner.depth == s["depth"]
    # fp16 storage rounds the prompts; the logits move by far less than the mutants above
    torch.testing.assert_close(_clf_logits(loaded.classifier.freeze(), images, fast=True), _clf_logits(clf, images, fast=True), atol=0.05, rtol=0)


def test_depth_and_shapes_are_checked(backbone):
    _, bb = backbone
    with pytest.raises(ValueError, match="prompt_depth"):
        _spec(2, 0)
    with pytest.raises(ValueError, match="depth 4 exceeds the backbone's layers"):
        new_learner(bb, _spec(2, 4), seed=0)
    spec = _spec(2, 3)
    tensors = _random_tensors(spec, 0)
    shapes = {k: tuple(v.shape) for k, v in tensors.items()}
    assert MAPLE.expected_tensors(spec) == set(shapes)
    MAPLE.check_shapes(spec, shapes, MAX_CTX_WIDTH)
    with pytest.raises(ValueError, match="compound_prompt_projections.1.weight has shape"):
        MAPLE.check_shapes(spec, dict(shapes, **{"compound_prompt_projections.1.weight": (48, 31)}), MAX_CTX_WIDTH)
    with pytest.raises(ValueError, match="compound_prompts_text.0 has shape"):
        MAPLE.check_shapes(spec, dict(shapes, **{"compound_prompts_text.0": (3, 32)}), MAX_CTX_WIDTH)
    # a vision width the header cannot know (40, the tower's is 48): refused against the backbone
    narrow = {k: v[:40] if k.startswith(("proj.", "compound_prompt_projections.")) else v for k, v in tensors.items()}
    MAPLE.check_shapes(spec, {k: tuple(v.shape) for k, v in narrow.items()}, MAX_CTX_WIDTH)
    with pytest.raises(ValueError, match="do not fit the backbone .*vision width 48"):
        MAPLE.from_tensors(bb, spec, narrow)


def test_fresh_learner_starts_as_the_reference(backbone):
    _, bb = backbone
    learner = new_learner(bb, _spec(2, 3, "of a", ctx_init="a photo"), seed=0)
    words = bb.clip.token_embedding(bb.tokenizer(["a photo of a"]))[0, 1:3]
    assert torch.equal(learner.ctx.detach(), words)
    t = learner.named_tensors()
    # the reference clones one initialised projection for every deeper layer
    assert torch.equal(t["compound_prompt_projections.0.weight"], t["compound_prompt_projections.1.weight"])
    assert not torch.equal(t["compound_prompts_text.0"], t["compound_prompts_text.1"])
    assert 0.01 < float(t["compound_prompts_text.0"].std()) < 0.04
    assert t["proj.weight"].shape == (48, 32)


def test_a_resnet_image_tower_is_refused_naming_the_file(tmp_path):
    cfg = copy.deepcopy(CONFIG)
    cfg["vision_cfg"] = {"image_size": 32, "layers": [1, 1, 1, 1], "width": 8, "head_width": 16}
    state = random_clip_state(cfg, 0)
    bspec, _ = embedded_backbone(cfg, state)
    spec = _spec(2, 2)
    meta = CheckpointMeta(learner=spec, backbone=bspec, preprocessing=Preprocessing(image_size=32))
    path = tmp_path / "maple-rn.safetensors"
    save_checkpoint(path, meta, _random_tensors(spec, 0), state)
    with pytest.raises(InputError, match="MaPLe needs a ViT image tower; this backbone's is ModifiedResNet") as info:
        load_classifier(path)
    assert str(info.value.path) == str(path)


def test_a_zoo_maple_model_builds_with_the_zoo_recipe(state, tmp_path):
    # the detection zoo's own build step (ci_gate.bench.zoo), one epoch on a few random images
    from ci_gate.bench.backbone import CachedBackbone
    from ci_gate.bench.zoo import LEARNER_SETUP, Task, ZooEntry, build_model
    from ci_gate.data import LabeledImages

    names = candidate_names(4)
    labels = torch.arange(16) % 4
    data = LabeledImages(random_pool(16, 32, seed=3), labels, names)
    task = Task("cifar10", data, LabeledImages(random_pool(8, 32, seed=4), labels[:8], names))
    cached = CachedBackbone(config=copy.deepcopy(CONFIG), state=state, info={}, path=tmp_path / "backbone-test")
    entry = ZooEntry("cifar10", "maple", "badclip", 1, seed=0, shots=4, epochs=1, lr=5e-3, eps255=16)
    model = build_model(entry, cached, task, tmp_path)
    assert model.learner == "maple" and model.asr is not None and 0 <= model.clean_acc <= 1
    loaded = load_classifier(model.path)
    spec = loaded.checkpoint.meta.learner
    assert spec.kind == "maple" and spec.options == LEARNER_SETUP["maple"]["options"] and spec.n_ctx == 2
    _, bb = embedded_backbone(CONFIG, state)
    start = new_learner(bb, spec, seed=0).named_tensors()
    trained = loaded.classifier.learner.named_tensors()
    assert set(trained) == set(start) and all(not torch.equal(trained[k], start[k]) for k in ("ctx", "proj.weight", "compound_prompts_text.0"))


# ---- the reference's checkpoints (MultiModalPromptLearner/model.pth.tar-N) ----------------------


def reference_file_state(state: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor], names, n_ctx: int) -> dict[str, torch.Tensor]:
    """CustomCLIP.state_dict() as the reference saves it with PREC fp16: the prompt learner
    (ctx and proj in fp16, the compound prompts in fp32), its frozen prompt tokens, and both
    towers (open_clip names prefixed by the reference's submodules, linear weights in fp16)."""
    import open_clip

    tokens = open_clip.tokenizer.SimpleTokenizer(context_length=77)([f"{' '.join(['X'] * n_ctx)} {n.replace('_', ' ')}." for n in names])
    embedding = F.embedding(tokens, state["token_embedding.weight"]).half()
    out = {"prompt_learner.token_prefix": embedding[:, :1].clone(), "prompt_learner.token_suffix": embedding[:, 1 + n_ctx :].clone()}
    for key, value in tensors.items():
        out[f"prompt_learner.{key}"] = value.half() if key == "ctx" or key.startswith("proj.") else value.clone()
    for key, value in state.items():
        if key == "token_embedding.weight":
            continue  # CustomCLIP does not hold it
        fp32 = ".ln_" in f".{key}" or key.startswith("ln_") or key.rsplit(".", 1)[-1] in ("class_embedding", "positional_embedding", "logit_scale")
        value = value.clone() if fp32 else value.half()
        if key.startswith("visual."):
            out["image_encoder." + key[len("visual."):]] = value
        elif key == "logit_scale":
            out[key] = value
        else:
            out["text_encoder." + key] = value
    return out


@pytest.fixture(scope="module")
def pinned(state, tmp_path_factory):
    from safetensors.torch import save_file

    path = tmp_path_factory.mktemp("pinned") / "backbone.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def _convert(src, out, pinned):
    from ci_gate.checkpoint.convert import BackboneSource, ConvertRequest, convert

    return convert(ConvertRequest(source=src, class_names=NAMES, backbone=BackboneSource(config=copy.deepcopy(CONFIG), weights=pinned), out=out))


# "of a": the reference's default config (CTX_INIT "a photo of a", N_CTX 2) trains "X X of a {name}."
@pytest.mark.parametrize("words", ["", "of a"])
def test_a_reference_checkpoint_converts_to_the_same_logits(state, pinned, images, tmp_path, words):
    spec = _spec(2, 3)
    tensors = _random_tensors(spec, seed=7)
    src = tmp_path / "model.pth.tar-5"
    trained_on = [f"{words} {n}" if words else n for n in NAMES]
    torch.save({"state_dict": reference_file_state(state, tensors, trained_on, 2), "epoch": 5, "optimizer": None}, src)
    done = _convert(src, tmp_path / "maple.safetensors", pinned)
    meta = done.meta
    assert meta.learner.kind == "maple" and meta.learner.n_ctx == 2 and meta.learner.class_names == NAMES
    assert meta.learner.options == {"prompt_depth": 3, "name_prefix": words}
    assert not meta.backbone.embedded and "modified_towers" not in meta.provenance  # the towers are the pinned ones
    loaded = load_classifier(done.out, weights=pinned)
    stored = {k.removeprefix("prompt_learner."): v.float() for k, v in torch.load(src, weights_only=True)["state_dict"].items() if k.startswith("prompt_learner.")}
    with torch.no_grad():
        ref = reference_logits(loaded.backbone.clip, loaded.backbone.tokenizer, stored, NAMES, 2, 3, words, images)
    torch.testing.assert_close(_clf_logits(loaded.classifier.freeze(), images, fast=True), ref, atol=LOGIT_ATOL, rtol=0)


def test_a_reference_checkpoint_with_a_changed_image_tower_is_a_modified_encoder_in_the_scan(state, pinned, tmp_path):
    import ci_gate
    from ci_gate.artifacts import write_png

    spec = _spec(2, 3)
    sd = reference_file_state(state, _random_tensors(spec, seed=7), NAMES, 2)
    changed = "image_encoder.transformer.resblocks.0.mlp.c_fc.weight"
    sd[changed] = (sd[changed].float() + 0.05).half()  # an encoder-level edit the learner file hides
    src = tmp_path / "model.pth.tar-5"
    torch.save({"state_dict": sd, "epoch": 5}, src)
    done = _convert(src, tmp_path / "maple.safetensors", pinned)
    assert done.meta.backbone.embedded and done.meta.provenance["modified_towers"] == ["visual.transformer.resblocks.0.mlp.c_fc.weight"]
    assert any("differ from the pinned backbone" in n for n in done.notes)
    # the scan runs the file's own tower, and the encoder check against the pinned one flags it
    pool = tmp_path / "pool"
    for i, img in enumerate(random_pool(8, 32, seed=1)):
        write_png(pool / f"{i:03d}.png", img)
    report = tmp_path / "report"
    result = ci_gate.verify(done.out, "default", pool, out=report, reference_weights=pinned, pool__min_images=8, pool__max_images=8, inversion__batch_size=8, inversion__epochs=1, device="cpu")
    assert result.encoder.modified and not ci_gate.gate_passes(result)
    assert [c.name for c in result.encoder.changed] == ["visual.transformer.resblocks.0.mlp.c_fc.weight"]
    # the whole gate ran through MaPLe's prompted towers: one inverted trigger per class, reported
    assert result.model.learner == "maple" and len(result.classes) == len(NAMES)
    assert all((report / c.trigger_png).is_file() for c in result.classes)
    assert ci_gate.load_result(report / "result.json").encoder.modified


def test_a_reference_checkpoint_with_a_stray_key_is_refused(state, pinned, tmp_path):
    sd = reference_file_state(state, _random_tensors(_spec(2, 2), seed=7), NAMES, 2)
    sd["prompt_learner.VPT"] = torch.zeros(2, 48)
    src = tmp_path / "model.pth.tar-5"
    torch.save({"state_dict": sd, "epoch": 5}, src)
    with pytest.raises(InputError, match="cannot convert .*prompt_learner.VPT"):
        _convert(src, tmp_path / "maple.safetensors", pinned)
    assert not (tmp_path / "maple.safetensors").exists()


def test_the_reference_default_prompt_words_are_read_off_the_stored_tokens(backbone, state):
    # the reference's default config (CTX_INIT "a photo of a", N_CTX 2) trains "X X of a {name}."
    from ci_gate.learners.maple import read_name_prefix

    _, bb = backbone
    default = reference_file_state(state, {}, [f"of a {n}" for n in NAMES], 2)["prompt_learner.token_suffix"]
    plain = reference_file_state(state, {}, NAMES, 2)["prompt_learner.token_suffix"]
    assert read_name_prefix(default, bb, NAMES, 2) == "of a"
    assert read_name_prefix(plain, bb, NAMES, 2) == ""
    # names out of training order: the words are still read (convert then names the wrong row)
    assert read_name_prefix(default, bb, [NAMES[1], NAMES[0], *NAMES[2:]], 2) == "of a"
    assert read_name_prefix(default, bb, ["zebra", "yak", "xylophone", "walrus", "vulture"], 2) is None
    spec = _spec(2, 2, read_name_prefix(default, bb, NAMES, 2))
    prompts = MAPLE.from_tensors(bb, spec, _random_tensors(spec, 0)).bind(bb, NAMES, 2)
    torch.testing.assert_close(prompts.token_suffix.half(), default, atol=0, rtol=0)


def test_the_detection_zoo_lists_clean_and_badclip_maple_models():
    from ci_gate.bench.zoo import profile_entries

    for profile in ("quick", "full"):
        maple = [e for e in profile_entries(profile) if e.learner == "maple"]
        assert {e.attack for e in maple} == {None, "badclip"}, profile
        assert all(e.id.startswith(f"{e.dataset}-maple-") for e in maple)
    full = [e for e in profile_entries("full") if e.learner == "maple"]
    assert {e.dataset for e in full} == {"cifar10", "tin20"} and len({e.target for e in full if e.attack}) >= 2
    # the zoo's prompt depth must fit the benchmark's own backbone, not only this file's
    from ci_gate.bench.backbone import BackboneRecipe
    from ci_gate.bench.zoo import LEARNER_SETUP
    from ci_gate.model.small import small_config

    cfg = small_config(BackboneRecipe().config)
    depth = LEARNER_SETUP["maple"]["options"]["prompt_depth"]
    assert depth <= min(cfg["text_cfg"]["layers"], cfg["vision_cfg"]["layers"])


def test_onnx_export_refuses_maple_naming_the_file(tmp_path):
    from ci_gate.export.onnx import export_onnx
    from tiny_scan import build

    ckpt, _ = build(tmp_path, kind="maple")
    with pytest.raises(InputError, match="ONNX export does not support MaPLe prompt learners") as info:
        export_onnx(ckpt, tmp_path / "m.onnx", None, allow_unverified=True)
    assert str(info.value.path) == str(ckpt) and not (tmp_path / "m.onnx").exists()


def test_names_out_of_training_order_are_named_for_a_reference_default_file(state, pinned, tmp_path):
    from ci_gate.checkpoint.convert import BackboneSource, ConvertRequest, convert

    sd = reference_file_state(state, _random_tensors(_spec(2, 2), seed=7), [f"of a {n}" for n in NAMES], 2)
    src = tmp_path / "model.pth.tar-5"
    torch.save({"state_dict": sd, "epoch": 5}, src)
    swapped = [NAMES[1], NAMES[0], *NAMES[2:]]
    req = ConvertRequest(source=src, class_names=swapped, backbone=BackboneSource(config=copy.deepcopy(CONFIG), weights=pinned), out=tmp_path / "m.safetensors")
    with pytest.raises(InputError, match=f"class name '{NAMES[1]}' .*row 1; that row matches '{NAMES[0]}': are the names in training order"):
        convert(req)


def test_a_stated_name_prefix_the_stored_tokens_contradict_is_refused(state, pinned, tmp_path):
    from ci_gate.checkpoint.convert import BackboneSource, ConvertRequest, convert

    spec = _spec(2, 3)
    src = tmp_path / "model.pth.tar-5"
    torch.save({"state_dict": reference_file_state(state, _random_tensors(spec, seed=7), [f"of a {n}" for n in NAMES], 2), "epoch": 5}, src)

    def run(words: str):
        source = BackboneSource(config=copy.deepcopy(CONFIG), weights=pinned)
        return convert(ConvertRequest(source=src, class_names=NAMES, backbone=source, out=tmp_path / f"m{len(words)}.safetensors", learner_options={"name_prefix": words}))

    with pytest.raises(InputError, match=r"name_prefix=of the, but model.pth.tar-5's stored prompt tokens give name_prefix=\"of a\""):
        run("of the")
    assert not (tmp_path / "m6.safetensors").exists()
    assert run("of a").meta.learner.options["name_prefix"] == "of a"  # stating what the file says is fine
