"""A hostile model provider against the learner registry, MaPLe and the Dassl import.

Every file here is written the way an attacker would write it: Dassl pickles through
``torch.save`` of plain tensors (what ``ci-gate convert`` reads), ci-gate checkpoints through
``save_checkpoint``/safetensors. The reference implementations load a Dassl file with
``load_state_dict(strict=False)`` and without stripping ``module.``, so a key the reference
ignores must never decide what ci-gate scans, and a tower the reference runs must never be
replaced by the pinned one when it differs.
"""

from __future__ import annotations

import pytest
import torch

from ci_gate.checkpoint.format import LearnerSpec
from ci_gate.errors import InputError
from test_maple import CONFIG, NAMES, _convert, _random_tensors, _spec, reference_file_state

pytestmark = pytest.mark.usefixtures("one_thread")

TOWER = "image_encoder.transformer.resblocks.0.mlp.c_fc.weight"
OPEN_CLIP_TOWER = "visual.transformer.resblocks.0.mlp.c_fc.weight"


@pytest.fixture(scope="module")
def state():
    from ci_gate.model.small import random_clip_state

    return random_clip_state(CONFIG, 0)


@pytest.fixture(scope="module")
def pinned(state, tmp_path_factory):
    from safetensors.torch import save_file

    path = tmp_path_factory.mktemp("pinned") / "backbone.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def _reference_state(state):
    return reference_file_state(state, _random_tensors(_spec(2, 2), seed=7), NAMES, 2)


def _save(tmp_path, sd):
    src = tmp_path / "model.pth.tar-5"
    torch.save({"state_dict": sd, "epoch": 5}, src)
    return src


# ---- a modified tower hidden behind a second key that maps to the same backbone tensor ---------


@pytest.mark.parametrize("shadow", ["text_encoder.visual.transformer.resblocks.0.mlp.c_fc.weight", "module." + TOWER])
def test_a_modified_tower_shadowed_by_a_pinned_copy_under_another_key_is_refused(state, pinned, tmp_path, shadow):
    """The reference runs ``image_encoder.*`` (its text encoder has no ``visual``; Dassl's
    load_model neither strips ``module.`` nor refuses unexpected keys). A pinned copy of the same
    tensor under a second key must not replace the backdoored one in what ci-gate converts."""
    sd = _reference_state(state)
    sd[TOWER] = (sd[TOWER].float() + 0.05).half()  # the backdoored tower the reference runs
    sd[shadow] = state[OPEN_CLIP_TOWER].half()  # a pinned copy, read after it
    out = tmp_path / "maple.safetensors"
    try:
        done = _convert(_save(tmp_path, sd), out, pinned)
    except InputError as exc:
        assert "model.pth.tar-5" in str(exc.path) and exc.problem
        assert not out.exists()
    else:  # the only other acceptable outcome: the backdoored tower is what gets scanned
        assert done.meta.provenance.get("modified_towers") == [OPEN_CLIP_TOWER], "backdoored tower silently dropped"


def test_a_duplicate_key_after_stripping_module_is_refused_for_coop(tmp_path):
    """CoOp: ``ctx`` (run by the reference) and ``module.ctx`` (ignored by it) must not let the
    second decide the converted context."""
    from ci_gate.checkpoint.dassl import read_dassl_checkpoint

    ctx = torch.randn(2, 32)
    sd = {"ctx": ctx, "module.ctx": torch.zeros(2, 32), "token_prefix": torch.zeros(5, 1, 32), "token_suffix": torch.zeros(5, 74, 32)}
    src = _save(tmp_path, sd)
    try:
        got = read_dassl_checkpoint(src)
    except InputError as exc:
        assert "ctx" in exc.problem
    else:
        assert torch.equal(got.ctx, ctx), "the key the reference ignores decided the context"


def test_an_unknown_text_encoder_key_is_refused(state, pinned, tmp_path):
    """The reference's TextEncoder holds transformer, positional_embedding, ln_final and
    text_projection; anything else under text_encoder.* is ignored by it, so it must not become
    (say) the token embedding ci-gate scans with."""
    sd = _reference_state(state)
    sd["text_encoder.token_embedding.weight"] = (state["token_embedding.weight"] * 1.5).half()
    with pytest.raises(InputError, match="text_encoder.token_embedding.weight"):
        _convert(_save(tmp_path, sd), tmp_path / "maple.safetensors", pinned)


# ---- the dtype rounding allowance as a hiding place ----------------------------------------------


@pytest.mark.parametrize("dtype,scale", [(torch.bfloat16, 1.012), (torch.float16, 1.0015)])
def test_a_tower_edit_within_twice_the_dtype_rounding_is_a_modified_encoder(state, pinned, tmp_path, dtype, scale):
    """An honest fp16/bf16 file holds exactly the pinned tensor cast to its dtype; an edit of
    1.2 % (bf16) or 0.15 % (fp16) of every weight fit the old 2-eps allowance and was converted
    as the pinned tower while the reference would run the edited one."""
    sd = _reference_state(state)
    for key in list(sd):  # an honest low-precision copy of every tower tensor: the pinned one, cast
        if key.startswith("image_encoder."):
            sd[key] = state["visual." + key.removeprefix("image_encoder.")].to(dtype)
        elif key.startswith("text_encoder."):
            sd[key] = state[key.removeprefix("text_encoder.")].to(dtype)
    sd[TOWER] = (state[OPEN_CLIP_TOWER] * scale).to(dtype)
    done = _convert(_save(tmp_path, sd), tmp_path / "maple.safetensors", pinned)
    assert done.meta.provenance.get("modified_towers") == [OPEN_CLIP_TOWER]
    assert done.meta.backbone.embedded


# ---- attacker-written options -------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["of a\n::error::forged", "\x1b[2Jof a", "of\u202ea"])
def test_a_control_character_in_maples_name_prefix_is_refused(prefix):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="control character"):
        LearnerSpec(kind="maple", class_names=NAMES, n_ctx=2, ctx_init=None, options={"prompt_depth": 2, "name_prefix": prefix})


def test_prompt_words_read_off_a_file_with_a_bidi_override_are_refused_as_bad_input(state, pinned, tmp_path):
    """The words before each class name are read off the attacker's stored prompt tokens; a
    right-to-left override there must be a one-line input error naming the file (exit 2), not
    an internal error nor a name_prefix that reorders every report line it is printed in."""
    tensors = _random_tensors(_spec(2, 2), seed=7)
    sd = reference_file_state(state, tensors, [f"\u202e {n}" for n in NAMES], 2)
    src = _save(tmp_path, sd)
    with pytest.raises(InputError, match="name_prefix.*control character U\\+202E") as caught:
        _convert(src, tmp_path / "maple.safetensors", pinned)
    assert str(caught.value.path) == str(src)
    assert not (tmp_path / "maple.safetensors").exists()


# ---- attacker-written LearnerSpec.options in a ci-gate checkpoint -------------------------------


@pytest.fixture(scope="module")
def tiny_maple(tmp_path_factory):
    from checkpoint_edit import tiny_checkpoint

    return tiny_checkpoint(tmp_path_factory.mktemp("maple") / "maple.safetensors", "maple", ["cat", "dog", "bird"])


@pytest.fixture(scope="module")
def tiny_coop(tmp_path_factory):
    from checkpoint_edit import tiny_checkpoint

    return tiny_checkpoint(tmp_path_factory.mktemp("coop") / "coop.safetensors", "coop", ["cat", "dog", "bird"])


_CONTROL = __import__("re").compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _refused(src, tmp_path, options, match):
    from checkpoint_edit import rewrite_metadata

    from ci_gate.model import load_classifier

    def edit(meta):
        meta["learner"]["options"] = options

    path = rewrite_metadata(src, tmp_path / "edited.safetensors", edit)
    with pytest.raises(InputError, match=match) as caught:
        load_classifier(path)
    assert str(caught.value.path) == str(path)
    assert not _CONTROL.search(str(caught.value.problem)), "attacker text reached the error line raw"


@pytest.mark.parametrize(
    "options,match",
    [
        ({"prompt_depth": True}, "prompt_depth"),  # a bool is not a depth
        ({"prompt_depth": 2.0}, "prompt_depth"),
        ({"prompt_depth": "2"}, "prompt_depth"),
        ({"prompt_depth": 10**12}, "prompt_depth"),
        ({"prompt_depth": 1}, "compound_prompt"),  # the file's deep prompts would go unused
        ({"prompt_depth": 200}, "compound_prompt|depth"),
        ({"name_prefix": "of a\u202e"}, "control character U\\+202E"),
        ({"name_prefix": ["of", "a"]}, "name_prefix"),
        ({"name_prefix": "a " * 101}, "name_prefix"),
        ({"prompt_depth": 2, "fast": False}, "fast"),  # no option may switch a mode of the scan
    ],
)
def test_maple_options_an_attacker_writes_are_refused_naming_the_file(tiny_maple, tmp_path, options, match):
    _refused(tiny_maple, tmp_path, options, match)


def test_a_maple_option_on_a_coop_checkpoint_is_refused_without_echoing_control_characters(tiny_coop, tmp_path):
    _refused(tiny_coop, tmp_path, {"prompt_depth": 2, "\x1b[2J\u202eevil": 1}, "options")


# ---- the classifier's modes, and MaPLe's fast path on hostile magnitudes --------------------------


def test_running_restores_modes_and_the_cache_when_the_block_raises(tiny_maple):
    from ci_gate.model import load_classifier

    clf = load_classifier(tiny_maple).classifier.freeze()
    cached = clf._cached_text
    assert clf.fast and clf.autocast_dtype is None and cached is not None
    with pytest.raises(RuntimeError, match="boom"):
        with clf.running(fast=False, autocast_dtype=torch.bfloat16):
            assert not clf.fast and clf.autocast_dtype is torch.bfloat16 and clf._cached_text is None
            with clf.running(fast=True):
                assert clf.fast and clf._cached_text is not None
                raise RuntimeError("boom")
    assert clf.fast and clf.autocast_dtype is None
    assert clf._cached_text is not None and torch.equal(clf._cached_text, cached)


def test_maple_fast_path_equals_the_reference_path_on_hostile_magnitudes(tiny_maple, tmp_path):
    """Prompts 100x a trained model's scale (the checkpoint is the attacker's): the scan's fast
    path (cached, truncated text) must still see what the straightforward path sees."""
    from ci_gate.bench.speed_run import random_pool
    from ci_gate.checkpoint.format import load_checkpoint, save_checkpoint
    from ci_gate.model import load_classifier

    ckpt = load_checkpoint(tiny_maple)
    gen = torch.Generator().manual_seed(3)
    loud = {k: torch.randn(v.shape, generator=gen) * 100 for k, v in ckpt.learner_tensors.items()}
    path = tmp_path / "loud.safetensors"
    save_checkpoint(path, ckpt.meta, loud, ckpt.backbone_tensors)
    clf = load_classifier(path).classifier.freeze()
    images = random_pool(4, 32, seed=2)
    with torch.no_grad():
        fast = clf(images)
        with clf.running(fast=False):
            slow = clf(images)
    assert torch.isfinite(fast).all()
    torch.testing.assert_close(fast, slow, atol=1e-3, rtol=1e-4)


def test_ci_gate_convert_exits_2_with_one_line_for_a_shadowed_tower_and_writes_nothing(state, pinned, tmp_path, capsys):
    import json

    from test_convert import run_cli

    sd = _reference_state(state)
    sd[TOWER] = (sd[TOWER].float() + 0.05).half()
    sd["text_encoder.visual.transformer.resblocks.0.mlp.c_fc.weight"] = state[OPEN_CLIP_TOWER].half()
    src = _save(tmp_path, sd)
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(CONFIG))
    out = tmp_path / "maple.safetensors"
    code, _, stderr = run_cli(capsys, str(src), "--classes", ",".join(NAMES), "--config", str(cfg), "--backbone-weights", str(pinned), "--out", str(out))
    assert code == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"ci-gate: error: {src}") and "text_encoder.visual" in lines[0]
    assert not out.exists()


@pytest.mark.parametrize(
    "key,value,match",
    [
        ("image_encoder.VPT", torch.zeros(2, 48), "no counterpart|cannot convert"),  # another method's deep vision prompts
        ("image_encoder.proj", torch.zeros(24, 49), "shape"),
        ("image_encoder.conv1.weight", torch.full((48, 3, 8, 8), float("inf")), "NaN or Inf"),
        ("logit_scale", torch.tensor(4.6, dtype=torch.float64).long(), "dtype"),
    ],
)
def test_whole_model_tower_keys_that_cannot_be_the_pinned_backbones_are_refused(state, pinned, tmp_path, key, value, match):
    sd = _reference_state(state)
    sd[key] = value
    with pytest.raises(InputError, match=match):
        _convert(_save(tmp_path, sd), tmp_path / "maple.safetensors", pinned)
    assert not (tmp_path / "maple.safetensors").exists()
