"""Backbone loading: local files, SHA-256 pins, QuickGELU detection, and refusal of unsafe formats."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from open_clip.transformer import QuickGELU
from safetensors.torch import save_file

from ci_gate.checkpoint.format import BackboneSpec
from ci_gate.errors import InputError
from ci_gate.io import sha256_file
from ci_gate.model.backbone import build_backbone, decide_quick_gelu, is_torchscript_archive, read_state_dict
from ci_gate.model.small import embedded_backbone, random_clip_state, small_config

TINY = small_config("tiny-32")


@pytest.fixture(scope="module")
def state() -> dict[str, torch.Tensor]:
    return random_clip_state(TINY, seed=0)


@pytest.fixture(scope="module")
def files(state, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("weights")
    st, pt = root / "tiny.safetensors", root / "tiny.pt"
    save_file(state, str(st))
    torch.save(state, pt)
    openai = root / "tiny-openai.pt"
    markers = {"input_resolution": torch.tensor(32), "context_length": torch.tensor(77), "vocab_size": torch.tensor(49408)}
    torch.save({**state, **markers}, openai)
    return {"safetensors": st, "pt": pt, "openai": openai}


def _spec(**kw) -> BackboneSpec:
    return BackboneSpec(config=small_config("tiny-32"), **{"pretrained": "tiny", **kw})


def _activations(clip) -> set[type]:
    return {type(clip.transformer.resblocks[0].mlp.gelu), type(clip.visual.transformer.resblocks[0].mlp.gelu)}


def test_embedded_backbone_is_frozen_and_pinned(state) -> None:
    spec, backbone = embedded_backbone(TINY, state)
    assert backbone.reference == "embedded" and backbone.sha256 == spec.sha256
    assert not backbone.clip.training
    assert not any(p.requires_grad for p in backbone.clip.parameters())
    assert torch.equal(backbone.clip.token_embedding.weight, state["token_embedding.weight"])


@pytest.mark.parametrize("kind", ["safetensors", "pt"])
def test_local_weights_file_loads_and_records_its_digest(state, files, kind) -> None:
    path = files[kind]
    backbone = build_backbone(_spec(), weights=path)
    assert backbone.sha256 == sha256_file(path)
    assert backbone.quick_gelu is False and backbone.notes == []
    for name, value in backbone.clip.state_dict().items():
        assert torch.equal(value, state[name]), name


def test_pinned_sha256_mismatch_is_refused(files) -> None:
    with pytest.raises(InputError) as err:
        build_backbone(_spec(sha256="0" * 64), weights=files["safetensors"])
    assert err.value.path == str(files["safetensors"])
    assert "does not match the pinned" in err.value.problem


def test_pinned_sha256_match_is_accepted(files) -> None:
    build_backbone(_spec(sha256=sha256_file(files["pt"])), weights=files["pt"])


def test_openai_markers_switch_to_quick_gelu_with_a_note(files) -> None:
    backbone = build_backbone(_spec(), weights=files["openai"])
    assert backbone.quick_gelu is True
    assert _activations(backbone.clip) == {QuickGELU}
    assert any("QuickGELU" in note for note in backbone.notes)


def test_plain_weights_keep_gelu(files) -> None:
    backbone = build_backbone(_spec(), weights=files["pt"])
    assert _activations(backbone.clip) == {torch.nn.GELU}


def test_openai_markers_with_gelu_pinned_are_refused(files) -> None:
    with pytest.raises(InputError, match="QuickGELU"):
        build_backbone(_spec(quick_gelu=False), weights=files["openai"])


def test_openai_tag_is_detected_from_open_clips_registry_without_download() -> None:
    openai = BackboneSpec(architecture="ViT-B-16", pretrained="openai")
    assert decide_quick_gelu(openai, config_quick_gelu=False, openai_format=False)[0] is True
    assert "QuickGELU" in (decide_quick_gelu(openai, False, False)[1] or "")
    # The '-quickgelu' architecture already has it: no override, so no note.
    assert decide_quick_gelu(BackboneSpec(architecture="ViT-B-16-quickgelu", pretrained="openai"), True, False) == (True, None)
    # A LAION tag was trained with plain GELU.
    laion = BackboneSpec(architecture="ViT-B-16", pretrained="laion2b_s34b_b88k")
    assert decide_quick_gelu(laion, False, False) == (False, None)
    with pytest.raises(InputError, match="quick_gelu=false"):
        decide_quick_gelu(BackboneSpec(architecture="ViT-B-16", pretrained="openai", quick_gelu=False), False, False)


def test_pinned_quick_gelu_wins_without_openai_evidence() -> None:
    assert decide_quick_gelu(_spec(quick_gelu=True), False, False) == (True, None)
    assert decide_quick_gelu(_spec(quick_gelu=None), True, False) == (True, None)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch deprecates TorchScript; we only need an archive
def test_torchscript_archive_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))
    assert is_torchscript_archive(path)
    with pytest.raises(InputError, match="TorchScript"):
        read_state_dict(path)


class _Payload:
    """Runs os.mkdir on unpickling, if anything ever unpickled it."""

    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (os.mkdir, (str(self.target),))


def test_pickled_code_is_refused_and_never_runs(state, tmp_path: Path) -> None:
    marker = tmp_path / "payload-ran"
    path = tmp_path / "evil.pt"
    torch.save({**state, "extra": _Payload(marker)}, path)
    with pytest.raises(InputError, match="weights_only"):
        read_state_dict(path)
    assert not marker.exists()


def test_wrapped_state_dict_with_module_prefix(state, tmp_path: Path) -> None:
    path = tmp_path / "wrapped.pt"
    torch.save({"state_dict": {"module." + k: v for k, v in state.items()}, "epoch": 3}, path)
    assert set(read_state_dict(path)) == set(state)


def test_weights_that_do_not_fit_are_an_input_error(state, tmp_path: Path) -> None:
    path = tmp_path / "partial.safetensors"
    save_file({k: v for k, v in state.items() if not k.startswith("visual.")}, str(path))
    with pytest.raises(InputError, match="do not fit the architecture"):
        build_backbone(_spec(), weights=path)


def test_truncated_safetensors_weights(files, tmp_path: Path) -> None:
    path = tmp_path / "cut.safetensors"
    path.write_bytes(files["safetensors"].read_bytes()[:1000])
    with pytest.raises(InputError) as err:
        build_backbone(_spec(), weights=path)
    assert err.value.path == str(path)


def test_missing_weights_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        build_backbone(_spec(), weights=tmp_path / "nope.safetensors")


def test_a_pretrained_tag_is_the_tag_even_beside_a_file_of_that_name(files, tmp_path, monkeypatch) -> None:
    """A file called 'openai' in the working directory (a pull request can add one) must not stand
    in for the published weights: it would read as unverified and demote the scan to the
    reference-free statistic. The tag is fetched, as open_clip does."""
    import open_clip

    from ci_gate.model.backbone import resolve_weights

    monkeypatch.chdir(tmp_path)
    (tmp_path / "openai").write_bytes(files["safetensors"].read_bytes())
    fetched = []
    monkeypatch.setattr(open_clip, "download_pretrained", lambda cfg, cache_dir=None: fetched.append(cfg) or str(files["safetensors"]))
    assert resolve_weights(BackboneSpec(architecture="ViT-B-16", pretrained="openai"), None, None) == files["safetensors"]
    assert fetched, "the tag was not fetched"
    # a name that is no tag of the architecture still reads the file it names
    (tmp_path / "mine.safetensors").write_bytes(b"")
    assert resolve_weights(BackboneSpec(architecture="ViT-B-16", pretrained="mine.safetensors"), None, None) == Path("mine.safetensors")


def test_backbone_weights_for_an_embedded_tower_are_refused(state, files) -> None:
    spec, _ = embedded_backbone(TINY, state)
    with pytest.raises(InputError, match="--reference-weights") as err:
        build_backbone(spec, embedded=state, weights=files["safetensors"])
    assert err.value.path == str(files["safetensors"])
