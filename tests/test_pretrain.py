"""The pretraining loop's truncated text encoder is exact (the benchmark backbone relies on it)."""

from __future__ import annotations

import copy

import torch
from open_clip.model import CLIP
from open_clip.tokenizer import SimpleTokenizer

from ci_gate.model.small import small_config
from ci_gate.tuning.pretrain import full_text, truncated_text


def test_truncated_text_matches_open_clip_encode_text():
    torch.manual_seed(0)
    clip = CLIP(**copy.deepcopy(small_config("tiny-32"))).eval()
    tokens = SimpleTokenizer()(["a photo of a cat.", "an image of a rather long named thing, seen from far away."])
    with torch.no_grad():
        full, short = full_text(clip, tokens), truncated_text(clip, tokens)
    assert short.shape == full.shape
    torch.testing.assert_close(short, full, atol=1e-5, rtol=1e-4)
    # a different caption gives a different feature: the comparison is not vacuous
    assert (full[0] - full[1]).abs().max() > 1e-3
