"""The checkpoint cannot change how the scan sees images: preprocessing comes from the backbone.

A provider who could set the scan's mean/std could blind it (std 1e6 maps every image to the
same input) while deployment, which feeds the backbone's own preprocessing, keeps the backdoor.
"""

from __future__ import annotations

import hashlib

import pytest
from checkpoint_edit import rewrite_metadata, tiny_checkpoint

from ci_gate.checkpoint.format import BackboneSpec, Preprocessing
from ci_gate.cli import main
from ci_gate.errors import InputError
from ci_gate.model.backbone import deployment_preprocessing, model_config
from ci_gate.model.factory import check_preprocessing, load_classifier
from ci_gate.model.small import small_config

OPENAI = Preprocessing(image_size=224)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("pre") / "model.safetensors", "coop", ["cat", "dog", "ship"])


def _with_preprocessing(src, dst, **fields):
    return rewrite_metadata(src, dst, lambda meta: meta["preprocessing"].update(fields))


def test_named_architecture_gets_open_clips_preprocessing():
    spec = BackboneSpec(architecture="ViT-B-16", pretrained="openai")
    pre = deployment_preprocessing(spec, model_config(spec))
    assert pre.image_size == 224 and pre.interpolation == "bicubic"
    assert pre.mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    assert pre.std == pytest.approx((0.26862954, 0.26130258, 0.27577711))


def test_inline_config_cannot_bring_its_own_preprocess_cfg():
    cfg = small_config("tiny-32") | {"preprocess_cfg": {"mean": [0.5] * 3, "std": [1e6] * 3}}
    pre = deployment_preprocessing(BackboneSpec(config=cfg, embedded=True), cfg)
    assert pre.std == pytest.approx(OPENAI.std) and pre.image_size == 32


def test_the_loaded_classifier_normalises_with_the_backbones_values(tiny):
    loaded = load_classifier(tiny)
    assert loaded.classifier.std.flatten().tolist() == pytest.approx(list(OPENAI.std))
    assert loaded.preprocessing.image_size == 32


@pytest.mark.parametrize(
    "fields, named",
    [
        ({"std": [1e6, 1e6, 1e6]}, "preprocessing.std"),
        ({"std": [0.27, 0.26, -0.27]}, "preprocessing.std"),
        ({"std": [1e-30, 1e-30, 1e-30]}, "preprocessing.std"),
        ({"mean": [1e6, 0.45, 0.4]}, "preprocessing.mean"),
        ({"mean": [0.0, 0.0, 0.0]}, "preprocessing.mean"),
        ({"image_size": 64}, "preprocessing.image_size"),
        ({"interpolation": "bilinear"}, "preprocessing.interpolation"),
    ],
)
def test_a_checkpoint_stating_other_preprocessing_is_refused(tiny, tmp_path, capsys, fields, named):
    bad = _with_preprocessing(tiny, tmp_path / "bad.safetensors", **fields)
    before = hashlib.sha256(bad.read_bytes()).hexdigest()
    pool = tmp_path / "pool"
    pool.mkdir()
    with pytest.raises(SystemExit) as exc:
        main(["verify", str(bad), "--pool", str(pool), "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2
    assert len(err) == 1 and named in err[0] and str(bad) in err[0] and "Traceback" not in err[0]
    assert not (tmp_path / "out").exists()
    assert hashlib.sha256(bad.read_bytes()).hexdigest() == before


def test_check_preprocessing_is_tolerant_of_json_rounding_only():
    check_preprocessing(None, Preprocessing(image_size=224, std=tuple(v + 1e-9 for v in OPENAI.std)), OPENAI)
    with pytest.raises(InputError, match="preprocessing.std"):
        check_preprocessing(None, Preprocessing(image_size=224, std=tuple(v + 1e-3 for v in OPENAI.std)), OPENAI)
    # NaN never gets this far (the metadata model refuses it); the check refuses it on its own too
    with pytest.raises(ValueError, match="finite"):
        Preprocessing(image_size=224, mean=(float("nan"),) * 3)
    nan_mean = Preprocessing(image_size=224).model_copy(update={"mean": (float("nan"),) * 3})
    with pytest.raises(InputError, match="preprocessing.mean"):
        check_preprocessing(None, nan_mean, OPENAI)
