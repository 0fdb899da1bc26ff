"""Small CLIP configurations for the demo, the tests and the benchmark (no downloadable weights
exist on air-gapped runners, so these are built from open_clip configs and trained locally)."""

from __future__ import annotations

import copy

import torch
from open_clip.model import CLIP

from ci_gate.checkpoint.format import BackboneSpec, backbone_digest
from ci_gate.model.backbone import Backbone, build_backbone
from ci_gate.rng import global_rng

SMALL_CONFIGS: dict[str, dict] = {
    # about 1.5M parameters outside the token embedding; for tests and the demo
    "tiny-32": {
        "embed_dim": 64,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
    },
    # about 9M parameters; the benchmark's backbone, pretrained on Tiny ImageNet
    "small-64": {
        "embed_dim": 128,
        "vision_cfg": {"image_size": 64, "layers": 4, "width": 192, "patch_size": 8, "head_width": 64},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 128, "heads": 4, "layers": 4},
    },
}


def small_config(name: str) -> dict:
    return copy.deepcopy(SMALL_CONFIGS[name])


def random_clip_state(config: dict, seed: int) -> dict[str, torch.Tensor]:
    with global_rng(seed):
        clip = CLIP(**copy.deepcopy(config))
    return {k: v.detach().clone() for k, v in clip.state_dict().items()}


def embedded_backbone(config: dict, state: dict[str, torch.Tensor]) -> tuple[BackboneSpec, Backbone]:
    spec = BackboneSpec(config=copy.deepcopy(config), embedded=True, sha256=backbone_digest(state), quick_gelu=False)
    return spec, build_backbone(spec, embedded=state)
