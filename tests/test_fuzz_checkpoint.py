"""Hypothesis over the checkpoint surface: the file's bytes, its metadata JSON and its tensors.

Whatever the file holds, ``load_checkpoint`` either returns a Checkpoint that keeps the loader's
promises (format version 1, floating finite non-empty tensors, learner dtypes F32/F16/BF16, ctx
rows equal n_ctx, class names short and free of control characters) or raises InputError naming
the file. Any other exception would be exit 3 (a crash on attacker input), so it fails here.

The default run tries a few hundred examples per property; ``-m bench`` runs each at 10,000.
"""

from __future__ import annotations

import json
import math
import re
import struct
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, currently_in_test_context, event, given, settings
from hypothesis import strategies as st
from safetensors.torch import save as st_save

from ci_gate.checkpoint.format import (
    BACKBONE_PREFIX,
    LEARNER_DTYPES,
    LEARNER_PREFIX,
    MAX_NAME_CHARS,
    META_KEY,
    OPENAI_MEAN,
    OPENAI_STD,
    Checkpoint,
    backbone_digest,
    load_checkpoint,
)
from ci_gate.errors import InputError

UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff\u2028\u2029\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
WIDTH, VIS = 8, 32
META_NET = ("meta_net.linear1.weight", "meta_net.linear1.bias", "meta_net.linear2.weight", "meta_net.linear2.bias")


def base_meta(kind: str = "cocoop", embedded: bool = False) -> dict:
    meta = {
        "format_version": 1,
        "learner": {"kind": kind, "class_names": ["cat", "dog", "golden_retriever"], "n_ctx": 4, "ctx_init": "a photo of a"},
        "backbone": {"architecture": "ViT-B-16", "config": None, "pretrained": "openai", "sha256": "ab" * 32, "quick_gelu": True, "embedded": False},
        "preprocessing": {"image_size": 224, "mean": list(OPENAI_MEAN), "std": list(OPENAI_STD), "interpolation": "bicubic", "resize_mode": "shortest"},
        "provenance": {"producer": "fuzz", "parent": {"sha256": "cd" * 32}},
    }
    if embedded:
        meta["backbone"] = {"architecture": None, "config": {"embed_dim": 16, "vision_cfg": {}, "text_cfg": {}}, "pretrained": None,
                            "sha256": backbone_digest(BACKBONE), "quick_gelu": False, "embedded": True}
    return meta


def base_learner(kind: str = "cocoop") -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    out = {"ctx": torch.randn(4, WIDTH, generator=gen)}
    if kind == "cocoop":
        h = VIS // 16
        out |= {META_NET[0]: torch.randn(h, VIS, generator=gen), META_NET[1]: torch.zeros(h),
                META_NET[2]: torch.randn(WIDTH, h, generator=gen), META_NET[3]: torch.zeros(WIDTH)}
    return out if kind != "zeroshot" else {}


BACKBONE = {"visual.proj": torch.ones(4, 4), "bn.num_batches_tracked": torch.tensor(7)}


def file_bytes(meta: dict | str, learner: dict[str, torch.Tensor], backbone: dict[str, torch.Tensor] | None = None) -> bytes:
    tensors = {LEARNER_PREFIX + k: v.contiguous() for k, v in learner.items()}
    tensors |= {BACKBONE_PREFIX + k: v.contiguous() for k, v in (backbone or {}).items()}
    return st_save(tensors, metadata={META_KEY: meta if isinstance(meta, str) else json.dumps(meta)})


VALID = {
    "cocoop": file_bytes(base_meta("cocoop"), base_learner("cocoop")),
    "coop-embedded": file_bytes(base_meta("coop", embedded=True), base_learner("coop"), BACKBONE),
}


# --- strategies --------------------------------------------------------------------------------

FLOATS = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, -0.0, 1e-300, 1e308, 0.5, 1.0]))
INTS = st.one_of(st.integers(-3, 300), st.integers(), st.sampled_from([2**63, -(2**63) - 1, 10**40]))
TEXT = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["coop", "cocoop", "zeroshot", "ViT-B-16", "openai", "1", "bicubic", "shortest", "ab" * 32, "a photo of a",
                     "\x1b[31m", "a\nb", "\u202ex", "\ud800", "x" * (MAX_NAME_CHARS + 1), " ", "NaN"]),
)
SOMETIMES = st.sampled_from(range(20)).map(lambda i: i == 7)  # rarely: most examples should get past the JSON
SCALARS = st.one_of(st.none(), st.booleans(), INTS, FLOATS, TEXT)
VALUES = st.recursive(SCALARS, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=6), kids, max_size=4), max_leaves=8)


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, (*prefix, i))


PATHS = {kind: [p for p in _paths(base_meta(kind.split("-")[0], "embedded" in kind)) if p] for kind in VALID}


@st.composite
def metadata_texts(draw) -> tuple[str, str]:
    """(which valid file, metadata JSON text): a valid document with a few fields replaced by
    random JSON values, deleted, or joined by extra keys; sometimes written with NaN/Infinity
    literals or cut short."""
    kind = draw(st.sampled_from(sorted(VALID)))
    meta = base_meta(kind.split("-")[0], "embedded" in kind)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(PATHS[kind]))
        parent = meta
        try:
            for step in path[:-1]:
                parent = parent[step]
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation replaced this branch
        if not isinstance(parent, (dict, list)):
            continue
        action = draw(st.sampled_from(["replace", "replace", "replace", "delete", "add"]))
        last = path[-1]
        try:
            if action == "replace":
                parent[last] = draw(VALUES)
            elif action == "delete":
                del parent[last]
            elif isinstance(parent, dict):
                parent[draw(st.text(max_size=6))] = draw(VALUES)
            else:
                parent.append(draw(VALUES))
        except (KeyError, IndexError, TypeError):
            continue
    text = json.dumps(meta, allow_nan=True)  # NaN/Infinity literals: not JSON, but Python writes them
    if draw(SOMETIMES):  # cut somewhere along the document, not mostly at its first characters
        text = text[: int(len(text) * draw(st.sampled_from([0.2, 0.4, 0.6, 0.8, 0.9, 0.99])))]
    return kind, text


@st.composite
def byte_mutations(draw) -> bytes:
    """A valid file with a few bytes set, inserted or cut, mostly in the JSON header and the
    8-byte length (random changes to tensor data are mostly just other finite numbers). Half the
    time the length field is then made to agree with the edited header again, so the edits get
    past the container checks to the JSON, the metadata and the tensor table."""
    data = bytearray(VALID[draw(st.sampled_from(sorted(VALID)))])
    header_end = 8 + struct.unpack("<Q", bytes(data[:8]))[0]
    for _ in range(draw(st.integers(1, 6))):
        inside = st.integers(9, max(header_end - 1, 9))  # after the '{' (Hypothesis favours a range's ends)
        at = draw(st.one_of(inside, inside, inside, st.integers(0, 8), st.integers(0, len(data))))
        op = draw(st.sampled_from(["set", "set", "insert", "cut", "length"]))
        piece = draw(st.one_of(st.binary(min_size=1, max_size=6), st.sampled_from([b"{", b"}", b"[", b'"', b"\\", b",", b"NaN", b"1e999", b"\x00", b"\xff", b"\\u001b"])))
        if op == "set":
            data[at : at + len(piece)] = piece
        elif op == "insert":
            data[at:at] = piece
            header_end += len(piece) if at < header_end else 0
        elif op == "cut":
            n = min(draw(st.integers(1, 64)), len(data) - at)
            del data[at : at + n]
            if at < header_end:
                header_end = max(at, header_end - n)
        else:
            data[:8] = struct.pack("<Q", draw(st.one_of(st.integers(0, 2**64 - 1), st.integers(max(header_end - 24, 0), header_end + 8))))
    if len(data) >= 8 and header_end > 8 and draw(st.booleans()):
        data[:8] = struct.pack("<Q", header_end - 8)
    if draw(SOMETIMES):
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


# float32 values (and 1e5, which is Inf once cast to float16)
TENSOR_VALUES = st.one_of(st.floats(width=32), st.sampled_from([math.nan, math.inf, -math.inf, 1e5, 65504.0, 1e-8]))
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int32, torch.int64, torch.uint8, torch.int8, torch.bool, torch.float8_e4m3fn]
TENSOR_NAMES = st.one_of(
    st.sampled_from(["ctx", *META_NET]).map(lambda n: LEARNER_PREFIX + n),
    st.sampled_from(["visual.proj", "bn.num_batches_tracked", "text.position_ids", "ctx"]).map(lambda n: BACKBONE_PREFIX + n),
    st.text(max_size=10),
)


@st.composite
def tensor_sets(draw) -> bytes:
    """A file whose tensors are the valid ones retyped (any dtype), reshaped (empty included),
    poisoned (NaN, Inf), dropped or joined by others, under metadata whose kind, n_ctx and
    embedded flag are drawn too."""
    kind = draw(st.sampled_from(["coop", "cocoop", "zeroshot"]))
    embedded = draw(st.booleans())
    meta = base_meta(kind, embedded)
    meta["learner"]["n_ctx"] = draw(st.one_of(st.just(4), st.integers(0, 6)))
    meta["learner"]["ctx_init"] = None
    tensors = {LEARNER_PREFIX + k: v.clone() for k, v in base_learner(kind).items()}
    if embedded:
        tensors |= {BACKBONE_PREFIX + k: v.clone() for k, v in BACKBONE.items()}
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(["retype", "reshape", "poison", "drop", "add"]))
        names = sorted(tensors)
        if op == "add" or not names:
            name = draw(TENSOR_NAMES)
            tensors[name] = torch.zeros(draw(st.lists(st.integers(0, 9), max_size=3))).to(draw(st.sampled_from(DTYPES)))
            continue
        name = draw(st.sampled_from(names))
        t = tensors[name]
        if op == "retype":
            tensors[name] = t.float().to(draw(st.sampled_from(DTYPES)))
        elif op == "reshape":
            tensors[name] = torch.zeros(draw(st.lists(st.integers(0, 9), max_size=3)), dtype=t.dtype)
        elif op == "poison" and t.is_floating_point() and t.numel():
            t = t.float().clone()
            t.view(-1)[draw(st.integers(0, t.numel() - 1))] = draw(TENSOR_VALUES)
            tensors[name] = t.to(tensors[name].dtype)
        elif op == "drop":
            del tensors[name]
    if embedded and draw(st.booleans()):  # re-pin, so the digest is not the only gate
        backbone = {k[len(BACKBONE_PREFIX):]: v for k, v in tensors.items() if k.startswith(BACKBONE_PREFIX)}
        meta["backbone"]["sha256"] = backbone_digest(backbone) if backbone else None
    return st_save(tensors, metadata={META_KEY: json.dumps(meta)})


# --- the property ------------------------------------------------------------------------------


def _event(name: str) -> None:  # outcome counts for --hypothesis-show-statistics
    if currently_in_test_context():
        event(name)


def check(path: Path, data: bytes) -> Checkpoint | None:
    path.write_bytes(data)
    try:
        ckpt = load_checkpoint(path)
    except InputError as err:
        _event("rejected: " + re.sub(r"[\d\[\]'].*", "", err.problem)[:28])
        assert err.exit_code == 2 and err.path == str(path) and err.problem.strip()
        assert "\n" not in err.problem and not UNSAFE.search(err.problem), repr(err.problem)
        return None
    _event("accepted")
    meta = ckpt.meta
    assert meta.format_version == 1
    assert all(len(n) <= MAX_NAME_CHARS and not UNSAFE.search(n) for n in meta.learner.class_names)
    assert all(math.isfinite(v) for v in (*meta.preprocessing.mean, *meta.preprocessing.std))
    for t in (*ckpt.learner_tensors.values(), *ckpt.backbone_tensors.values()):
        assert t.numel() > 0
        assert not t.is_floating_point() or bool(torch.isfinite(t).all())
    assert all(t.dtype in LEARNER_DTYPES.values() for t in ckpt.learner_tensors.values())
    if meta.learner.kind != "zeroshot":
        assert ckpt.learner_tensors["ctx"].shape[0] == meta.learner.n_ctx
    json.dumps(json.loads(meta.model_dump_json()), allow_nan=False)
    return ckpt


@pytest.fixture(scope="module")
def ckpt_file(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz-checkpoint") / "model.safetensors"


def _properties(examples: int):
    # database=None: nothing written into the shared working tree
    common = settings(max_examples=examples, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

    @common
    @given(data=byte_mutations())
    def byte_level(ckpt_file, data):
        check(ckpt_file, data)

    @common
    @given(doc=metadata_texts())
    def metadata_fields(ckpt_file, doc):
        kind, text = doc
        learner_kind = kind.split("-")[0]
        check(ckpt_file, file_bytes(text, base_learner(learner_kind), BACKBONE if "embedded" in kind else None))

    @common
    @given(data=tensor_sets())
    def tensor_dtypes_and_shapes(ckpt_file, data):
        check(ckpt_file, data)

    return byte_level, metadata_fields, tensor_dtypes_and_shapes


test_byte_level, test_metadata_fields, test_tensor_dtypes_and_shapes = _properties(300)
test_byte_level_bench, test_metadata_fields_bench, test_tensor_dtypes_and_shapes_bench = (pytest.mark.bench(t) for t in _properties(10_000))


def test_the_valid_bases_are_accepted(ckpt_file):
    """The mutations start from files the loader accepts, so a rejection is the mutation's doing."""
    for data in VALID.values():
        assert check(ckpt_file, data) is not None


def test_the_strategies_reach_both_outcomes(ckpt_file):
    """Drawn examples include accepted files: a property that only ever sees InputError would
    test nothing about what gets through."""
    outcomes = {"accepted": 0, "rejected": 0}

    @settings(max_examples=150, deadline=None, database=None, derandomize=True)
    @given(data=st.one_of(tensor_sets(), metadata_texts().map(lambda d: file_bytes(d[1], base_learner(d[0].split("-")[0]), BACKBONE if "embedded" in d[0] else None))))
    def run(data):
        outcomes["accepted" if check(ckpt_file, data) is not None else "rejected"] += 1

    run()
    assert outcomes["accepted"] > 0 and outcomes["rejected"] > 0, outcomes
