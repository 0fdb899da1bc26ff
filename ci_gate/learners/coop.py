"""CoOp (Zhou et al., IJCV 2022): M learned context vectors, shared by every class or one set per class.

Prompt for class c: [SOS, v_1..v_M, name_c, '.', EOS]; text features do not depend on the
image, so a scan computes them once. Dassl stores the context as ``ctx``: (M, d), or (C, M, d)
with class-specific context. The two variants the reference implementation
(KaiyangZhou/CoOp, trainers/coop.py) trains besides the default are options here:

* ``csc``: class-specific context (``TRAINER.COOP.CSC``), ctx (C, M, d), class c's prompt uses
  its own v^c_1..v^c_M;
* ``class_token_position`` (``TRAINER.COOP.CLASS_TOKEN_POSITION``): the name at the ``end``,
  in the ``middle`` of the context or at its ``front`` (ci_gate.learners.tokens).

Dassl files record the first (ctx is 3-D) but not the second, a training-config setting:
``ci-gate convert --learner-option class_token_position=middle`` states it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from pydantic import StrictBool

from ci_gate.learners.base import DasslImport, Learner, NoOptions, text_width
from ci_gate.learners.tokens import ClassTokenPosition, PromptTokens, init_context

if TYPE_CHECKING:
    from ci_gate.model.text import TextEncoder


class CoOpOptions(NoOptions):
    csc: StrictBool = False
    class_token_position: ClassTokenPosition = "end"


class CoOp(Learner):
    kind = "coop"
    title = "CoOp"
    Options = CoOpOptions
    dassl_signature = "a context (ctx) and no meta-net"

    def __init__(self, ctx: torch.Tensor, class_token_position: ClassTokenPosition = "end"):
        super().__init__()
        self.ctx = torch.nn.Parameter(ctx.clone())
        self.class_token_position = class_token_position

    @property
    def n_ctx(self) -> int:
        return self.ctx.shape[-2]

    @property
    def csc(self) -> bool:
        """Class-specific context: one (M, d) context per class."""
        return self.ctx.dim() == 3

    @classmethod
    def expected_tensors(cls, spec) -> set[str]:
        return {"ctx"}

    @classmethod
    def check_shapes(cls, spec, shapes: dict[str, tuple[int, ...]], max_width: int) -> None:
        shape = shapes["ctx"]
        if cls.options(spec).csc:
            n_cls = len(spec.class_names)
            if len(shape) != 3 or shape[:2] != (n_cls, spec.n_ctx):
                raise ValueError(f"ctx has shape {shape}, expected ({n_cls}, {spec.n_ctx}, width): class-specific context (options.csc) for {n_cls} classes")
        elif len(shape) != 2 or shape[0] != spec.n_ctx:
            raise ValueError(f"ctx has shape {shape}, expected ({spec.n_ctx}, width)")
        if shape[-1] > max_width:
            raise ValueError(f"ctx width {shape[-1]} exceeds {max_width}")

    @classmethod
    def _context(cls, backbone, spec, tensors: dict[str, torch.Tensor] | None, seed: int = 0) -> torch.Tensor:
        csc = cls.options(spec).csc
        n_cls = len(spec.class_names)
        if tensors is None:
            gen = torch.Generator().manual_seed(seed)
            if csc and not spec.ctx_init:
                return torch.randn(n_cls, spec.n_ctx, text_width(backbone), generator=gen) * 0.02
            ctx = init_context(backbone.clip, backbone.tokenizer, spec.n_ctx, spec.ctx_init, gen)
            # The reference silently trains one shared context when CSC comes with CTX_INIT; here
            # the option means what it says: every class starts from the initialisation text.
            return ctx.unsqueeze(0).repeat(n_cls, 1, 1) if csc else ctx
        ctx = tensors["ctx"].float()
        want = (n_cls, spec.n_ctx) if csc else (spec.n_ctx,)
        if tuple(ctx.shape[:-1]) != want:
            raise ValueError(f"ctx has shape {tuple(ctx.shape)}, expected ({', '.join(map(str, want))}, width)" + (" (options.csc)" if csc else ""))
        width = text_width(backbone)
        if ctx.shape[-1] != width:
            raise ValueError(f"ctx width {ctx.shape[-1]} does not match the backbone's text width {width}")
        return ctx

    @classmethod
    def fresh(cls, backbone, spec, seed: int) -> "CoOp":
        return cls(cls._context(backbone, spec, None, seed), cls.options(spec).class_token_position)

    @classmethod
    def from_tensors(cls, backbone, spec, tensors) -> "CoOp":
        return cls(cls._context(backbone, spec, tensors), cls.options(spec).class_token_position)

    def named_tensors(self) -> dict[str, torch.Tensor]:
        return {"ctx": self.ctx.detach()}

    @classmethod
    def dassl_claims(cls, keys: frozenset[str]) -> bool:
        return "ctx" in keys and not any(k.startswith("meta_net.") for k in keys)

    @classmethod
    def dassl_import(cls, state: dict[str, torch.Tensor]) -> DasslImport:
        # CSC is read off the tensor, so a user cannot contradict it; the class token position is
        # a training setting the file does not record (convert's --learner-option states it)
        ctx = state["ctx"]
        return cls._dassl_context(state, {"ctx": ctx}, {"csc": ctx.dim() == 3})

    @classmethod
    def _dassl_context(cls, state: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor], options: dict[str, Any]) -> DasslImport:
        ctx = state["ctx"]
        if ctx.dim() == 3 and not options.get("csc"):
            raise ValueError(
                f"class-specific context (CSC, ctx shape {tuple(ctx.shape)}) is not supported by {cls.title}: "
                "its reference implementation shares one context across classes"
            )
        if ctx.dim() not in (2, 3) or ctx.shape[-2] < 1:
            raise ValueError(f"ctx has shape {tuple(ctx.shape)}, expected (n_ctx, width), or (n_classes, n_ctx, width) for class-specific context")
        missing = [k for k in ("token_prefix", "token_suffix") if k not in state]
        if missing:
            raise ValueError(f"no {missing}: without the stored prompt tokens the class names and backbone cannot be verified")
        if ctx.dim() == 3 and ctx.shape[0] != state["token_prefix"].shape[0]:
            raise ValueError(f"class-specific ctx holds {ctx.shape[0]} classes, token_prefix {state['token_prefix'].shape[0]}")
        used = frozenset({*tensors, "token_prefix", "token_suffix"})
        return DasslImport(tensors, options, state["token_prefix"], state["token_suffix"], used)

    def bind(self, backbone, class_names: list[str], n_ctx: int) -> PromptTokens:
        if self.csc and len(class_names) != self.ctx.shape[0]:
            raise ValueError(f"class-specific context for {self.ctx.shape[0]} classes cannot prompt {len(class_names)} class names")
        return PromptTokens(backbone.clip, backbone.tokenizer, class_names, n_ctx, self.class_token_position)

    def extra_classes_problem(self) -> str | None:
        # A CSC model has no context for a name it was not trained on, and none can be made up
        # without scanning a classifier that is not the one deployed: a zero-shot "a photo of a"
        # prompt beside learned ones, or another class's context, is a model the provider never
        # shipped, so a trigger found (or missed) through it says nothing about this checkpoint.
        # Deployment cannot add classes to a CSC model either, so there is nothing to scan.
        if self.csc:
            return f"{self.title} with class-specific context (options.csc) has a learned context only for the checkpoint's own classes; scan it without extra classes"
        return None

    def text_features(self, encoder: TextEncoder, prompts: PromptTokens, length: int, image_features: torch.Tensor | None = None) -> torch.Tensor:
        return encoder(prompts.assemble(self.ctx, length, per_class=self.csc), prompts.eos_index)


LEARNER = CoOp
