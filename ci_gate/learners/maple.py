"""MaPLe (Khattak et al., CVPR 2023): multi-modal deep prompts, coupled text -> vision.

As the reference implementation (muzairkhattak/multimodal-prompt-learning, trainers/maple.py
and clip/model.py) computes it, with prompt depth J and M context vectors:

* text: M context vectors ``ctx`` (M, d_text) sit after SOS as in CoOp; at the input of text
  layers 1..J-1 the hidden states at positions 1..M are *replaced* by
  ``compound_prompts_text[j-1]`` (M, d_text);
* vision: ``proj(ctx)`` (Linear d_text -> vision width) is appended as M extra tokens after the
  patch tokens, after the positional embedding and before ``ln_pre``; at the input of vision
  layers 1..J-1 the last M tokens are replaced by ``compound_prompt_projections[j-1]`` applied
  to ``compound_prompts_text[j-1]``. The feature is the class token's, as in CLIP.

Text features do not depend on the image, so the classifier caches them (truncation stays
exact for a causal tower: every prompt position is before EOS). Tensor names are the
reference's ``prompt_learner.*`` keys: ``ctx``, ``proj.{weight,bias}``,
``compound_prompts_text.N``, ``compound_prompt_projections.N.{weight,bias}``.

``name_prefix``: the reference's default config (CTX_INIT "a photo of a", N_CTX 2) tokenizes
"a photo of a {name}." and swaps only the first two tokens for the context, so its prompts keep
"of a" between the context and the class name. That text is an option here, read off a
converted file's stored prompt tokens (``read_name_prefix``), so converted reference
checkpoints get the prompts they were trained with.

Randomness: ``fresh`` draws everything from one seeded ``torch.Generator``; the global RNG is
never touched.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import torch
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr
from torch import nn

from ci_gate.learners.base import DasslImport, Learner, text_width
from ci_gate.learners.tokens import PromptTokens, init_context, stored_rows_close

if TYPE_CHECKING:
    from ci_gate.model.text import TextEncoder

TEXT_PREFIX = "compound_prompts_text."
PROJ_PREFIX = "compound_prompt_projections."
DASSL_PREFIX = "prompt_learner."
# the reference's CustomCLIP submodules -> open_clip CLIP state-dict names
_TOWER_PREFIXES = (("image_encoder.", "visual."), ("text_encoder.", ""))
# what the reference's TextEncoder holds; it ignores any other text_encoder.* key on loading
# (strict=False), so such a key must not become a backbone tensor here (text_encoder.visual.*
# would shadow image_encoder.*, text_encoder.token_embedding.* the prompts' embedding)
_TEXT_ENCODER_NAMES = ("transformer.", "positional_embedding", "ln_final.", "text_projection")


class MaPLeOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    # J: prompts enter layers 0..J-1 of both towers. The reference trains J=9 on ViT-B/16 (3 in
    # its cross-dataset config); the default here is the shallowest deep setting, 2, which every
    # tower ci-gate builds has room for (its tiny test towers have 2 layers). Converted
    # checkpoints record the depth their tensors have.
    prompt_depth: StrictInt = Field(2, ge=1, le=256)
    name_prefix: StrictStr = Field("", max_length=200)


def _open_clip_name(key: str) -> str | None:
    """open_clip's name for a tower tensor of the reference's CustomCLIP, None for other keys."""
    if key == "logit_scale":
        return key
    for ours, theirs in _TOWER_PREFIXES:
        if key.startswith(ours):
            rest = key[len(ours):]
            if ours == "text_encoder." and not any(rest == n or (n.endswith(".") and rest.startswith(n)) for n in _TEXT_ENCODER_NAMES):
                return None
            return theirs + rest
    return None


def _linear(d_in: int, d_out: int, generator: torch.Generator) -> nn.Linear:
    """nn.Linear with its default init (U(+-1/sqrt(d_in)) for weight and bias) drawn from
    ``generator``; skip_init keeps the constructor off the global RNG."""
    layer = nn.utils.skip_init(nn.Linear, d_in, d_out)
    bound = d_in**-0.5
    with torch.no_grad():
        nn.init.uniform_(layer.weight, -bound, bound, generator=generator)
        nn.init.uniform_(layer.bias, -bound, bound, generator=generator)
    return layer


def _visual_width(visual: nn.Module) -> int:
    return int(visual.conv1.out_channels)


def check_vit(visual: nn.Module) -> None:
    """MaPLe prompts a ViT image tower with CLIP's class-token head; refuse anything else."""
    from open_clip.transformer import VisionTransformer

    if not isinstance(visual, VisionTransformer):
        raise ValueError(f"MaPLe needs a ViT image tower; this backbone's is {type(visual).__name__} (MaPLe has no vision prompts for it)")
    if visual.attn_pool is not None or visual.pool_type != "tok":
        raise ValueError(f"MaPLe reads the class token of the image tower; this one pools with {'attention' if visual.attn_pool is not None else repr(visual.pool_type)}")


def _check_depth(backbone, depth: int) -> None:
    text_layers = len(backbone.clip.transformer.resblocks)
    vision_layers = len(backbone.clip.visual.transformer.resblocks)
    if depth > min(text_layers, vision_layers):
        raise ValueError(
            f"MaPLe prompt depth {depth} exceeds the backbone's layers (text {text_layers}, vision {vision_layers})"
        )


def read_name_prefix(token_suffix: torch.Tensor, backbone, class_names: list[str], n_ctx: int, max_tokens: int = 8) -> str | None:
    """The words a reference checkpoint's prompts keep between the context and each class name
    (``name_prefix``), read off its stored ``token_suffix`` with the backbone's vocabulary: "of a"
    for the reference's default config, "" for a random-init context.

    The reading that reproduces the most stored rows with these class names wins, so names given
    out of training order still get the right words (and convert's row check then names the
    misplaced class); None when no reading of up to ``max_tokens`` tokens fits any row."""
    table = backbone.clip.token_embedding.weight.detach().float()
    ids = torch.cdist(token_suffix[0, :max_tokens].float(), table).argmin(dim=1).tolist()
    best, best_rows = None, 0
    for k in range(len(ids) + 1):
        words = backbone.tokenizer.decode(ids[:k]).strip() if k else ""
        try:
            want = PromptTokens(backbone.clip, backbone.tokenizer, [f"{words} {n}" if words else n for n in class_names], n_ctx).token_suffix
        except ValueError:  # too long for the context: longer readings are too
            break
        if want.shape != token_suffix.shape:
            continue
        rows = int(stored_rows_close(want, token_suffix).sum())
        if rows > best_rows:
            best, best_rows = words, rows
        if rows == len(class_names):
            break
    return best


class MaPLe(Learner):
    kind = "maple"
    title = "MaPLe"
    Options = MaPLeOptions
    exportable = False  # the per-layer prompt replacement is not in ci_gate.export's graph
    dassl_signature = "MaPLe's coupling projection (prompt_learner.proj.*)"

    def __init__(self, ctx: torch.Tensor, vision_width: int, depth: int, generator: torch.Generator, name_prefix: str = ""):
        """Initialised as the reference initialises (in its order), drawing from ``generator``
        only: ``from_tensors`` overwrites it all, ``fresh`` passes a seeded one."""
        super().__init__()
        n_ctx, width = ctx.shape
        self.name_prefix = name_prefix
        self.ctx = nn.Parameter(ctx.clone())
        self.proj = _linear(width, vision_width, generator)
        self.compound_prompts_text = nn.ParameterList(
            [nn.Parameter(nn.init.normal_(torch.empty(n_ctx, width), std=0.02, generator=generator)) for _ in range(depth - 1)]
        )
        # the reference clones one initialised layer (_get_clones), so all start equal
        single = _linear(width, vision_width, generator)
        self.compound_prompt_projections = nn.ModuleList([copy.deepcopy(single) for _ in range(depth - 1)])

    @property
    def n_ctx(self) -> int:
        return self.ctx.shape[0]

    @property
    def depth(self) -> int:
        return len(self.compound_prompts_text) + 1

    # ---- checkpoint tensors -----------------------------------------------------------------

    @classmethod
    def expected_tensors(cls, spec) -> set[str]:
        depth = cls.options(spec).prompt_depth
        names = {"ctx", "proj.weight", "proj.bias"}
        for i in range(depth - 1):
            names |= {f"{TEXT_PREFIX}{i}", f"{PROJ_PREFIX}{i}.weight", f"{PROJ_PREFIX}{i}.bias"}
        return names

    @classmethod
    def check_shapes(cls, spec, shapes: dict[str, tuple[int, ...]], max_width: int) -> None:
        depth = cls.options(spec).prompt_depth
        ctx = shapes["ctx"]
        if len(ctx) != 2 or ctx[0] != spec.n_ctx:
            raise ValueError(f"ctx has shape {ctx}, expected ({spec.n_ctx}, width)")
        width = ctx[1]
        if width > max_width:
            raise ValueError(f"ctx width {width} exceeds {max_width}")
        w = shapes["proj.weight"]
        if len(w) != 2 or w[1] != width or w[0] > max_width:
            raise ValueError(f"proj.weight has shape {w}, expected (vision width, {width})")
        vision = w[0]
        want = {"proj.bias": (vision,)}
        for i in range(depth - 1):
            want[f"{TEXT_PREFIX}{i}"] = (spec.n_ctx, width)
            want[f"{PROJ_PREFIX}{i}.weight"] = (vision, width)
            want[f"{PROJ_PREFIX}{i}.bias"] = (vision,)
        for name, shape in want.items():
            if shapes[name] != shape:
                raise ValueError(f"{name} has shape {shapes[name]}, expected {shape} (ctx {ctx}, vision width {vision})")

    @classmethod
    def fresh(cls, backbone, spec, seed: int) -> "MaPLe":
        opts = cls.options(spec)
        check_vit(backbone.clip.visual)
        _check_depth(backbone, opts.prompt_depth)
        gen = torch.Generator().manual_seed(seed)
        ctx = init_context(backbone.clip, backbone.tokenizer, spec.n_ctx, spec.ctx_init, gen)
        return cls(ctx, _visual_width(backbone.clip.visual), opts.prompt_depth, gen, opts.name_prefix)

    @classmethod
    def from_tensors(cls, backbone, spec, tensors) -> "MaPLe":
        opts = cls.options(spec)
        check_vit(backbone.clip.visual)
        _check_depth(backbone, opts.prompt_depth)
        ctx = tensors["ctx"].float()
        width, vision = text_width(backbone), _visual_width(backbone.clip.visual)
        if ctx.shape[1] != width:
            raise ValueError(f"ctx width {ctx.shape[1]} does not match the backbone's text width {width}")
        learner = cls(ctx, vision, opts.prompt_depth, torch.Generator(), opts.name_prefix)  # init overwritten below
        state = {k: v.float() for k, v in tensors.items() if k != "ctx"}
        try:
            learner.load_state_dict({"ctx": ctx, **state}, strict=True)
        except RuntimeError as exc:
            first = str(exc).splitlines()
            raise ValueError(f"MaPLe prompts do not fit the backbone (text width {width}, vision width {vision}): {first[1].strip() if len(first) > 1 else first[0]}") from None
        return learner

    def named_tensors(self) -> dict[str, torch.Tensor]:
        return {k: v.detach() for k, v in self.state_dict().items()}

    # ---- Dassl import -------------------------------------------------------------------------

    @classmethod
    def dassl_claims(cls, keys: frozenset[str]) -> bool:
        return any(k in keys for k in ("proj.weight", f"{DASSL_PREFIX}proj.weight")) and any(k in keys for k in ("ctx", f"{DASSL_PREFIX}ctx"))

    @classmethod
    def dassl_import(cls, state: dict[str, torch.Tensor]) -> DasslImport:
        """The reference saves the whole CustomCLIP (``MultiModalPromptLearner/model.pth.tar-N``):
        ``prompt_learner.*`` is the learner, ``image_encoder.*`` / ``text_encoder.*`` /
        ``logit_scale`` the frozen towers, returned under open_clip's names for convert to
        compare with the pinned backbone. A bare prompt-learner state dict is read too."""
        whole = any(k.startswith(DASSL_PREFIX) for k in state)
        own = {k.removeprefix(DASSL_PREFIX): v for k, v in state.items() if k.startswith(DASSL_PREFIX) or not whole}
        towers: dict[str, torch.Tensor] = {}
        tower_keys: set[str] = set()
        if whole:
            for key, value in state.items():
                name = _open_clip_name(key)
                if name is not None:
                    towers[name] = value
                    tower_keys.add(key)
        texts = sorted(int(k[len(TEXT_PREFIX):]) for k in own if k.startswith(TEXT_PREFIX) and k[len(TEXT_PREFIX):].isdigit())
        depth = len(texts) + 1
        if texts != list(range(depth - 1)):
            raise ValueError(f"compound_prompts_text indices {texts} are not 0..{depth - 2}")
        names = ["ctx", "proj.weight", "proj.bias"]
        for i in range(depth - 1):
            names += [f"{TEXT_PREFIX}{i}", f"{PROJ_PREFIX}{i}.weight", f"{PROJ_PREFIX}{i}.bias"]
        missing = [n for n in names + ["token_prefix", "token_suffix"] if n not in own]
        if missing:
            raise ValueError(f"incomplete MaPLe prompt learner: missing {missing[:5]}")
        ctx = own["ctx"]
        if ctx.dim() != 2 or ctx.shape[0] < 1:
            raise ValueError(f"ctx has shape {tuple(ctx.shape)}, expected (n_ctx, width)")
        prefix = DASSL_PREFIX if whole else ""
        used = frozenset({*(prefix + n for n in names), prefix + "token_prefix", prefix + "token_suffix", *tower_keys})
        # only what the tensors tell; the prompt words come from the stored tokens (dassl_prompt_options)
        options = {"prompt_depth": depth}
        return DasslImport({n: own[n] for n in names}, options, own["token_prefix"], own["token_suffix"], used, towers)

    @classmethod
    def dassl_prompt_options(cls, options: dict[str, Any], token_suffix: torch.Tensor, backbone, class_names: list[str], n_ctx: int) -> dict[str, Any]:
        words = read_name_prefix(token_suffix, backbone, class_names, n_ctx)
        # None: no reading fits these names; convert's token check then says which row differs
        return options if words is None else {**options, "name_prefix": words}

    @classmethod
    def prompt_names(cls, options: dict[str, Any], class_names: list[str]) -> list[str]:
        words = options.get("name_prefix", "")
        return [f"{words} {n}" for n in class_names] if words else list(class_names)

    # ---- forward ------------------------------------------------------------------------------

    def bind(self, backbone, class_names: list[str], n_ctx: int) -> PromptTokens:
        named = self.prompt_names({"name_prefix": self.name_prefix}, class_names)
        return PromptTokens(backbone.clip, backbone.tokenizer, named, n_ctx)

    def text_features(self, encoder: TextEncoder, prompts: PromptTokens, length: int, image_features: torch.Tensor | None = None) -> torch.Tensor:
        return encoder(prompts.assemble(self.ctx, length), prompts.eos_index, deep_prompts=list(self.compound_prompts_text))

    def image_features(self, visual: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
        """open_clip's VisionTransformer forward with MaPLe's vision prompts in the reference's
        order. ``_embeds`` cannot be reused: it applies ``ln_pre`` before the prompts could be
        appended, and the reference normalises them with the patch tokens."""
        x = visual.conv1(pixels)
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
        cls_token = visual.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
        x = torch.cat([cls_token, x], dim=1) + visual.positional_embedding.to(x.dtype)
        x = visual.patch_dropout(x)
        shared = self.proj(self.ctx).to(x.dtype)
        x = torch.cat([x, shared.unsqueeze(0).expand(x.shape[0], -1, -1)], dim=1)
        x = visual.ln_pre(x)
        n = self.n_ctx
        batch_first = getattr(visual.transformer, "batch_first", True)
        for i, blk in enumerate(visual.transformer.resblocks):
            if 1 <= i < self.depth:
                deep = self.compound_prompt_projections[i - 1](self.compound_prompts_text[i - 1]).to(x.dtype)
                x = torch.cat([x[:, :-n], deep.unsqueeze(0).expand(x.shape[0], -1, -1)], dim=1)
            x = blk(x) if batch_first else blk(x.transpose(0, 1)).transpose(0, 1)
        pooled, _ = visual._pool(x)
        return pooled @ visual.proj if visual.proj is not None else pooled


LEARNER = MaPLe
