"""Every metadata field of a checkpoint is written by the attacker (docs/threat-model.md).

For each field the test rewrites only the header of a valid checkpoint (tensors byte-identical)
and checks the outcome the threat model promises: the load is refused (exit 2 in the CLI), or the
field is inert and the classifier the scan attacks computes bit-identical logits. A field that
changes the model the scan sees while passing the load would be a way to blind the gate.
"""

from __future__ import annotations

import pytest
import torch
from checkpoint_edit import rewrite_metadata, tiny_checkpoint

from ci_gate.errors import InputError
from ci_gate.model.factory import load_classifier


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    path = tiny_checkpoint(tmp_path_factory.mktemp("threat") / "model.safetensors", "cocoop", ["cat", "dog", "ship", "truck"], {"producer": "test"})
    images = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    return path, images, _logits(path, images)


def _logits(path, images):
    clf = load_classifier(path).classifier.freeze()
    with torch.no_grad():
        return clf(images)


_rewrite = rewrite_metadata


def _set(path, value):
    def edit(meta):
        node = meta
        for key in path[:-1]:
            node = node[key]
        if value is DELETE:
            node.pop(path[-1], None)
        else:
            node[path[-1]] = value(node[path[-1]]) if callable(value) else value

    return edit


DELETE = object()

# (field, edit, expected): "refused" = InputError at load; "inert" = identical logits
CASES = [
    ("format_version: string", _set(["format_version"], "1"), "refused"),
    ("format_version: 2", _set(["format_version"], 2), "refused"),
    ("format_version: missing", _set(["format_version"], DELETE), "refused"),
    ("learner.kind: coop (meta-net tensors left over)", _set(["learner", "kind"], "coop"), "refused"),
    ("learner.kind: zeroshot (prompt tensors left over)", _set(["learner", "kind"], "zeroshot"), "refused"),
    ("learner.kind: unknown", _set(["learner", "kind"], "maple"), "refused"),
    ("learner.n_ctx: does not match ctx", _set(["learner", "n_ctx"], 8), "refused"),
    ("learner.class_names: one class", _set(["learner", "class_names"], ["cat"]), "refused"),
    ("learner.class_names: duplicates", _set(["learner", "class_names"], ["cat", "Cat", "ship", "truck"]), "refused"),
    ("learner.class_names: escape sequence", _set(["learner", "class_names"], ["cat\x1b[2J", "dog", "ship", "truck"]), "refused"),
    ("learner.ctx_init: other words", _set(["learner", "ctx_init"], "a picture of"), "inert"),
    ("learner.ctx_init: null", _set(["learner", "ctx_init"], None), "inert"),
    ("learner.ctx_init: more words than n_ctx", _set(["learner", "ctx_init"], "a very nice photo of a"), "refused"),
    ("backbone.sha256: another digest", _set(["backbone", "sha256"], "0" * 64), "refused"),
    ("backbone.sha256: removed", _set(["backbone", "sha256"], None), "inert"),
    ("backbone.embedded: false", _set(["backbone", "embedded"], False), "refused"),
    ("backbone.config and architecture both", _set(["backbone", "architecture"], "ViT-B-16"), "refused"),
    ("backbone.config: another width", _set(["backbone", "config"], lambda c: c | {"embed_dim": 32}), "refused"),
    ("backbone.config: another image size", _set(["backbone", "config"], lambda c: c | {"vision_cfg": c["vision_cfg"] | {"image_size": 64}}), "refused"),
    ("backbone.config: preprocess_cfg with std 1e6", _set(["backbone", "config"], lambda c: c | {"preprocess_cfg": {"std": [1e6] * 3}}), "inert"),
    ("backbone.pretrained: a tag, while embedded", _set(["backbone", "pretrained"], "openai"), "inert"),
    ("preprocessing.std: 1e6", _set(["preprocessing", "std"], [1e6] * 3), "refused"),
    ("preprocessing.std: 0", _set(["preprocessing", "std"], [0.0] * 3), "refused"),
    ("preprocessing.mean: 1e6", _set(["preprocessing", "mean"], [1e6] * 3), "refused"),
    ("preprocessing.image_size: 64", _set(["preprocessing", "image_size"], 64), "refused"),
    ("preprocessing.interpolation: bilinear", _set(["preprocessing", "interpolation"], "bilinear"), "refused"),
    ("provenance: anything", _set(["provenance"], {"skip_scan": True, "verdict": "clean", "policy": {"detection": {"k": 1e9}}}), "inert"),
    ("provenance: removed", _set(["provenance"], DELETE), "inert"),
    ("unknown top-level key", _set(["ci_gate_verdict"], "clean"), "refused"),
    ("unknown learner key", _set(["learner", "skip"], True), "refused"),
]


@pytest.mark.parametrize("field, edit, expected", CASES, ids=[c[0] for c in CASES])
def test_no_metadata_field_changes_what_the_scan_sees(original, tmp_path, field, edit, expected):
    path, images, before = original
    mutated = _rewrite(path, tmp_path / "mutated.safetensors", edit)
    if expected == "refused":
        with pytest.raises(InputError) as exc:
            load_classifier(mutated)
        assert str(mutated) in str(exc.value)
    else:
        after = _logits(mutated, images)
        assert torch.equal(after, before), f"{field} changed the classifier the scan attacks"


def test_the_quick_gelu_flag_of_an_inline_config_is_the_model_itself(original, tmp_path):
    # quick_gelu is part of an inline (embedded) architecture: flipping it is another model, the
    # one deployment builds from the same metadata, and it is scanned as such (not a bypass:
    # there is no second, trusted definition to disagree with; docs/threat-model.md)
    path, images, before = original
    mutated = _rewrite(path, tmp_path / "qg.safetensors", _set(["backbone", "quick_gelu"], True))
    assert load_classifier(mutated).backbone.quick_gelu is True


def test_a_class_name_too_long_for_the_text_tower_is_bad_input(original, tmp_path):
    path, _, _ = original
    mutated = _rewrite(path, tmp_path / "long.safetensors", _set(["learner", "class_names"], ["cat", "dog", "ship", "a " * 99 + "b"]))
    with pytest.raises(InputError, match=r"class_names\[3\] is too long"):
        load_classifier(mutated)


def test_an_inline_config_open_clip_cannot_build_is_bad_input(original, tmp_path):
    path, _, _ = original
    # heads that do not divide the width: accepted by the metadata schema, refused by torch
    mutated = _rewrite(path, tmp_path / "heads.safetensors", _set(["backbone", "config"], lambda c: c | {"text_cfg": c["text_cfg"] | {"heads": 3}}))
    with pytest.raises(InputError) as exc:
        load_classifier(mutated)
    assert str(mutated) in str(exc.value)


def test_an_extra_class_that_reads_like_a_checkpoint_class_is_refused(original):
    # "Cat" and "cat" give the same prompt: the duplicate would pin the class's margin at 0
    path, _, _ = original
    with pytest.raises(InputError, match="same prompt"):
        load_classifier(path, extra_classes=["Cat"])
    assert load_classifier(path, extra_classes=["cat", "zebra"]).classifier.class_names[-1] == "zebra"


@pytest.mark.parametrize("twin", ["stop&#32;sign", "ｓｔｏｐ sign", "stop&amp;#32;sign", "Stop  Sign"])
def test_two_classes_the_tokenizer_reads_alike_are_bad_input(original, tmp_path, twin):
    # the twin ties with "stop sign" on every input: its margin is pinned at 0, the scan can never
    # flag the target, and deployment's argmax still picks the first of the two
    path, _, _ = original
    mutated = _rewrite(path, tmp_path / "twins.safetensors", _set(["learner", "class_names"], ["cat", "stop sign", "ship", twin]))
    with pytest.raises(InputError, match=r"class_names\[1\] and \[3\] give the text encoder the same tokens|\[1\] and \[3\] give the same prompt") as exc:
        load_classifier(mutated)
    assert str(mutated) in str(exc.value)


@pytest.mark.parametrize("port", ["-1", "0", "70000"])
def test_a_bad_master_port_is_bad_input(port):
    from ci_gate.distributed import Shard

    with pytest.raises(InputError, match="MASTER_PORT"):
        Shard.from_launcher({"WORLD_SIZE": "2", "RANK": "0", "MASTER_PORT": port})
