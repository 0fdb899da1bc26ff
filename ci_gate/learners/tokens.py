"""Prompt tokens shared by the context-vector learners: [SOS, v_1..v_M, class name, '.', EOS].

As in the reference implementations (KaiyangZhou/CoOp), context vectors are spliced between the
SOS embedding and the class-name tokens; the frozen embeddings around them are built once.

CoOp also places the class name in the ``middle`` of the context or at its ``front``
(``CLASS_TOKEN_POSITION``; PromptLearner.forward there):

* end:    [SOS, v_1..v_M, name, '.', EOS]
* middle: [SOS, v_1..v_h, name, v_h+1..v_M, '.', EOS] with h = M // 2
* front:  [SOS, name, v_1..v_M, '.', EOS]

where ``name`` is the first len(tokenizer.encode(name)) tokens after the context in the
end-layout prompt, and everything after them ('.', EOS, padding) stays in place. Every layout
is therefore a per-class permutation of the end layout's first 1 + M + len(name) positions: the
EOS (and what a causal tower computes there) sits at the same position in all three, so the
truncation to the longest EOS stays exact. :meth:`PromptTokens.assemble` builds the end layout
and gathers it through that permutation (a gather copies the embeddings bit for bit).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

ClassTokenPosition = Literal["end", "middle", "front"]


def check_prompt_tokens(tokens: torch.Tensor) -> None:
    """The tokenized prompts of every class, one row each, must fit the context and differ."""
    if (tokens[:, -1] != 0).any():
        i = int((tokens[:, -1] != 0).nonzero()[0])
        raise ValueError(f"learner.class_names[{i}] is too long for the text encoder's context of {tokens.shape[1]} tokens")
    _refuse_twins(tokens)


def _refuse_twins(tokens: torch.Tensor) -> None:
    """Two classes whose prompts tokenize alike tie on every input: each one's margin is pinned at
    0, so the scan can never flag it, while deployment's argmax still picks the first. The
    tokenizer undoes more than any check on the raw strings could (HTML escapes, full-width
    letters, ftfy's fixes: "stop&#32;sign" is "stop sign"), so the ids decide."""
    first: dict[tuple[int, ...], int] = {}
    for i, row in enumerate(tokens.tolist()):
        j = first.setdefault(tuple(row), i)
        if j != i:
            raise ValueError(f"learner.class_names[{j}] and [{i}] give the text encoder the same tokens: two classes no input can tell apart")


class PromptTokens(nn.Module):
    """Frozen token embeddings of the prompts "X*M {name}." for a list of class names."""

    def __init__(self, clip: nn.Module, tokenizer, class_names: list[str], n_ctx: int, class_token_position: ClassTokenPosition = "end"):
        super().__init__()
        placeholder = " ".join(["X"] * n_ctx)
        texts = [f"{placeholder} {name.replace('_', ' ')}." for name in class_names]
        tokens = tokenizer(texts)
        eos = _eos_positions(tokenizer, tokens)
        check_prompt_tokens(tokens)
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
        self.class_token_position = class_token_position
        layout = None
        if class_token_position != "end":
            # the reference counts the name's tokens on its own (name_lens), not up to the '.'
            names = [name.replace("_", " ") for name in class_names]
            name_lens = (_eos_positions(tokenizer, tokenizer(names)) - 1).tolist()
            layout = layout_index(class_token_position, n_ctx, name_lens, tokens.shape[1])
            # counted alone, a name could in principle take more tokens than precede the '.'
            # (BPE merges across the boundary); keep every moved position inside the cut anyway
            self.fast_length = max(self.fast_length, 1 + n_ctx + max(name_lens))
        self.register_buffer("layout_index", layout, persistent=False)

    def group_suffixes(self) -> list[torch.Tensor]:
        """Per EOS group, the class-token embeddings (C_g, S_g, d) that follow the context.

        Only the end layout has a context prefix shared by every class."""
        if self.class_token_position != "end":
            raise ValueError(f"the shared-prefix pass needs the class token at the end, not {self.class_token_position!r}")
        return [self.grouped_suffix[a:b, :s] for a, b, s in self.groups]

    def assemble(self, ctx: torch.Tensor, length: int, per_class: bool = False) -> torch.Tensor:
        """ctx: (M, d) shared, (B, M, d) per image, or with ``per_class`` (C, M, d) one context per
        class -> prompts (C, length, d), or (B, C, length, d) for per-image contexts."""
        suffix = self.token_suffix[:, : length - 1 - self.n_ctx]
        prefix = self.token_prefix
        n_cls = prefix.shape[0]
        if per_class:
            if ctx.dim() != 3 or ctx.shape[0] != n_cls:
                raise ValueError(f"class-specific context of shape {tuple(ctx.shape)} for {n_cls} classes")
            prompts = torch.cat([prefix, ctx.to(prefix.dtype), suffix], dim=1)
        elif ctx.dim() == 2:
            prompts = torch.cat([prefix, ctx.unsqueeze(0).expand(n_cls, -1, -1).to(prefix.dtype), suffix], dim=1)
        else:
            batch = ctx.shape[0]
            prompts = torch.cat(
                [
                    prefix.unsqueeze(0).expand(batch, -1, -1, -1),
                    ctx.unsqueeze(1).expand(-1, n_cls, -1, -1).to(prefix.dtype),
                    suffix.unsqueeze(0).expand(batch, -1, -1, -1),
                ],
                dim=2,
            )
        if self.layout_index is None:
            return prompts
        # positions up to each prompt's EOS only move among themselves, so a prompt cut at any
        # length past the longest name still draws every position from inside the cut
        index = self.layout_index[:, :length].unsqueeze(-1).expand(prompts.shape)
        return prompts.gather(-2, index)


def _eos_positions(tokenizer, tokens: torch.Tensor) -> torch.Tensor:
    eot = getattr(tokenizer, "eot_token_id", None)
    return (tokens == eot).int().argmax(dim=-1) if eot is not None else tokens.argmax(dim=-1)


def layout_index(position: ClassTokenPosition, n_ctx: int, name_lens: list[int], length: int) -> torch.Tensor:
    """(C, length): for each class, which position of its end-layout prompt goes where.

    End layout: SOS at 0, v_j at 1 + j, the name's tokens at 1 + M .. M + n, the rest after them."""
    rows = []
    ctx = list(range(1, 1 + n_ctx))
    half = n_ctx // 2
    for n in name_lens:
        name = list(range(1 + n_ctx, 1 + n_ctx + n))
        if position == "front":
            head = [0, *name, *ctx]
        elif position == "middle":
            head = [0, *ctx[:half], *name, *ctx[half:]]
        elif position == "end":
            head = [0, *ctx, *name]
        else:
            raise ValueError(f"unknown class token position {position!r}")
        rows.append(head + list(range(len(head), length)))
    return torch.tensor(rows, dtype=torch.long)


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


def stored_rows_close(expected: torch.Tensor, stored: torch.Tensor) -> torch.Tensor:
    """Per row, whether ``stored`` equals ``expected`` up to the rounding of ``stored``'s dtype:
    how prompt-token embeddings a Dassl file keeps (usually fp16) are checked against the ones
    a backbone gives."""
    info = torch.finfo(stored.dtype)
    exp, got = expected.float(), stored.float()
    ok = (exp - got).abs() <= 2 * info.eps * exp.abs() + info.smallest_normal
    return ok.flatten(1).all(dim=1)
