"""Text-encoder passes over prompt embeddings: the plain one, truncated, and the shared-prefix one.

CLIP's text transformer is causal and pools the feature at the EOS token, so the output for a
prompt depends only on positions up to its EOS. Two exact consequences make scans fast:

* Truncation: running on the shortest sequence that holds every EOS instead of the full context
  (77 tokens) gives the same EOS features (``TextEncoder.forward`` with a short input).
* Shared prefix (CoCoOp): every prompt of one image starts with the same tokens,
  [SOS, v_1 + pi(x), ..., v_M + pi(x)]; only the class-name tokens after them differ. Causality
  means the prefix's hidden states never see the class name, so they are computed once per image
  and the class-name tokens attend to their keys and values (a KV cache shared by all classes).
  In the last layer only the EOS query is needed. Classes are grouped by EOS position so each
  group is a dense batch without padding.

Both only hold for a causal mask and EOS pooling; ``TextEncoder`` checks both and the callers
fall back to the full-context pass otherwise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from open_clip.transformer import ResidualAttentionBlock
from torch import nn

_EOS_POOLING = ("argmax", "eos")  # open_clip pool types that read the EOS position


def is_causal_mask(mask: torch.Tensor | None) -> bool:
    """True for open_clip's additive causal mask: -inf strictly above the diagonal, 0 elsewhere."""
    if mask is None or mask.dim() != 2 or mask.shape[0] != mask.shape[1]:
        return False
    upper = torch.ones(mask.shape, dtype=torch.bool, device=mask.device).triu(1)
    return bool(torch.isneginf(mask[upper]).all()) and bool((mask[~upper] == 0).all())


def _plain_block(blk: nn.Module) -> bool:
    """The shared-prefix pass re-implements open_clip's default block; other block types fall back."""
    attn = getattr(blk, "attn", None)
    return (
        type(blk) is ResidualAttentionBlock
        and not hasattr(blk, "ln_1_kv")
        and isinstance(attn, nn.MultiheadAttention)
        and attn.batch_first
        and attn._qkv_same_embed_dim
        and attn.bias_k is None
        and not attn.add_zero_attn
    )


class TextEncoder(nn.Module):
    """Wraps an open_clip CLIP text tower; takes embeddings, not token ids."""

    def __init__(self, clip: nn.Module):
        super().__init__()
        self.transformer = clip.transformer
        self.ln_final = clip.ln_final
        self.text_projection = clip.text_projection
        self.register_buffer("positional_embedding", clip.positional_embedding.detach(), persistent=False)
        mask = clip.attn_mask
        self.register_buffer("attn_mask", None if mask is None else mask.detach(), persistent=False)
        self.context_length = clip.positional_embedding.shape[0]
        pool = getattr(clip, "text_pool_type", "argmax")
        if pool not in _EOS_POOLING:
            # 'last'/'first' pooling (SigLIP-style towers) would make every prompt feature wrong
            raise ValueError(f"text tower pools with {pool!r}; ci-gate supports EOS-pooled CLIP text towers only")
        # Truncation and prefix sharing are exact only when no position sees a later one.
        self.causal = is_causal_mask(self.attn_mask)
        self.shares_prefix = self.causal and getattr(self.transformer, "batch_first", False) and all(
            _plain_block(b) for b in self.transformer.resblocks
        )

    def _project(self, x: torch.Tensor) -> torch.Tensor:
        x = self.ln_final(x)
        proj = self.text_projection
        if proj is None:
            return x
        return proj(x) if isinstance(proj, nn.Linear) else x @ proj

    def forward(self, embeddings: torch.Tensor, eos_index: torch.Tensor, deep_prompts: list[torch.Tensor] | None = None) -> torch.Tensor:
        """embeddings: (N, L, width) with L <= context length; eos_index: (N,) positions < L.

        ``deep_prompts`` (deep prompt learners such as MaPLe): tensors (n, width) that replace
        the hidden states at positions 1..n (right after SOS) at the input of layers 1, 2, ...,
        one tensor per layer; layer 0 sees ``embeddings`` as given.

        This is open_clip's own block stack; with L < context length it is only exact for a
        causal encoder (``self.causal``), which the caller checks (deep prompts sit before EOS,
        so truncation stays exact with them).
        """
        length = embeddings.shape[1]
        x = embeddings + self.positional_embedding[:length].to(embeddings.dtype)
        mask = None if self.attn_mask is None else self.attn_mask[:length, :length]
        if deep_prompts:
            x = self._deep_blocks(x, mask, deep_prompts)
        else:
            x = self.transformer(x, attn_mask=mask)
        x = x[torch.arange(x.shape[0], device=x.device), eos_index]
        return self._project(x)

    def _deep_blocks(self, x: torch.Tensor, mask: torch.Tensor | None, deep_prompts: list[torch.Tensor]) -> torch.Tensor:
        blocks = self.transformer.resblocks
        if len(deep_prompts) >= len(blocks):
            raise ValueError(f"{len(deep_prompts)} deep prompts for a text tower of {len(blocks)} layers (at most {len(blocks) - 1})")
        batch_first = getattr(self.transformer, "batch_first", True)
        for i, blk in enumerate(blocks):
            if 1 <= i <= len(deep_prompts):
                p = deep_prompts[i - 1].to(x.dtype)
                x = torch.cat([x[:, :1], p.unsqueeze(0).expand(x.shape[0], -1, -1), x[:, 1 + p.shape[0] :]], dim=1)
            x = blk(x, attn_mask=mask) if batch_first else blk(x.transpose(0, 1), attn_mask=mask).transpose(0, 1)
        return x

    def forward_shared_prefix(self, prefix: torch.Tensor, suffixes: list[torch.Tensor]) -> list[torch.Tensor]:
        """EOS features of prompts [prefix_n, suffix_c] for every image n and class c.

        prefix: (N, P, width) per-image prefix embeddings (positions 0..P-1);
        suffixes: per group, (C_g, S_g, width) class-token embeddings for positions P..P+S_g-1,
        whose last position is every prompt's EOS. Returns per group (N, C_g, D).
        Requires ``self.shares_prefix``.
        """
        blocks = list(self.transformer.resblocks)
        last = len(blocks) - 1
        n, p = prefix.shape[:2]
        pos = self.positional_embedding
        # Prefix pass, once per image. Only its keys/values are read by the class tokens, so the
        # last layer stops after computing them.
        h = prefix + pos[:p].to(prefix.dtype)
        prefix_kv = []
        for i, blk in enumerate(blocks):
            q, k, v = _qkv(blk, blk.ln_1(h))
            prefix_kv.append((k, v))
            if i == last:
                break
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            h = h + blk.ls_1(_out(blk, a))
            h = h + blk.ls_2(blk.mlp(blk.ln_2(h)))
        return [self._suffix_pass(blocks, prefix_kv, n, p, s + pos[p : p + s.shape[1]].to(s.dtype)) for s in suffixes]

    def _suffix_pass(self, blocks, prefix_kv, n: int, p: int, x: torch.Tensor) -> torch.Tensor:
        c, s, width = x.shape
        last = len(blocks) - 1
        # suffix position i (absolute P+i) sees every prefix key and suffix keys 0..i
        mask = torch.ones(s, p + s, dtype=torch.bool, device=x.device).tril(diagonal=p)
        # Layer 0's input does not depend on the image: keep it (1, C, S, W) and let broadcasting
        # share its LayerNorm and QKV projection across the N images.
        x = x.unsqueeze(0)
        for i, blk in enumerate(blocks):
            kp, vp = prefix_kv[i]  # (N, heads, P, hd)
            q, k, v = _qkv(blk, blk.ln_1(x))  # (1 or N, C, heads, S, hd)
            if i == last:  # only the EOS query feeds the output
                q, x, row_mask = q[..., -1:, :], x[..., -1:, :], None
            else:
                row_mask = mask
            heads, hd = kp.shape[1], kp.shape[-1]
            keys = torch.cat([kp.unsqueeze(1).expand(n, c, heads, p, hd), k.expand(n, c, heads, s, hd)], dim=-2)
            values = torch.cat([vp.unsqueeze(1).expand(n, c, heads, p, hd), v.expand(n, c, heads, s, hd)], dim=-2)
            q = q.expand(n, c, *q.shape[2:])
            a = F.scaled_dot_product_attention(q.flatten(0, 1), keys.flatten(0, 1), values.flatten(0, 1), attn_mask=row_mask)
            x = x + blk.ls_1(_out(blk, a.unflatten(0, (n, c))))
            x = x + blk.ls_2(blk.mlp(blk.ln_2(x)))
        return self._project(x[..., -1, :])


def _qkv(blk: ResidualAttentionBlock, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(..., T, W) -> q, k, v as (..., heads, T, head_dim), with nn.MultiheadAttention's weights."""
    attn = blk.attn
    q, k, v = F.linear(x, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    return tuple(t.unflatten(-1, (attn.num_heads, -1)).transpose(-3, -2) for t in (q, k, v))


def _out(blk: ResidualAttentionBlock, a: torch.Tensor) -> torch.Tensor:
    """(..., heads, T, head_dim) -> (..., T, W) through the attention's output projection."""
    proj = blk.attn.out_proj
    return F.linear(a.transpose(-3, -2).flatten(-2), proj.weight, proj.bias)
