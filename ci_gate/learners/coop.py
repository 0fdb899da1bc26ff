"""CoOp (Zhou et al., IJCV 2022): M learned context vectors shared by every class.

Prompt for class c: [SOS, v_1..v_M, name_c, '.', EOS]; text features do not depend on the
image, so a scan computes them once. Dassl stores the context as ``ctx`` (M, d).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from ci_gate.learners.base import DasslImport, Learner, text_width
from ci_gate.learners.tokens import PromptTokens, init_context

if TYPE_CHECKING:
    from ci_gate.model.text import TextEncoder


class CoOp(Learner):
    kind = "coop"
    title = "CoOp"
    dassl_signature = "a context (ctx) and no meta-net"

    def __init__(self, ctx: torch.Tensor):
        super().__init__()
        self.ctx = torch.nn.Parameter(ctx.clone())

    @property
    def n_ctx(self) -> int:
        return self.ctx.shape[0]

    @classmethod
    def expected_tensors(cls, spec) -> set[str]:
        return {"ctx"}

    @classmethod
    def check_shapes(cls, spec, shapes: dict[str, tuple[int, ...]], max_width: int) -> None:
        shape = shapes["ctx"]
        if len(shape) != 2 or shape[0] != spec.n_ctx:
            raise ValueError(f"ctx has shape {shape}, expected ({spec.n_ctx}, width)")
        if shape[1] > max_width:
            raise ValueError(f"ctx width {shape[1]} exceeds {max_width}")

    @classmethod
    def _context(cls, backbone, spec, tensors: dict[str, torch.Tensor] | None, seed: int = 0) -> torch.Tensor:
        if tensors is None:
            gen = torch.Generator().manual_seed(seed)
            return init_context(backbone.clip, backbone.tokenizer, spec.n_ctx, spec.ctx_init, gen)
        ctx = tensors["ctx"].float()
        width = text_width(backbone)
        if ctx.shape[1] != width:
            raise ValueError(f"ctx width {ctx.shape[1]} does not match the backbone's text width {width}")
        return ctx

    @classmethod
    def fresh(cls, backbone, spec, seed: int) -> "CoOp":
        return cls(cls._context(backbone, spec, None, seed))

    @classmethod
    def from_tensors(cls, backbone, spec, tensors) -> "CoOp":
        return cls(cls._context(backbone, spec, tensors))

    def named_tensors(self) -> dict[str, torch.Tensor]:
        return {"ctx": self.ctx.detach()}

    @classmethod
    def dassl_claims(cls, keys: frozenset[str]) -> bool:
        return "ctx" in keys and not any(k.startswith("meta_net.") for k in keys)

    @classmethod
    def dassl_import(cls, state: dict[str, torch.Tensor]) -> DasslImport:
        return cls._dassl_context(state, {"ctx": state["ctx"]}, {})

    @staticmethod
    def _dassl_context(state: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor], options: dict[str, Any]) -> DasslImport:
        ctx = state["ctx"]
        if ctx.dim() == 3:
            raise ValueError(
                f"class-specific context (CSC, ctx shape {tuple(ctx.shape)}) is not supported: "
                "ci-gate's CoOp/CoCoOp learners share one context across classes"
            )
        if ctx.dim() != 2 or ctx.shape[0] < 1:
            raise ValueError(f"ctx has shape {tuple(ctx.shape)}, expected (n_ctx, width)")
        missing = [k for k in ("token_prefix", "token_suffix") if k not in state]
        if missing:
            raise ValueError(f"no {missing}: without the stored prompt tokens the class names and backbone cannot be verified")
        used = frozenset({*tensors, "token_prefix", "token_suffix"})
        return DasslImport(tensors, options, state["token_prefix"], state["token_suffix"], used)

    def text_features(self, encoder: TextEncoder, prompts: PromptTokens, length: int, image_features: torch.Tensor | None = None) -> torch.Tensor:
        return encoder(prompts.assemble(self.ctx, length), prompts.eos_index)


LEARNER = CoOp
