"""Hostile checkpoints through the real CLI: every byte of a delivered checkpoint is written by
the party the gate checks. Each case must end in exit 2 with one stderr line naming the file and
the problem: no traceback, no raw control characters, no output folder, the input untouched.

`verify` loads the checkpoint before it reads the pool (ci_gate/scan.py), so every case here
fails in ci_gate.checkpoint.format.load_checkpoint.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import pickle
import re
import socket
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save as st_save

from ci_gate.checkpoint.format import (
    BACKBONE_PREFIX,
    LEARNER_PREFIX,
    MAX_CLASSES,
    MAX_META_CHARS,
    MAX_TENSORS,
    META_KEY,
    OPENAI_MEAN,
    OPENAI_STD,
    backbone_digest,
    load_checkpoint,
)
from ci_gate.cli import main
from ci_gate.errors import InputError
from ci_gate.learners import KINDS

# what must never reach a terminal from a message about attacker-written data
UNSAFE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")

WIDTH, VIS = 16, 64
MICRO_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 16, "layers": 1, "width": 16, "patch_size": 8, "head_width": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": WIDTH, "heads": 2, "layers": 1},
}

# pydantic's wording for a Literal over the registry's kinds: 'a', 'b' or 'c'
_KINDS_TEXT = ", ".join(f"'{k}'" for k in KINDS[:-1]) + f" or '{KINDS[-1]}'"


# --- building valid checkpoints, then breaking them ---------------------------------------------


def meta_dict(kind: str = "coop", **learner) -> dict:
    return {
        "format_version": 1,
        "learner": {"kind": kind, "class_names": ["cat", "dog", "golden_retriever"], "n_ctx": 4, "ctx_init": "a photo of a", **learner},
        "backbone": {"architecture": "ViT-B-16", "config": None, "pretrained": "openai", "sha256": "ab" * 32, "quick_gelu": True, "embedded": False},
        "preprocessing": {"image_size": 224, "mean": list(OPENAI_MEAN), "std": list(OPENAI_STD), "interpolation": "bicubic", "resize_mode": "shortest"},
        "provenance": {"producer": "hostile corpus"},
    }


def learner_tensors(kind: str = "coop", n_ctx: int = 4, width: int = WIDTH, vis: int = VIS) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    out = {"ctx": torch.randn(n_ctx, width, generator=gen) * 0.02}
    if kind == "cocoop":
        hidden = vis // 16
        out |= {
            "meta_net.linear1.weight": torch.randn(hidden, vis, generator=gen),
            "meta_net.linear1.bias": torch.zeros(hidden),
            "meta_net.linear2.weight": torch.randn(width, hidden, generator=gen),
            "meta_net.linear2.bias": torch.zeros(width),
        }
    return out


def st_bytes(meta: dict | str | None, learner: dict[str, torch.Tensor], backbone: dict[str, torch.Tensor] | None = None) -> bytes:
    tensors = {LEARNER_PREFIX + k: v.contiguous() for k, v in learner.items()}
    tensors |= {BACKBONE_PREFIX + k: v.contiguous() for k, v in (backbone or {}).items()}
    header = None if meta is None else {META_KEY: meta if isinstance(meta, str) else json.dumps(meta)}
    return st_save(tensors, metadata=header)


def embedded(learner_kind: str = "coop", backbone: dict[str, torch.Tensor] | None = None, digest_of: dict | None = None) -> tuple[dict, dict]:
    backbone = backbone if backbone is not None else {"visual.proj": torch.randn(4, 4, generator=torch.Generator().manual_seed(2))}
    meta = meta_dict(learner_kind)
    meta["backbone"] = {"architecture": None, "config": {"embed_dim": 16, "vision_cfg": {}, "text_cfg": {}}, "pretrained": None,
                        "sha256": backbone_digest(digest_of if digest_of is not None else backbone), "quick_gelu": False, "embedded": True}
    return meta, backbone


def inline_config(mutate: Callable[[dict], None]) -> bytes:
    """An embedded-backbone checkpoint whose inline open_clip config is then edited."""
    meta, backbone = embedded()
    meta["backbone"]["config"] = copy.deepcopy(MICRO_CLIP)
    mutate(meta["backbone"]["config"])
    return st_bytes(meta, learner_tensors(), backbone)


def split(data: bytes) -> tuple[dict, bytes]:
    n = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def join(header: dict | bytes, body: bytes) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + body


def with_header(mutate: Callable[[dict], None], meta: dict | None = None) -> bytes:
    header, body = split(st_bytes(meta or meta_dict(), learner_tensors()))
    mutate(header)
    return join(header, body)


def meta_text(mutate: Callable[[dict], None], kind: str = "coop") -> bytes:
    meta = meta_dict(kind)
    mutate(meta)
    return st_bytes(meta, learner_tensors(kind))


def in_field(section: str, **values) -> Callable[[dict], None]:
    return lambda m: m[section].update(values)


def raw_meta(text: str) -> bytes:
    return st_bytes(text, learner_tensors())


def edited(old: str, new: str) -> bytes:
    """The valid metadata's JSON text with one piece replaced (JSON json.dumps cannot write)."""
    text = json.dumps(meta_dict())
    assert text.count(old) == 1, old  # a silent no-op would turn a hostile case into a valid one
    return raw_meta(text.replace(old, new))


def deep(depth: int) -> str:
    """The valid metadata with a provenance value nested `depth` arrays deep: the document is
    then depth + 2 levels deep (the top object, then provenance)."""
    text = json.dumps(meta_dict())
    assert '{"producer": "hostile corpus"}' in text
    return text.replace('{"producer": "hostile corpus"}', '{"producer": ' + "[" * depth + "]" * depth + "}")


def write(name: str, data: bytes) -> Callable[[Path], Path]:
    def build(tmp: Path) -> Path:
        path = tmp / name
        path.write_bytes(data)
        return path

    return build


def tensors_case(learner: dict[str, torch.Tensor], kind: str = "coop", backbone: dict | None = None, meta: dict | None = None, name: str = "m.safetensors"):
    return lambda tmp: write(name, st_bytes(meta or meta_dict(kind), learner, backbone))(tmp)


def with_nan(t: torch.Tensor, value: float = float("nan")) -> torch.Tensor:
    t = t.clone()
    t.view(-1)[3] = value
    return t


def _fifo(tmp: Path) -> Path:
    path = tmp / "model.safetensors"
    os.mkfifo(path)
    return path


def _symlink(target: str | Callable[[Path], Path]) -> Callable[[Path], Path]:
    def build(tmp: Path) -> Path:
        link = tmp / "link.safetensors"
        link.symlink_to(target(tmp) if callable(target) else target)
        return link

    return build


def _loop(tmp: Path) -> Path:
    (tmp / "a.safetensors").symlink_to(tmp / "b.safetensors")
    (tmp / "b.safetensors").symlink_to(tmp / "a.safetensors")
    return tmp / "a.safetensors"


def _directory(tmp: Path) -> Path:
    (tmp / "model.safetensors").mkdir()
    return tmp / "model.safetensors"


def _socket(tmp: Path) -> Path:
    path = tmp / "s.safetensors"
    if len(str(path)) > 100:  # AF_UNIX path limit
        pytest.skip("temporary path too long for a unix socket")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    sock.close()
    return path


def _torchscript() -> bytes:
    import io

    import warnings

    buf = io.BytesIO()
    with warnings.catch_warnings():  # TorchScript is deprecated, which is no reason to trust it
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), buf)
    return buf.getvalue()


def _torch_save() -> bytes:
    import io

    buf = io.BytesIO()
    torch.save({"ctx": torch.zeros(4, 16)}, buf)
    return buf.getvalue()


def _misaligned_offsets() -> bytes:
    header, body = split(st_bytes(meta_dict(), learner_tensors()))
    header[LEARNER_PREFIX + "ctx"]["data_offsets"] = [0, len(body) + 64]
    return join(header, body)


def _non_string_metadata() -> bytes:
    header, body = split(st_bytes(meta_dict(), learner_tensors()))
    header["__metadata__"] = {META_KEY: meta_dict()}  # an object where safetensors wants a string
    return join(header, body)


def _unknown_dtype() -> bytes:
    header, body = split(st_bytes(meta_dict(), learner_tensors()))
    header[LEARNER_PREFIX + "ctx"]["dtype"] = "Q9"
    return join(header, body)


def _deep_safetensors_header() -> bytes:
    header, body = split(st_bytes(meta_dict(), learner_tensors()))
    text = json.dumps(header)[:-1] + ', "x": ' + "[" * 100_000 + "]" * 100_000 + "}"
    return join(text.encode(), body)


def _many_tensors() -> bytes:
    # written by hand: one F32 scalar each, so the header is all there is to it
    header = {"__metadata__": {META_KEY: json.dumps(embedded()[0])}}
    header |= {f"{BACKBONE_PREFIX}t{i}": {"dtype": "F32", "shape": [1], "data_offsets": [4 * i, 4 * i + 4]} for i in range(MAX_TENSORS + 1)}
    return join(header, bytes(4 * (MAX_TENSORS + 1)))


def _shadowed_nan() -> bytes:
    # a backbone tensor with the learner tensor's short name must not hide the learner's NaN
    learner = learner_tensors()
    learner["ctx"] = with_nan(learner["ctx"])
    backbone = {"ctx": torch.zeros(4, WIDTH)}
    meta, _ = embedded(backbone=backbone)
    return st_bytes(meta, learner, backbone)


def _mk(name: str, data: bytes | Callable[[], bytes]):
    return lambda tmp: write(name, data() if callable(data) else data)(tmp)


L = learner_tensors
CASES = [
    # the path itself
    pytest.param(lambda tmp: tmp / "absent.safetensors", r"checkpoint not found$", id="missing"),
    pytest.param(_symlink(lambda tmp: tmp / "gone.safetensors"), r"checkpoint not found \(dangling symlink", id="dangling-symlink"),
    pytest.param(_directory, r"is a directory, not a checkpoint file", id="directory"),
    pytest.param(_fifo, r"not a regular file \(a FIFO\)", id="fifo"),
    pytest.param(_socket, r"not a regular file \(a socket\)", id="socket"),
    pytest.param(lambda tmp: Path("/dev/null"), r"not a regular file \(a character device\)", id="dev-null"),
    pytest.param(_symlink("/dev/zero"), r"not a regular file \(a character device\) \(via symlink to /dev/zero\)", id="symlink-dev-zero"),
    pytest.param(_symlink(_directory), r"is a directory.*via symlink", id="symlink-directory"),
    pytest.param(_loop, r"cannot read checkpoint: .*symbolic links", id="symlink-loop"),
    # the container
    pytest.param(_mk("m.safetensors", b""), r"empty file, not a checkpoint", id="empty"),
    pytest.param(_mk("m.safetensors", b"\x10\x00\x00"), r"3 bytes is shorter than the 8-byte header length", id="shorter-than-length"),
    pytest.param(_mk("m.safetensors", struct.pack("<Q", 5000) + b'{"a":1}'), r"header length 5000 is larger than the file's 15 bytes", id="length-past-end"),
    pytest.param(_mk("m.safetensors", struct.pack("<Q", 200 * 2**20) + b"{}"), r"header length 209715200 exceeds the 100 MB limit", id="length-over-100mb"),
    pytest.param(_mk("m.safetensors", struct.pack("<Q", 2) + b"[]"), r"the header is not a JSON object", id="header-not-object"),
    pytest.param(_mk("m.safetensors", pickle.dumps({"ctx": [0.0]}, protocol=4)), r"a pickle/torch.save file, not safetensors; .*'ci-gate convert'", id="pickle-named-safetensors"),
    pytest.param(_mk("m.pth", pickle.dumps([1, 2], protocol=2)), r"a pickle/torch.save file", id="pickle-protocol-2"),
    pytest.param(_mk("m.safetensors", _torch_save), r"a zip archive \(torch.save or TorchScript file\).*'ci-gate convert'", id="torch-save-zip"),
    pytest.param(_mk("m.pt", _torchscript), r"a zip archive", id="torchscript"),
    pytest.param(_mk("m.bin", b"GGUF\x03\x00\x00\x00" + b"\x00" * 64), r"not a safetensors file.*'ci-gate convert'", id="other-bytes-bin-suffix"),
    pytest.param(_mk("m.safetensors", lambda: st_bytes(meta_dict(), L())[:-40]), r"truncated or corrupt", id="truncated-data"),
    pytest.param(_mk("m.safetensors", join(b"{garbage", b"")), r"not a readable safetensors file", id="header-garbage"),
    pytest.param(_mk("m.safetensors", _deep_safetensors_header), r"not a readable safetensors file", id="header-nested-100000"),
    pytest.param(_mk("m.safetensors", _misaligned_offsets), r"not a readable safetensors file", id="offsets-past-data"),
    pytest.param(_mk("m.safetensors", _non_string_metadata), r"not a readable safetensors file", id="metadata-not-string"),
    pytest.param(_mk("m.safetensors", _unknown_dtype), r"not a readable safetensors file", id="unknown-dtype"),
    pytest.param(_mk("m.safetensors", _many_tensors), rf"{MAX_TENSORS + 1} tensors, more than the {MAX_TENSORS}", id="too-many-tensors"),
    # the metadata document
    pytest.param(_mk("m.safetensors", lambda: st_bytes(None, L())), r"no ci-gate metadata", id="no-metadata"),
    pytest.param(_mk("m.safetensors", lambda: raw_meta("{not json")), r"metadata: not valid JSON", id="metadata-not-json"),
    pytest.param(_mk("m.safetensors", lambda: raw_meta("[" * 100_000 + "]" * 100_000)), r"metadata: nested deeper than 64 levels", id="metadata-nested-100000"),
    pytest.param(_mk("m.safetensors", lambda: raw_meta(deep(63))), r"metadata: nested deeper than 64 levels", id="provenance-depth-65"),
    pytest.param(_mk("m.safetensors", lambda: edited(str(OPENAI_MEAN[0]), "NaN")), r"metadata: NaN is not a finite number", id="nan-in-preprocessing"),
    pytest.param(_mk("m.safetensors", lambda: edited(str(OPENAI_STD[0]), "Infinity")), r"metadata: Infinity is not a finite number", id="inf-in-preprocessing"),
    pytest.param(_mk("m.safetensors", lambda: edited(str(OPENAI_STD[2]), "-Infinity")), r"metadata: -Infinity is not a finite number", id="minus-inf-in-preprocessing"),
    pytest.param(_mk("m.safetensors", lambda: edited(str(OPENAI_MEAN[1]), "1e999")), r"metadata: number 1e999 overflows to infinity", id="overflow-to-inf"),
    # a string pydantic's lax mode would read as a float (found by the fuzz test in CI)
    pytest.param(_mk("m.safetensors", lambda: edited(str(OPENAI_MEAN[0]), '"NAN"')), r"preprocessing\.mean", id="nan-string-in-preprocessing"),
    pytest.param(_mk("m.safetensors", lambda: edited(str(OPENAI_STD[1]), '"-Infinity"')), r"preprocessing\.std", id="inf-string-in-preprocessing"),
    pytest.param(_mk("m.safetensors", lambda: raw_meta(json.dumps(meta_dict())[:-1] + ', "learner": {}}')), r"metadata: duplicate key 'learner'", id="duplicate-key"),
    pytest.param(_mk("m.safetensors", lambda: raw_meta("[1, 2]")), r"metadata: expected a JSON object, got an array", id="metadata-array"),
    pytest.param(_mk("m.safetensors", lambda: edited(str(OPENAI_MEAN[0]), "1" + "0" * 5000)), r"metadata: not valid JSON", id="integer-5000-digits"),
    pytest.param(_mk("m.safetensors", lambda: raw_meta(json.dumps({**meta_dict(), "provenance": {"pad": "x" * MAX_META_CHARS}}))), r"metadata: \d+ characters, more than", id="metadata-over-16mb"),
    # format_version
    pytest.param(_mk("m.safetensors", lambda: meta_text(lambda m: m.update(format_version="1"))), r"metadata.format_version: must be the integer 1, got a string '1'", id="version-string"),
    pytest.param(_mk("m.safetensors", lambda: meta_text(lambda m: m.update(format_version=1.0))), r"metadata.format_version: must be the integer 1, got a number 1.0", id="version-float"),
    pytest.param(_mk("m.safetensors", lambda: meta_text(lambda m: m.update(format_version=True))), r"metadata.format_version: must be the integer 1, got a boolean True", id="version-bool"),
    pytest.param(_mk("m.safetensors", lambda: meta_text(lambda m: m.pop("format_version"))), r"metadata.format_version: missing", id="version-missing"),
    pytest.param(_mk("m.safetensors", lambda: meta_text(lambda m: m.update(format_version=2))), r"metadata.format_version: version 2 is not supported", id="version-2"),
    pytest.param(_mk("m.safetensors", lambda: meta_text(lambda m: m.update(format_version=10**300))), r"metadata.format_version: version 1000000000\d*\.\.\. is not supported", id="version-huge"),
    pytest.param(_mk("m.safetensors", lambda: meta_text(lambda m: m.update(format_version=None))), r"metadata.format_version: must be the integer 1, got null", id="version-null"),
    # the fields
    pytest.param(_mk("m.safetensors", lambda: meta_text(in_field("learner", class_names=["cat", "d" * 10_000]))), r"metadata.learner.class_names\[1\]: String should have at most 200 characters", id="class-name-10000-chars"),
    pytest.param(_mk("m.safetensors", lambda: meta_text(in_field("learner", class_names=["cat", "dog", "\x1b[31mred"]))), r"metadata.learner.class_names\[2\]: contains control character U\+001B", id="class-name-esc"),
    pytest.param(_mk("m.safetensors", lambda: meta_text(in_field("learner", class_names=["cat", "dog\nINFO: clean"]))), r"class_names\[1\]: contains control character U\+000A", id="class-name-newline"),
    pytest.param(_mk("m.safetensors", lambda: meta_text(in_field("learner", class_names=["c\x00at", "dog"]))), r"class_names\[0\]: contains control character U\+0000", id="class-name-nul"),
    pytest.param(_mk("m.safetensors", lambda: meta_text(in_field("learner", class_names=["cat", "dog", "\u202egod"]))), r"class_names\[2\]: contains control character U\+202E", id="class-name-rlo"),
    pytest.param(_mk("m.safetensors", lambda: meta_text(in_field("learner", class_names=["cat", "\u2066dog\u2069"]))), r"class_names\[1\]: contains control character U\+2066", id="class-name-isolate"),
    pytest.param(_mk("m.safetensors", lambda: meta_text(in_field("learner", class_names=["cat", "\x9b31mdog"]))), r"class_names\[1\]: contains control character U\+009B", id="class-name-c1-csi"),
    pytest.param(_mk("m.safetensors", lambda: edited('"dog"', '"\\ud800"')), r"metadata: a string holds a lone surrogate \(U\+D800\)", id="class-name-lone-surrogate"),
    pytest.param(_mk("m.safetensors", lambda: edited('"producer": "hostile corpus"', '"producer": "\\udfff"')), r"metadata: a string holds a lone surrogate \(U\+DFFF\)", id="provenance-lone-surrogate"),
    pytest.param(_mk("m.safetensors", lambda: edited('"provenance": {', '"provenance": {"\\ud83d": 1, ')), r"metadata: a string holds a lone surrogate \(U\+D83D\)", id="provenance-key-lone-surrogate"),
    pytest.param(_mk("m.safetensors", lambda: meta_text(in_field("learner", class_names=[f"c{i}" for i in range(MAX_CLASSES + 1)]))), rf"metadata.learner.class_names: List should have at most {MAX_CLASSES} items", id="too-many-classes"),
    pytest.param(_mk("m.safetensors", lambda: meta_text(in_field("learner", class_names=["Golden_Retriever", "golden retriever"]))), r"class_names must be unique: \[0\] and \[1\] give the same prompt", id="classes-same-prompt"),
    pytest.param(_mk("m.safetensors", lambda: meta_text(in_field("learner", class_names=[7, "dog"]))), r"metadata.learner.class_names\[0\]: Input should be a valid string", id="class-name-int"),
    pytest.param(_mk("m.safetensors", lambda: meta_text(in_field("learner", class_names=["cat", "  "]))), r"class_names\[1\] is empty", id="class-name-blank"),
    pytest.param(_mk("m.safetensors", lambda: meta_text(in_field("learner", ctx_init="a photo of a big fluffy"))), r"ctx_init has 6 words, more than n_ctx=4", id="ctx-init-too-many-words"),
    pytest.param(_mk("m.safetensors", lambda: meta_text(in_field("learner", ctx_init="a \x1b]0;pwned\x07 of a"))), r"metadata.learner.ctx_init: contains control character U\+001B", id="ctx-init-esc"),
    pytest.param(_mk("m.safetensors", lambda: meta_text(in_field("learner", n_ctx="4"))), r"metadata.learner.n_ctx: Input should be a valid integer", id="n-ctx-string"),
    pytest.param(_mk("m.safetensors", lambda: meta_text(in_field("learner", n_ctx=True))), r"metadata.learner.n_ctx: Input should be a valid integer", id="n-ctx-bool"),
    pytest.param(_mk("m.safetensors", lambda: meta_text(in_field("learner", n_ctx=0, ctx_init=None))), r"a coop learner needs n_ctx >= 1", id="coop-n-ctx-0"),
    pytest.param(_mk("m.safetensors", lambda: meta_text(in_field("learner", kind="lora"))), r"metadata.learner.kind: Input should be " + re.escape(_KINDS_TEXT), id="kind-unknown"),
    pytest.param(_mk("m.safetensors", lambda: meta_text(in_field("backbone", quick_gelu=1))), r"metadata.backbone.quick_gelu: Input should be a valid boolean", id="quick-gelu-int"),
    pytest.param(_mk("m.safetensors", lambda: meta_text(in_field("backbone", embedded="no"))), r"metadata.backbone.embedded: Input should be a valid boolean", id="embedded-string"),
    pytest.param(_mk("m.safetensors", lambda: meta_text(in_field("backbone", sha256="XYZ"))), r"metadata.backbone.sha256: String should match pattern", id="sha256-not-hex"),
    pytest.param(_mk("m.safetensors", lambda: meta_text(in_field("backbone", architecture="ViT\x1b[2J-B-16"))), r"metadata.backbone.architecture: contains control character U\+001B", id="architecture-esc"),
    pytest.param(_mk("m.safetensors", lambda: meta_text(lambda m: m.update({"\x1b[31mextra": 1}))), r"metadata.\\x1b\[31mextra: Extra inputs are not permitted", id="extra-key-esc"),
    # an inline open_clip config (it goes to CLIP(**config))
    pytest.param(_mk("m.safetensors", lambda: inline_config(lambda c: c.update(bogus=1))), r"metadata.backbone.config: unknown key 'bogus'", id="config-unknown-key"),
    pytest.param(_mk("m.safetensors", lambda: inline_config(lambda c: c["text_cfg"].update(hf_tokenizer="x"))), r"metadata.backbone.config: text_cfg: unknown key 'hf_tokenizer'", id="config-tower-unknown-key"),
    pytest.param(_mk("m.safetensors", lambda: inline_config(lambda c: c["text_cfg"].update(width="16"))), r"metadata.backbone.config: text_cfg.width: Input should be a valid integer", id="config-width-string"),
    pytest.param(_mk("m.safetensors", lambda: inline_config(lambda c: c["vision_cfg"].update(width=10**9))), r"metadata.backbone.config: vision_cfg.width 1000000000 is outside \[1, 16384\]", id="config-width-huge"),
    pytest.param(_mk("m.safetensors", lambda: inline_config(lambda c: c["text_cfg"].update(heads=0))), r"metadata.backbone.config: text_cfg.heads 0 is outside", id="config-heads-zero"),
    pytest.param(_mk("m.safetensors", lambda: inline_config(lambda c: c["vision_cfg"].update(layers=[3, 4, 6, 100_000]))), r"vision_cfg.layers 100000 is outside", id="config-resnet-layers-huge"),
    pytest.param(_mk("m.safetensors", lambda: inline_config(lambda c: c.update(embed_dim=True))), r"metadata.backbone.config: embed_dim must be an integer", id="config-embed-dim-bool"),
    pytest.param(_mk("m.safetensors", lambda: inline_config(lambda c: c.pop("text_cfg"))), r"metadata.backbone.config: text_cfg is required", id="config-no-text-tower"),
    pytest.param(_mk("m.safetensors", lambda: inline_config(lambda c: c.update(vision_cfg=[1]))), r"metadata.backbone.config: vision_cfg must be an object", id="config-tower-not-object"),
    pytest.param(_mk("m.safetensors", lambda: inline_config(lambda c: c["vision_cfg"].update(timm_model_name="vit_base_patch16_224", timm_model_pretrained=True))),
                 r"vision_cfg.timm_model_pretrained: an inline config may not download tower weights", id="config-downloads-weights"),
    pytest.param(_mk("m.safetensors", lambda: inline_config(lambda c: c["vision_cfg"].update(mlp_ratio=1e300))), r"vision_cfg.mlp_ratio 1e\+300 is outside", id="config-mlp-ratio-huge"),
    # the text tower must read the CLIP tokenizer's ids, the only tokenizer ci-gate prompts with
    pytest.param(_mk("m.safetensors", lambda: inline_config(lambda c: c["text_cfg"].update(vocab_size=100))),
                 r"metadata.backbone.config: text_cfg.vocab_size 100 is smaller than the vocabulary of the CLIP tokenizer .*\(49408 tokens\)", id="config-vocab-below-tokenizer"),
    pytest.param(_mk("m.safetensors", lambda: inline_config(lambda c: c["text_cfg"].update(embed_cls=True))), r"metadata.backbone.config: text_cfg.embed_cls: ", id="config-text-embed-cls"),
    pytest.param(_mk("m.safetensors", lambda: inline_config(lambda c: c["text_cfg"].update(pool_type="eos"))),
                 r"metadata.backbone.config: text_cfg.eos_id 2: pool_type 'eos' pools at that token, and the CLIP tokenizer ends every prompt with 49407", id="config-eos-pool-other-token"),
    pytest.param(_mk("m.safetensors", lambda: meta_text(in_field("backbone", architecture="ViT-L-14-CLIPA"))),
                 r"metadata.backbone.architecture: ViT-L-14-CLIPA's text_cfg.vocab_size 32000 is smaller", id="architecture-vocab-below-tokenizer"),
    pytest.param(_mk("m.safetensors", lambda: meta_text(in_field("backbone", architecture="ViT-H-14-worldwide"))),
                 r"metadata.backbone.architecture: ViT-H-14-worldwide's text_cfg.eos_id 2: pool_type 'eos'", id="architecture-other-tokenizer"),
    # the tensors
    pytest.param(tensors_case({"ctx": torch.zeros(4, WIDTH, dtype=torch.int32)}), r"tensor 'ctx' has dtype I32; learner tensors must be F32, F16 or BF16", id="ctx-int32"),
    pytest.param(tensors_case({"ctx": torch.zeros(4, WIDTH, dtype=torch.bool)}), r"tensor 'ctx' has dtype BOOL", id="ctx-bool"),
    pytest.param(tensors_case({"ctx": torch.zeros(4, WIDTH, dtype=torch.uint8)}), r"tensor 'ctx' has dtype U8", id="ctx-uint8"),
    pytest.param(tensors_case({"ctx": torch.zeros(4, WIDTH, dtype=torch.float64)}), r"tensor 'ctx' has dtype F64", id="ctx-float64"),
    pytest.param(tensors_case({"ctx": torch.zeros(4, WIDTH).to(torch.float8_e4m3fn)}), r"tensor 'ctx' has dtype F8_E4M3", id="ctx-float8"),
    pytest.param(tensors_case({**L("cocoop"), "meta_net.linear1.weight": torch.zeros(4, VIS, dtype=torch.int64)}, "cocoop"), r"tensor 'meta_net.linear1.weight' has dtype I64", id="meta-net-int64"),
    pytest.param(tensors_case({"ctx": with_nan(L()["ctx"])}), r"tensor 'ctx' contains NaN or Inf", id="ctx-nan"),
    pytest.param(tensors_case({"ctx": with_nan(L()["ctx"], float("inf")).bfloat16()}), r"tensor 'ctx' contains NaN or Inf", id="ctx-inf-bf16"),
    pytest.param(tensors_case({"ctx": with_nan(L()["ctx"], float("-inf")).half()}), r"tensor 'ctx' contains NaN or Inf", id="ctx-minus-inf-fp16"),
    pytest.param(tensors_case({**L("cocoop"), "meta_net.linear2.bias": with_nan(torch.zeros(WIDTH))}, "cocoop"), r"tensor 'meta_net.linear2.bias' contains NaN", id="meta-net-nan"),
    pytest.param(_mk("m.safetensors", lambda: st_bytes(embedded(backbone={"w": with_nan(torch.zeros(8))})[0], L(), {"w": with_nan(torch.zeros(8))})), r"tensor 'backbone.w' contains NaN", id="backbone-nan"),
    pytest.param(_mk("m.safetensors", _shadowed_nan), r"tensor 'ctx' contains NaN", id="nan-shadowed-by-backbone-name"),
    pytest.param(_mk("m.safetensors", lambda: st_bytes(embedded(backbone={"w": torch.zeros(8, dtype=torch.int32)})[0], L(), {"w": torch.zeros(8, dtype=torch.int32)})), r"tensor 'backbone.w' has dtype I32; backbone tensors must be floating point", id="backbone-int32"),
    pytest.param(_mk("m.safetensors", lambda: st_bytes(embedded(backbone={"w": torch.zeros(0, 4)})[0], L(), {"w": torch.zeros(0, 4)})), r"tensor 'backbone.w' is empty \(shape \(0, 4\)\)", id="backbone-zero-size"),
    pytest.param(tensors_case({"ctx": torch.zeros(4, 0)}), r"tensor 'ctx' is empty", id="ctx-zero-size"),
    pytest.param(tensors_case({"ctx": torch.zeros(4, WIDTH, 2)}), r"ctx has shape \(4, 16, 2\), expected \(4, width\)", id="ctx-3d"),
    pytest.param(tensors_case({"ctx": torch.zeros(WIDTH)}), r"ctx has shape \(16,\), expected \(4, width\)", id="ctx-1d"),
    pytest.param(tensors_case({"ctx": torch.zeros(6, WIDTH)}), r"ctx has shape \(6, 16\), expected \(4, width\)", id="ctx-rows-not-n-ctx"),
    pytest.param(tensors_case({**L("cocoop"), "meta_net.linear1.weight": torch.zeros(5, VIS)}, "cocoop"), r"meta_net.linear1.weight has shape \(5, 64\), expected \(d // 16, d\)", id="meta-net-hidden-not-d-16"),
    pytest.param(tensors_case({**L("cocoop"), "meta_net.linear2.weight": torch.zeros(WIDTH + 1, VIS // 16)}, "cocoop"), r"meta_net.linear2.weight has shape \(17, 4\), expected \(16, 4\)", id="meta-net-width-not-ctx"),
    pytest.param(tensors_case({**L("cocoop"), "meta_net.linear1.bias": torch.zeros(2, 2)}, "cocoop"), r"meta_net.linear1.bias has shape \(2, 2\), expected \(4,\)", id="meta-net-bias-2d"),
    pytest.param(tensors_case(L(), "cocoop"), r"cocoop checkpoint lacks tensors", id="cocoop-without-meta-net"),
    pytest.param(tensors_case({**L(), "lora.A": torch.zeros(2)}), r"coop checkpoint has unexpected learner tensors 'lora.A'$", id="extra-learner-tensor"),
    pytest.param(_mk("m.safetensors", lambda: st_save({LEARNER_PREFIX + "ctx": torch.zeros(4, WIDTH), "\x1b[2Jevil": torch.zeros(1)}, metadata={META_KEY: json.dumps(meta_dict())})), r"unexpected tensors '\\x1b\[2Jevil'$", id="stray-tensor-esc-name"),
    pytest.param(_mk("m.safetensors", lambda: st_bytes(embedded(digest_of={"other": torch.ones(1)})[0], L(), embedded()[1])), r"do not match their pinned SHA-256", id="backbone-digest-mismatch"),
    pytest.param(_mk("m.safetensors", lambda: st_bytes(embedded()[0], L())), r"embedded but the file has no backbone tensors", id="embedded-without-backbone"),
    pytest.param(_mk("m.safetensors", lambda: st_bytes(meta_dict(), L(), {"w": torch.zeros(2)})), r"backbone tensors present but metadata says the backbone is not embedded", id="backbone-not-declared"),
    # zero-shot has no learner tensors, and ignored backbone tensors would still ride along with the file
    pytest.param(_mk("m.safetensors", lambda: st_bytes(meta_dict("zeroshot", n_ctx=0, ctx_init=None), {}, {"visual.proj": torch.zeros(2)})),
                 r"backbone tensors present but metadata says the backbone is not embedded", id="zeroshot-backbone-not-declared"),
]


def _digest(path: Path) -> str | None:
    try:
        if not path.is_file():
            return None
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pool")
    gen = torch.Generator().manual_seed(0)
    for i in range(4):  # noise, not flat colour: the pool loader may refuse constant images
        pixels = torch.randint(0, 256, (24, 24, 3), generator=gen, dtype=torch.uint8).numpy()
        Image.fromarray(pixels, "RGB").save(root / f"{i}.png")
    return root


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


@pytest.mark.parametrize(("build", "problem"), CASES)
def test_hostile_checkpoint_is_exit_2_with_one_line(tmp_path: Path, pool: Path, capsys, build, problem: str) -> None:
    work = tmp_path / "in"
    work.mkdir()
    path = build(work)
    before = _digest(path)
    kind_before = os.lstat(path).st_mode if os.path.lexists(path) else None
    out = tmp_path / "out"

    code, stdout, stderr = run_cli(["verify", str(path), "--pool", str(pool), "--out", str(out), "--quiet"], capsys)

    assert code == 2, stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"ci-gate: error: {path}: "), lines[0]
    assert re.search(problem, lines[0]), lines[0]
    assert "Traceback" not in stderr and not stdout
    assert not UNSAFE.search(lines[0]), repr(lines[0])
    assert len(lines[0]) < 600
    assert not out.exists()
    assert _digest(path) == before
    assert (os.lstat(path).st_mode if os.path.lexists(path) else None) == kind_before


def test_the_corpus_is_large_enough() -> None:
    assert len(CASES) >= 45


# --- the same builders produce checkpoints the loader accepts: the cases fail for their reason ---


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(lambda: st_bytes(meta_dict(), L()), id="coop"),
        pytest.param(lambda: st_bytes(meta_dict("cocoop"), L("cocoop")), id="cocoop"),
        pytest.param(lambda: st_bytes(meta_dict(), {"ctx": L()["ctx"].bfloat16()}), id="coop-bf16"),
        pytest.param(lambda: st_bytes(embedded()[0], L(), embedded()[1]), id="embedded"),
        pytest.param(lambda: st_bytes(embedded(backbone={"bn.num_batches_tracked": torch.tensor(3), "w": torch.ones(2)})[0], L(),
                                      {"bn.num_batches_tracked": torch.tensor(3), "w": torch.ones(2)}), id="embedded-int-buffer"),
        pytest.param(lambda: raw_meta(deep(62)), id="provenance-depth-64"),
        pytest.param(lambda: st_bytes(meta_dict(class_names=["cat", "caf\u00e9", "\u732b", "golden_retriever"]), L()), id="unicode-class-names"),
        pytest.param(lambda: st_bytes(meta_dict(ctx_init=None), L()), id="no-ctx-init"),
    ],
)
def test_unbroken_variants_load(tmp_path: Path, data) -> None:
    path = tmp_path / "m.safetensors"
    path.write_bytes(data())
    ckpt = load_checkpoint(path)
    assert ckpt.meta.format_version == 1
    assert ckpt.learner_tensors["ctx"].shape == (4, WIDTH)


def _micro_checkpoint(path: Path) -> None:
    from open_clip.model import CLIP

    torch.manual_seed(0)
    state = {k: v.detach().clone() for k, v in CLIP(**copy.deepcopy(MICRO_CLIP)).state_dict().items()}
    meta = meta_dict("coop")
    meta["backbone"] = {"architecture": None, "config": copy.deepcopy(MICRO_CLIP), "pretrained": None,
                        "sha256": backbone_digest(state), "quick_gelu": False, "embedded": True}
    meta["preprocessing"]["image_size"] = 16
    path.write_bytes(st_bytes(meta, L(), state))


def test_valid_safetensors_named_bin_passes_the_loader_and_fails_later_at_the_pool(tmp_path: Path, pool: Path, capsys, one_thread) -> None:
    path = tmp_path / "model.bin"
    _micro_checkpoint(path)
    code, _, stderr = run_cli(["verify", str(path), "--pool", str(pool), "--out", str(tmp_path / "out"), "--quiet"], capsys)
    # judged by content: the checkpoint is read and the model built; the 4-image pool is what fails
    assert code == 2
    assert stderr.startswith(f"ci-gate: error: {pool}: pool has "), stderr
    assert str(path) not in stderr


# --- real towers: the inline config is read by open_clip, the prompts by the CLIP tokenizer -------


def _tiny_zeroshot(path: Path, text_cfg: dict) -> Path:
    """A zero-shot checkpoint whose embedded tiny-32 tower is built from the edited config, so its
    tensors fit it: only the prompts' token ids (or positions) can fail it."""
    from ci_gate.model.small import random_clip_state, small_config

    cfg = small_config("tiny-32")
    cfg["text_cfg"].update(text_cfg)
    state = random_clip_state(cfg, seed=0)
    meta = meta_dict("zeroshot", n_ctx=0, ctx_init=None)
    meta["backbone"] = {"architecture": None, "config": cfg, "pretrained": None, "sha256": backbone_digest(state), "quick_gelu": False, "embedded": True}
    meta["preprocessing"]["image_size"] = 32
    path.write_bytes(st_bytes(meta, {}, state))
    return path


@pytest.mark.parametrize(
    ("text_cfg", "problem"),
    [
        # token ids up to 49407 index a 100-row embedding: IndexError (a device assert on CUDA), exit 3
        pytest.param({"vocab_size": 100}, "text_cfg.vocab_size 100 is smaller than the vocabulary of the CLIP tokenizer", id="vocab-100"),
        pytest.param({"vocab_size": 49407}, "text_cfg.vocab_size 49407 is smaller", id="vocab-one-short"),
        # 78 positions for 77 tokens: RuntimeError in CLIP.encode_text, exit 3
        pytest.param({"embed_cls": True}, "text_cfg.embed_cls: CLIP's built-in text tower has no class embedding", id="embed-cls"),
        # pooled at the start token for every class: identical text features, a scan of nothing (exit 0)
        pytest.param({"pool_type": "eos", "eos_id": 2}, "text_cfg.eos_id 2: pool_type 'eos' pools at that token", id="eos-pool-at-another-token"),
    ],
)
def test_text_tower_that_cannot_read_the_tokenizer_is_exit_2(tmp_path: Path, pool: Path, capsys, one_thread, text_cfg: dict, problem: str) -> None:
    path = _tiny_zeroshot(tmp_path / "m.safetensors", text_cfg)
    code, stdout, stderr = run_cli(["verify", str(path), "--pool", str(pool), "--out", str(tmp_path / "out"), "--quiet"], capsys)
    assert (code, stdout) == (2, ""), stderr
    assert len(stderr.splitlines()) == 1 and stderr.startswith(f"ci-gate: error: {path}: metadata.backbone.config: {problem}"), stderr


def test_a_context_too_short_for_the_zero_shot_prompts_is_exit_2(tmp_path: Path, one_thread) -> None:
    from ci_gate.errors import InputError
    from ci_gate.model.factory import load_classifier

    # 6 tokens: the tokenizer would cut every prompt to "a photo of a", one text feature for all
    # classes, a scan of nothing
    path = _tiny_zeroshot(tmp_path / "m.safetensors", {"context_length": 6})
    with pytest.raises(InputError, match=r"class_names\[0\] is too long for the text encoder's context of 6 tokens") as err:
        load_classifier(path)
    assert str(path) in str(err.value)


def test_text_tower_that_reads_the_tokenizer_loads(tmp_path: Path, one_thread) -> None:
    from ci_gate.model.factory import load_classifier

    # a larger table than the tokenizer needs, and EOS pooling at its end token, are fine
    path = _tiny_zeroshot(tmp_path / "m.safetensors", {"vocab_size": 49500, "pool_type": "eos", "eos_id": 49407})
    assert load_classifier(path).classifier.class_names == ["cat", "dog", "golden_retriever"]


@pytest.mark.parametrize("kind", KINDS)
def test_backbone_tensors_without_embedded_are_refused_for_every_kind(tmp_path: Path, kind: str) -> None:
    from checkpoint_edit import rewrite_metadata, tiny_checkpoint

    src = tiny_checkpoint(tmp_path / "embedded.safetensors", kind, ["cat", "dog"])
    # the same file with the backbone declared as published weights: its tensors would be ignored
    dst = rewrite_metadata(src, tmp_path / "stray.safetensors", lambda m: m["backbone"].update(embedded=False, pretrained="published.pt"))
    with pytest.raises(InputError, match="backbone tensors present but metadata says the backbone is not embedded") as err:
        load_checkpoint(dst)
    assert err.value.path == str(dst)
    assert load_checkpoint(src).backbone_tensors
