"""Prompt learners: CoOp, CoCoOp and the hand-written zero-shot prompt.

They follow the reference implementations (KaiyangZhou/CoOp): context vectors v_1..v_M are
spliced between the SOS embedding and the class-name tokens; CoCoOp adds a meta-net
Linear(d_vis -> d_vis/16) -> ReLU -> Linear(-> d_ctx) whose output pi(x) shifts every context
vector for image x. Tensor names match Dassl checkpoints so conversion is a rename.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Literal

import torch
from torch import nn

from ci_gate.model.text import TextEncoder

LearnerKind = Literal["coop", "cocoop", "zeroshot"]
ZEROSHOT_TEMPLATE = "a photo of a {}."


class PromptTokens(nn.Module):
    """Frozen token embeddings of the prompts "X*M {name}." for a list of class names."""

    def __init__(self, clip: nn.Module, tokenizer, class_names: list[str], n_ctx: int):
        super().__init__()
        placeholder = " ".join(["X"] * n_ctx)
        texts = [f"{placeholder} {name.replace('_', ' ')}." for name in class_names]
        tokens = tokenizer(texts)
        eot = getattr(tokenizer, "eot_token_id", None)
        eos = (tokens == eot).int().argmax(dim=-1) if eot is not None else tokens.argmax(dim=-1)
        if (tokens[:, -1] != 0).any():
            i = int((tokens[:, -1] != 0).nonzero()[0])
            raise ValueError(f"learner.class_names[{i}] is too long for the text encoder's context of {tokens.shape[1]} tokens")
        with torch.no_grad():
            emb = clip.token_embedding(tokens).detach()
        self.n_ctx = n_ctx
        self.register_buffer("tokens", tokens, persistent=False)
        self.register_buffer("token_prefix", emb[:, :1].clone(), persistent=False)
        self.register_buffer("token_suffix", emb[:, 1 + n_ctx :].clone(), persistent=False)
        self.register_buffer("eos_index", eos, persistent=False)
        # Kept on the host so the fast path never syncs with the device to learn shapes.
        self.fast_length = int(eos.max()) + 1
        # Classes grouped by EOS position (stable order), for the shared-prefix pass: within a
        # group every prompt has the same length, so nothing is padded. ``group_order`` lists
        # classes group by group; ``group_inverse`` puts the outputs back in class order.
        order = torch.sort(eos, stable=True).indices
        self.groups: list[tuple[int, int, int]] = []  # (start, end, suffix length) in group order
        start = 0
        for value, count in zip(*torch.unique_consecutive(eos[order], return_counts=True)):
            self.groups.append((start, start + int(count), int(value) + 1 - (1 + n_ctx)))
            start += int(count)
        self.register_buffer("group_order", order, persistent=False)
        self.register_buffer("group_inverse", torch.argsort(order), persistent=False)
        # class-token embeddings in group order, cut after the longest EOS: slicing a group out of
        # this is a view, so a forward pass copies nothing that does not depend on the image
        longest = max(s for _, _, s in self.groups)
        self.register_buffer("grouped_suffix", self.token_suffix[order, :longest].clone(), persistent=False)
        # every prompt starts with the same SOS token, so the prefix is class-independent
        self.sos_shared = bool((tokens[:, 0] == tokens[0, 0]).all())

    def group_suffixes(self) -> list[torch.Tensor]:
        """Per EOS group, the class-token embeddings (C_g, S_g, d) that follow the context."""
        return [self.grouped_suffix[a:b, :s] for a, b, s in self.groups]

    def assemble(self, ctx: torch.Tensor, length: int) -> torch.Tensor:
        """ctx: (M, d) or (B, M, d) -> prompts (C, length, d) or (B, C, length, d)."""
        suffix = self.token_suffix[:, : length - 1 - self.n_ctx]
        prefix = self.token_prefix
        n_cls = prefix.shape[0]
        if ctx.dim() == 2:
            return torch.cat([prefix, ctx.unsqueeze(0).expand(n_cls, -1, -1).to(prefix.dtype), suffix], dim=1)
        batch = ctx.shape[0]
        return torch.cat(
            [
                prefix.unsqueeze(0).expand(batch, -1, -1, -1),
                ctx.unsqueeze(1).expand(-1, n_cls, -1, -1).to(prefix.dtype),
                suffix.unsqueeze(0).expand(batch, -1, -1, -1),
            ],
            dim=2,
        )


def init_context(clip: nn.Module, tokenizer, n_ctx: int, ctx_init: str | None, generator: torch.Generator | None) -> torch.Tensor:
    width = clip.token_embedding.weight.shape[1]
    if ctx_init:
        tokens = tokenizer([ctx_init])
        n_words = int((tokens[0] > 0).sum()) - 2
        if n_words != n_ctx:
            raise ValueError(f"ctx_init {ctx_init!r} has {n_words} tokens, expected n_ctx={n_ctx}")
        with torch.no_grad():
            return clip.token_embedding(tokens)[0, 1 : 1 + n_ctx].detach().clone()
    return torch.randn(n_ctx, width, generator=generator) * 0.02


class PromptLearner(nn.Module):
    """CoOp (no meta-net) or CoCoOp (meta-net) context over a frozen text encoder."""

    def __init__(self, kind: LearnerKind, ctx: torch.Tensor, vis_dim: int, meta_net: bool):
        super().__init__()
        self.kind = kind
        self.ctx = nn.Parameter(ctx.clone())
        self.meta_net = None
        if meta_net:
            ctx_dim = ctx.shape[1]
            self.meta_net = nn.Sequential(
                OrderedDict(
                    [
                        ("linear1", nn.Linear(vis_dim, vis_dim // 16)),
                        ("relu", nn.ReLU(inplace=True)),
                        ("linear2", nn.Linear(vis_dim // 16, ctx_dim)),
                    ]
                )
            )

    @property
    def n_ctx(self) -> int:
        return self.ctx.shape[0]

    def text_features(self, encoder: TextEncoder, prompts: PromptTokens, length: int, image_features: torch.Tensor | None = None) -> torch.Tensor:
        """(C, D) for CoOp; (B, C, D) for CoCoOp given normalised image features (B, d_vis)."""
        if self.meta_net is None:
            emb = prompts.assemble(self.ctx, length)
            return encoder(emb, prompts.eos_index)
        assert image_features is not None
        ctx = self.conditional_context(image_features)
        emb = prompts.assemble(ctx, length)
        batch, n_cls = emb.shape[:2]
        feats = encoder(emb.flatten(0, 1), prompts.eos_index.repeat(batch))
        return feats.view(batch, n_cls, -1)

    def conditional_context(self, image_features: torch.Tensor) -> torch.Tensor:
        """CoCoOp: v_m + pi(x) for every image, (B, M, d)."""
        bias = self.meta_net(image_features.to(self.ctx.dtype))
        return self.ctx.unsqueeze(0) + bias.unsqueeze(1)

    def text_features_shared(self, encoder: TextEncoder, prompts: PromptTokens, image_features: torch.Tensor) -> torch.Tensor:
        """CoCoOp text features (B, C, D) with the per-image prefix encoded once for all classes.

        Equal to ``text_features`` (see ci_gate.model.text); callers check
        ``encoder.shares_prefix`` and ``prompts.sos_shared`` first.
        """
        ctx = self.conditional_context(image_features)
        batch = ctx.shape[0]
        sos = prompts.token_prefix[:1].expand(batch, -1, -1)
        prefix = torch.cat([sos, ctx.to(sos.dtype)], dim=1)
        feats = torch.cat(encoder.forward_shared_prefix(prefix, prompts.group_suffixes()), dim=1)
        return feats.index_select(1, prompts.group_inverse)

    def named_tensors(self) -> dict[str, torch.Tensor]:
        """Tensors as stored in checkpoints (Dassl names)."""
        out = {"ctx": self.ctx.detach()}
        if self.meta_net is not None:
            for key, value in self.meta_net.state_dict().items():
                out[f"meta_net.{key}"] = value.detach()
        return out
