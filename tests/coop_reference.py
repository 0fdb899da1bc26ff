"""CoOp's prompts and logits as the reference implementation computes them (KaiyangZhou/CoOp,
trainers/coop.py: PromptLearner.__init__/forward, TextEncoder, CustomCLIP), rewritten here
straight from it and independently of ci_gate.learners: the full 77-token prompts, one class at a
time for ``middle``/``front`` as the reference loops, through open_clip's own text transformer.

``half`` and ``name_lens`` can be overridden to build mutants.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def construct_prompts(clip, tokenizer, class_names: list[str], ctx: torch.Tensor, position: str, half: int | None = None, name_lens: list[int] | None = None):
    """(prompt embeddings (C, 77, d), tokenized prompts (C, 77)) for ctx (M, d) or CSC (C, M, d)."""
    n_cls, n_ctx = len(class_names), ctx.shape[-2]
    names = [name.replace("_", " ") for name in class_names]
    if name_lens is None:
        name_lens = [len(tokenizer.encode(name)) for name in names]
    prompt_prefix = " ".join(["X"] * n_ctx)
    tokenized = torch.cat([tokenizer([prompt_prefix + " " + name + "."]) for name in names])
    with torch.no_grad():
        embedding = clip.token_embedding(tokenized)
    prefix, suffix = embedding[:, :1, :], embedding[:, 1 + n_ctx :, :]
    if ctx.dim() == 2:
        ctx = ctx.unsqueeze(0).expand(n_cls, -1, -1)
    if position == "end":
        return torch.cat([prefix, ctx, suffix], dim=1), tokenized
    half = n_ctx // 2 if half is None else half
    prompts = []
    for i in range(n_cls):
        name_len = name_lens[i]
        prefix_i = prefix[i : i + 1, :, :]
        class_i = suffix[i : i + 1, :name_len, :]
        suffix_i = suffix[i : i + 1, name_len:, :]
        if position == "middle":
            parts = [prefix_i, ctx[i : i + 1, :half, :], class_i, ctx[i : i + 1, half:, :], suffix_i]
        elif position == "front":
            parts = [prefix_i, class_i, ctx[i : i + 1, :, :], suffix_i]
        else:
            raise ValueError(position)
        prompts.append(torch.cat(parts, dim=1))
    return torch.cat(prompts, dim=0), tokenized


def text_features(clip, prompts: torch.Tensor, tokenized: torch.Tensor) -> torch.Tensor:
    x = prompts + clip.positional_embedding
    x = clip.transformer(x, attn_mask=clip.attn_mask)  # open_clip's blocks are batch-first
    x = clip.ln_final(x)
    # the feature at the EOT token, the highest id in each sequence
    return x[torch.arange(x.shape[0]), tokenized.argmax(dim=-1)] @ clip.text_projection


def logits(clip, tokenizer, class_names, ctx, position, images01, mean, std, **mutant) -> torch.Tensor:
    """CustomCLIP.forward on [0, 1] images normalised with the backbone's mean/std."""
    mean = torch.tensor(mean).view(1, 3, 1, 1)
    std = torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        image = F.normalize(clip.visual((images01 - mean) / std), dim=-1)
        text = F.normalize(text_features(clip, *construct_prompts(clip, tokenizer, class_names, ctx, position, **mutant)), dim=-1)
        return clip.logit_scale.exp() * image @ text.t()
