"""CoCoOp (Zhou et al., CVPR 2022): CoOp's context shifted per image by a meta-net.

pi(x) = Linear(d_vis -> d_vis/16) -> ReLU -> Linear(-> d_ctx) of the normalised image feature
shifts every context vector: prompt for image x and class c is [SOS, v_1 + pi(x) .. v_M + pi(x),
name_c, '.', EOS]. Text features depend on the image, so the fast path encodes each image's
prefix once for every class (ci_gate.model.text). Dassl names: ``ctx``, ``meta_net.linear{1,2}.*``.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import torch
from pydantic import Field, StrictBool, ValidationInfo, field_validator
from torch import nn

from ci_gate.learners.base import DasslImport, vision_dim
from ci_gate.learners.coop import CoOp, CoOpOptions
from ci_gate.learners.tokens import ClassTokenPosition, PromptTokens
from ci_gate.rng import global_rng

if TYPE_CHECKING:
    from ci_gate.model.text import TextEncoder

META_NET_KEYS = ("meta_net.linear1.weight", "meta_net.linear1.bias", "meta_net.linear2.weight", "meta_net.linear2.bias")


class CoCoOpOptions(CoOpOptions):
    """CoOp's options pinned to CoOp's defaults: the reference CoCoOp (trainers/cocoop.py) has one
    context shared by every class, with the class name at the end, and neither setting. Pinned
    rather than absent so the CoOp code CoCoOp inherits reads them; never written to a file."""

    csc: StrictBool = Field(False, exclude=True)
    class_token_position: ClassTokenPosition = Field("end", exclude=True)

    @field_validator("csc", "class_token_position")
    @classmethod
    def _coop_only(cls, value: Any, info: ValidationInfo) -> Any:
        if value not in (False, "end"):
            raise ValueError(f"CoCoOp has no {info.field_name} setting: its reference implementation shares one context across classes and puts the class name at the end (CoOp has both)")
        return value


class CoCoOp(CoOp):
    kind = "cocoop"
    title = "CoCoOp"
    Options = CoCoOpOptions
    conditional = True
    shares_prefix = True
    dassl_signature = "a CoCoOp meta-net (meta_net.*)"

    def __init__(self, ctx: torch.Tensor, vis_dim: int):
        super().__init__(ctx)
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

    @classmethod
    def expected_tensors(cls, spec) -> set[str]:
        return {"ctx", *META_NET_KEYS}

    @classmethod
    def check_shapes(cls, spec, shapes: dict[str, tuple[int, ...]], max_width: int) -> None:
        super().check_shapes(spec, shapes, max_width)
        # d_vis itself is the backbone's, checked when the model is built
        width = shapes["ctx"][1]
        w1 = shapes["meta_net.linear1.weight"]
        if len(w1) != 2 or w1[0] != w1[1] // 16:
            raise ValueError(f"meta_net.linear1.weight has shape {w1}, expected (d // 16, d)")
        hidden = w1[0]
        want = {
            "meta_net.linear1.bias": (hidden,),
            "meta_net.linear2.weight": (width, hidden),
            "meta_net.linear2.bias": (width,),
        }
        for name, shape in want.items():
            if shapes[name] != shape:
                raise ValueError(f"{name} has shape {shapes[name]}, expected {shape} (ctx width {width}, hidden {hidden})")

    @classmethod
    def fresh(cls, backbone, spec, seed: int) -> "CoCoOp":
        ctx = cls._context(backbone, spec, None, seed)
        # nn.Linear draws its init from the global generator: a seeded fork of it (ci_gate.rng)
        with global_rng(seed):
            return cls(ctx, vision_dim(backbone))

    @classmethod
    def from_tensors(cls, backbone, spec, tensors) -> "CoCoOp":
        with global_rng():  # the init is overwritten; keep the caller's RNG
            learner = cls(cls._context(backbone, spec, tensors), vision_dim(backbone))
        state = {k[len("meta_net."):]: v.float() for k, v in tensors.items() if k.startswith("meta_net.")}
        try:
            learner.meta_net.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ValueError(f"meta-net does not fit the backbone: {str(exc).splitlines()[0]}") from None
        return learner

    def named_tensors(self) -> dict[str, torch.Tensor]:
        out = super().named_tensors()
        for key, value in self.meta_net.state_dict().items():
            out[f"meta_net.{key}"] = value.detach()
        return out

    @classmethod
    def dassl_claims(cls, keys: frozenset[str]) -> bool:
        return "ctx" in keys and any(k.startswith("meta_net.") for k in keys)

    @classmethod
    def dassl_import(cls, state: dict[str, torch.Tensor]) -> DasslImport:
        missing = sorted(set(META_NET_KEYS) - set(state))
        if missing:
            raise ValueError(f"incomplete CoCoOp meta-net: missing {missing}")
        return cls._dassl_context(state, {"ctx": state["ctx"], **{k: state[k] for k in META_NET_KEYS}}, {})

    def conditional_context(self, image_features: torch.Tensor) -> torch.Tensor:
        """v_m + pi(x) for every image, (B, M, d)."""
        bias = self.meta_net(image_features.to(self.ctx.dtype))
        return self.ctx.unsqueeze(0) + bias.unsqueeze(1)

    def text_features(self, encoder: TextEncoder, prompts: PromptTokens, length: int, image_features: torch.Tensor | None = None) -> torch.Tensor:
        assert image_features is not None, "CoCoOp's text features depend on the image"
        emb = prompts.assemble(self.conditional_context(image_features), length)
        batch, n_cls = emb.shape[:2]
        feats = encoder(emb.flatten(0, 1), prompts.eos_index.repeat(batch))
        return feats.view(batch, n_cls, -1)

    def text_features_shared(self, encoder: TextEncoder, prompts: PromptTokens, image_features: torch.Tensor) -> torch.Tensor:
        """Equal to ``text_features`` (see ci_gate.model.text); the classifier checks
        ``encoder.shares_prefix`` and ``prompts.sos_shared`` first."""
        ctx = self.conditional_context(image_features)
        batch = ctx.shape[0]
        sos = prompts.token_prefix[:1].expand(batch, -1, -1)
        prefix = torch.cat([sos, ctx.to(sos.dtype)], dim=1)
        feats = torch.cat(encoder.forward_shared_prefix(prefix, prompts.group_suffixes()), dim=1)
        return feats.index_select(1, prompts.group_inverse)


LEARNER = CoCoOp
