"""The self-describing safetensors checkpoint: round trip, atomic writes, and precise refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from ci_gate.checkpoint.format import (
    BACKBONE_PREFIX,
    LEARNER_PREFIX,
    META_KEY,
    BackboneSpec,
    CheckpointMeta,
    LearnerSpec,
    Preprocessing,
    backbone_digest,
    load_checkpoint,
    save_checkpoint,
)
from ci_gate.errors import InputError
from ci_gate.io import sha256_file


def _meta(**learner) -> CheckpointMeta:
    spec = {"kind": "coop", "class_names": ["cat", "dog", "golden_retriever"], "n_ctx": 4, **learner}
    return CheckpointMeta(
        learner=LearnerSpec(**spec),
        backbone=BackboneSpec(architecture="ViT-B-16", pretrained="openai", sha256="ab" * 32, quick_gelu=True),
        preprocessing=Preprocessing(image_size=224),
        provenance={"producer": "test"},
    )


def _ctx() -> dict[str, torch.Tensor]:
    return {"ctx": torch.randn(4, 16, generator=torch.Generator().manual_seed(0)).half()}


def _write_raw(path: Path, meta: dict | str | None, tensors: dict[str, torch.Tensor] | None = None) -> Path:
    tensors = tensors if tensors is not None else {LEARNER_PREFIX + "ctx": torch.zeros(4, 16)}
    header = None if meta is None else {META_KEY: meta if isinstance(meta, str) else json.dumps(meta)}
    save_file(tensors, str(path), metadata=header)
    return path


def test_round_trip_keeps_meta_tensors_and_digest(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    meta, tensors = _meta(), _ctx()
    digest = save_checkpoint(path, meta, tensors)
    ckpt = load_checkpoint(path)
    assert digest == sha256_file(path) == ckpt.sha256
    assert ckpt.meta == meta
    assert ckpt.learner_tensors["ctx"].dtype == torch.float16
    assert torch.equal(ckpt.learner_tensors["ctx"], tensors["ctx"])
    assert ckpt.backbone_tensors == {}


def test_save_is_atomic_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, _meta(), _ctx())
    save_checkpoint(path, _meta(class_names=["a", "b"]), _ctx())  # replaces in one rename
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]
    assert load_checkpoint(path).meta.learner.class_names == ["a", "b"]


def test_same_inputs_give_identical_bytes(tmp_path: Path) -> None:
    a = save_checkpoint(tmp_path / "a.safetensors", _meta(), _ctx())
    b = save_checkpoint(tmp_path / "b.safetensors", _meta(), _ctx())
    assert a == b


def test_truncated_file_is_an_input_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, _meta(), _ctx())
    data = path.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) - 40])
    with pytest.raises(InputError) as err:
        load_checkpoint(cut)
    assert err.value.path == str(cut)
    assert "truncated or corrupt" in str(err.value)


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda m: m["learner"].update(kind="lora"), "learner.kind"),
        (lambda m: m["learner"].update(class_names=["only"]), "learner.class_names"),
        (lambda m: m["learner"].update(class_names=["a", "a"]), "unique"),
        (lambda m: m["backbone"].update(config={"embed_dim": 8}), "backbone"),
        (lambda m: m["preprocessing"].update(image_size=4), "preprocessing.image_size"),
        (lambda m: m.update(surprise=1), "surprise"),
        (lambda m: m.pop("learner"), "learner"),
    ],
)
def test_bad_metadata_names_the_field(tmp_path: Path, mutate, field: str) -> None:
    raw = json.loads(_meta().model_dump_json())
    mutate(raw)
    path = _write_raw(tmp_path / "bad.safetensors", raw)
    with pytest.raises(InputError) as err:
        load_checkpoint(path)
    assert str(err.value).startswith(f"{path}: metadata")
    assert field in str(err.value)


def test_metadata_that_is_not_json(tmp_path: Path) -> None:
    path = _write_raw(tmp_path / "bad.safetensors", "{not json")
    with pytest.raises(InputError, match="metadata: not valid JSON"):
        load_checkpoint(path)


def test_plain_safetensors_without_metadata(tmp_path: Path) -> None:
    path = _write_raw(tmp_path / "plain.safetensors", None)
    with pytest.raises(InputError, match="no ci-gate metadata"):
        load_checkpoint(path)


def test_unsupported_format_version(tmp_path: Path) -> None:
    raw = json.loads(_meta().model_dump_json())
    raw["format_version"] = 99
    with pytest.raises(InputError, match="metadata.format_version: version 99 is not supported"):
        load_checkpoint(_write_raw(tmp_path / "v99.safetensors", raw))


def test_pickle_and_torch_save_files_are_sent_to_convert(tmp_path: Path) -> None:
    import pickle

    pickled = tmp_path / "model.pth"
    pickled.write_bytes(pickle.dumps({"ctx": [0.0]}, protocol=4))  # written, never read back
    zipped = tmp_path / "model.safetensors"  # judged by content: the name does not help
    torch.save({"ctx": torch.zeros(2)}, zipped)
    with pytest.raises(InputError, match="a pickle/torch.save file, not safetensors; .*ci-gate convert"):
        load_checkpoint(pickled)
    with pytest.raises(InputError, match="a zip archive .*ci-gate convert"):
        load_checkpoint(zipped)


def test_safetensors_named_bin_is_read_by_content(tmp_path: Path) -> None:
    path = tmp_path / "model.bin"
    save_checkpoint(path, _meta(), _ctx())
    assert load_checkpoint(path).meta == _meta()


def test_other_bytes_with_a_pickle_suffix_get_a_hint(tmp_path: Path) -> None:
    path = tmp_path / "model.pth"
    path.write_bytes(b"whatever, not a model")
    with pytest.raises(InputError, match="not a safetensors file.*ci-gate convert"):
        load_checkpoint(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        load_checkpoint(tmp_path / "nope.safetensors")


def test_nan_tensor_is_named(tmp_path: Path) -> None:
    ctx = torch.zeros(4, 16)
    ctx[1, 2] = float("nan")
    path = tmp_path / "nan.safetensors"
    save_checkpoint(path, _meta(), {"ctx": ctx})
    with pytest.raises(InputError, match="'ctx' contains NaN"):
        load_checkpoint(path)


def test_ctx_shape_must_match_n_ctx(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, _meta(n_ctx=8), _ctx())
    with pytest.raises(InputError, match=r"ctx has shape \(4, 16\)"):
        load_checkpoint(path)


def test_cocoop_without_meta_net_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, _meta(kind="cocoop"), _ctx())
    with pytest.raises(InputError, match="lacks tensors"):
        load_checkpoint(path)


def test_stray_tensor_names_are_refused(tmp_path: Path) -> None:
    raw = json.loads(_meta().model_dump_json())
    tensors = {LEARNER_PREFIX + "ctx": torch.zeros(4, 16), "elsewhere.x": torch.zeros(1)}
    with pytest.raises(InputError, match="unexpected tensors"):
        load_checkpoint(_write_raw(tmp_path / "m.safetensors", raw, tensors))


def _embedded_meta(digest: str) -> CheckpointMeta:
    meta = _meta()
    backbone = BackboneSpec(config={"embed_dim": 8, "vision_cfg": {}, "text_cfg": {}}, embedded=True, sha256=digest, quick_gelu=False)
    return meta.model_copy(update={"backbone": backbone})


def test_embedded_backbone_digest_is_checked(tmp_path: Path) -> None:
    backbone = {"a.weight": torch.ones(2, 2), "b.bias": torch.zeros(3)}
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, _embedded_meta(backbone_digest(backbone)), _ctx(), backbone)
    assert set(load_checkpoint(path).backbone_tensors) == set(backbone)

    tampered = {**backbone, "b.bias": torch.full((3,), 1e-3)}
    save_checkpoint(path, _embedded_meta(backbone_digest(backbone)), _ctx(), tampered)
    with pytest.raises(InputError, match="do not match their pinned SHA-256"):
        load_checkpoint(path)


def test_backbone_digest_ignores_order_but_not_dtype() -> None:
    a = {"x": torch.arange(4.0), "y": torch.ones(2)}
    b = {"y": torch.ones(2), "x": torch.arange(4.0)}
    assert backbone_digest(a) == backbone_digest(b)
    assert backbone_digest(a) != backbone_digest({"x": torch.arange(4.0).half(), "y": torch.ones(2)})


def test_prefixes_in_file(tmp_path: Path) -> None:
    from safetensors import safe_open

    path = tmp_path / "m.safetensors"
    save_checkpoint(path, _embedded_meta(backbone_digest({"w": torch.ones(1)})), _ctx(), {"w": torch.ones(1)})
    with safe_open(str(path), framework="pt") as fh:
        assert sorted(fh.keys()) == [BACKBONE_PREFIX + "w", LEARNER_PREFIX + "ctx"]


def test_every_registered_open_clip_clip_config_passes_the_inline_config_check() -> None:
    """The inline-config check must not refuse what open_clip itself builds: its registered CLIP
    configs (CoCa's multimodal_cfg is not a CLIP argument), minus the flags that download tower
    weights, which an inline config may not set."""
    import copy

    import open_clip

    from ci_gate.checkpoint.format import check_inline_config

    checked = 0
    for name in open_clip.list_models():
        cfg = copy.deepcopy(open_clip.get_model_config(name))
        if "multimodal_cfg" in cfg:
            continue
        for tower in ("vision_cfg", "text_cfg"):
            for flag in ("timm_model_pretrained", "hf_model_pretrained"):
                cfg.get(tower, {}).pop(flag, None)
        check_inline_config(json.loads(json.dumps(cfg)))
        checked += 1
    assert checked > 100
    with pytest.raises(ValueError, match="multimodal_cfg"):
        check_inline_config(copy.deepcopy(open_clip.get_model_config("coca_ViT-B-32")))
