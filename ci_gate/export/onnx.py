"""``ci-gate export``: the verified checkpoint as an ONNX graph with its attestation in metadata_props.

The graph: input ``images``, float32 (N, 3, S, S), RGB in [0, 1], already resized (shorter side to
S, the backbone's interpolation) and centre-cropped to S x S as open_clip's preprocessing does;
the mean/std normalisation is inside the graph. Output ``logits``, float32 (N, C), over the
checkpoint's class names in their order (``ci_gate.class_names``). The batch axis is dynamic.
Resize and crop stay outside: ONNX's Resize does not reproduce PIL's antialiased bicubic, so a
graph that resized would not be the classifier that was scanned.

Traced with the TorchScript exporter (``dynamo=False``) at opset 17, the first with
LayerNormalization: the dynamo exporter needs onnxscript, and tracing records CoCoOp's
image-conditioned prompt path as plain ops.
"""

from __future__ import annotations

import contextlib
import io
import json
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ci_gate import __version__
from ci_gate.encoder_check import status_contradiction
from ci_gate.errors import GateFailure, InputError, InternalError
from ci_gate.io import atomic_write_bytes, sha256_bytes, sha256_file
from ci_gate.result import Result, load_result

OPSET = 17
INPUT = "images"
OUTPUT = "logits"
PREFIX = "ci_gate."
PARITY_ATOL = 1e-4  # fp32 logits, onnxruntime CPU against torch
N_PROBES = 4
INPUT_DESCRIPTION = (
    "float32 (N, 3, S, S) RGB in [0, 1]: the image resized so its shorter side is S ({interpolation}) and "
    "centre-cropped to S x S, S = {size}; mean/std normalisation is inside the graph"
)


def require_onnx(flag: str) -> Any:
    try:
        import onnx
    except ImportError:
        raise InputError(flag, "ONNX export and attestation need the 'onnx' package: pip install 'ci-gate[onnx]'") from None
    return onnx


def graph_digest(model) -> str:
    """SHA-256 of the graph (nodes, initializers, inputs, outputs); metadata_props lie outside it."""
    return sha256_bytes(model.graph.SerializeToString(deterministic=True))


# -- the verdict the export relies on ------------------------------------------------------------


@dataclass
class Verification:
    """What the export is based on. ``problems`` are the reasons it is not a clean verify of this
    checkpoint; an export goes ahead with problems only under --allow-unverified."""

    result: Result | None
    result_sha256: str | None
    problems: list[str] = field(default_factory=list)


def check_result(result_path: Path | None, checkpoint_sha256: str, backbone_sha256: str | None, allow_unverified: bool, embedded: bool = False) -> Verification:
    """Refuse (exit 2) a result of another checkpoint or backbone, (exit 1) one that is not clean,
    unless ``allow_unverified``; then every such reason is returned to be recorded."""
    if result_path is None:
        if not allow_unverified:
            raise InputError("--result", "required: the result.json of a clean `ci-gate verify` of this checkpoint (or --allow-unverified)")
        return Verification(None, None, ["no result.json given"])
    result = load_result(result_path)
    digest = sha256_file(result_path)
    problems: list[tuple[int, str]] = []
    if result.model.sha256 != checkpoint_sha256:
        problems.append((2, f"belongs to another checkpoint (SHA-256 {result.model.sha256[:12]}..., this one is {checkpoint_sha256[:12]}...)"))
    elif backbone_sha256 and result.model.backbone.sha256 and result.model.backbone.sha256 != backbone_sha256:
        problems.append((2, f"was scanned with another backbone (SHA-256 {result.model.backbone.sha256[:12]}..., this one is {backbone_sha256[:12]}...)"))
    contradiction = status_contradiction(result.encoder.status, embedded)
    if contradiction:
        problems.append((1, contradiction))
    failing = not_clean(result)
    if failing:
        problems.append((1, failing))
    if problems and not allow_unverified:
        code, reason = problems[0]
        if code == 2:
            raise InputError(result_path, reason)
        raise GateFailure(f"{result_path}: {reason}; ci-gate exports only a model that passed the gate (--allow-unverified to override, recorded in the file)")
    return Verification(result, digest, [f"result.json {reason}" for _, reason in problems])


def not_clean(result: Result) -> str | None:
    """Why a result does not let its model ship, or None: the verdict, a modified tower, and the
    gate the policy set."""
    if result.verdict != "clean":
        target = f" (target '{result.target_class}')" if result.target_class else ""
        return f"verdict is {result.verdict}{target}"
    if result.encoder.modified:
        # whatever report.fail_on says: 'never' only keeps verify's exit code at 0, and a tower
        # that is not the published one must not ship with an attestation that says verified
        return f"failed its gate: the delivered towers are modified (encoder.status modified: {result.encoder.changes_text})"
    if result.encoder.status == "unverified" and result.detection.unverified_towers != "warn":
        # a result from before schema 1.6 recorded no answer: what ships is decided as the default does
        older = "; a result from before schema 1.6, scan again" if result.detection.unverified_towers is None else ""
        return f"failed its gate: the delivered towers are unverified (encoder.status unverified: {result.encoder.unverified_reason}){older}"
    fail_on = str(result.policy.settings.get("report", {}).get("fail_on", "backdoor"))
    if result.gate_fails(fail_on):
        return "failed its gate (suspicious classes under report.fail_on=" + fail_on + ")"
    return None


# -- the export ------------------------------------------------------------------------------------


@dataclass
class ExportReport:
    path: Path
    sha256: str
    n_bytes: int
    export_s: float
    parity_max_abs: float | None  # None without onnxruntime
    metadata: dict[str, str]


def attestation(loaded, verification: Verification, graph_sha256: str, allow_unverified: bool) -> dict[str, str]:
    """The metadata_props entries (all strings)."""
    pre = loaded.backbone.preprocessing
    res = verification.result
    meta = {
        "version": __version__,
        "checkpoint_sha256": loaded.checkpoint.sha256,
        "backbone_sha256": loaded.backbone.sha256 or "",
        "verdict": res.verdict if res is not None else "none",
        "result_sha256": verification.result_sha256 or "",
        "policy_sha256": res.policy.sha256 if res is not None else "",
        "verified_with": res.tool.version if res is not None else "",
        # the flag as given, and whether the export needed it: attest accepts only verified == true
        "allow_unverified": "true" if allow_unverified else "false",
        "verified": "false" if verification.problems else "true",
        "unverified_reasons": "; ".join(verification.problems),
        "graph_sha256": graph_sha256,
        "learner": loaded.classifier.kind,
        "class_names": json.dumps(loaded.classifier.class_names, ensure_ascii=False),
        "opset": str(OPSET),
        # attest --checkpoint re-traces the graph; another torch may trace it differently
        "exporter": exporter(),
        "input": INPUT_DESCRIPTION.format(interpolation=pre.interpolation, size=pre.image_size),
        "image_size": str(pre.image_size),
        "mean": json.dumps(list(pre.mean)),
        "std": json.dumps(list(pre.std)),
        "interpolation": pre.interpolation,
    }
    return {PREFIX + k: v for k, v in meta.items()}


def exporter() -> str:
    import onnx
    import torch

    return f"torch {torch.__version__}, onnx {onnx.__version__}"


@contextlib.contextmanager
def _traceable_attention():
    """nn.MultiheadAttention's inference fast path (torch._native_multi_head_attention) has no
    ONNX symbolic; the plain path computes the same attention."""
    import torch

    before = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(before)


def trace_to_onnx(module, image_size: int) -> bytes:
    import torch

    dummy = torch.rand(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    buf = io.BytesIO()
    with _traceable_attention(), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracer notes are not the user's concern
        torch.onnx.export(
            module, (dummy,), buf, dynamo=False, opset_version=OPSET, input_names=[INPUT], output_names=[OUTPUT],
            dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}},
            # no folding: initializers keep their state-dict names, so attest can trace each one back
            do_constant_folding=False,
        )
    return buf.getvalue()


def probe_images(image_size: int, n: int = N_PROBES, seed: int = 0):
    import torch

    return torch.rand(n, 3, image_size, image_size, generator=torch.Generator().manual_seed(seed))


def onnx_logits(model_bytes: bytes, images) -> Any | None:
    """Logits from onnxruntime's CPU provider, or None when onnxruntime is not installed."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # a probe of a few images: threads only contend on a shared runner
    session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    return session.run([OUTPUT], {INPUT: images.numpy()})[0]


def max_logit_difference(model_bytes: bytes, classifier, images) -> float | None:
    import numpy as np
    import torch

    got = onnx_logits(model_bytes, images)
    if got is None:
        return None
    with torch.no_grad():
        want = classifier(images).float().numpy()
    return float(np.abs(got - want).max())


def build_graph(loaded) -> tuple[Any, bytes]:
    """(GraphClassifier, ONNX bytes without metadata)."""
    from ci_gate.export.graph import GraphClassifier

    module = GraphClassifier(loaded.classifier).eval()
    return module, trace_to_onnx(module, loaded.backbone.preprocessing.image_size)


def export_onnx(
    checkpoint: Path,
    out: Path,
    result: Path | None,
    allow_unverified: bool = False,
    backbone_weights: Path | None = None,
) -> ExportReport:
    onnx = require_onnx("--onnx")
    from ci_gate.model.factory import load_classifier

    loaded = load_classifier(checkpoint, weights=backbone_weights)
    if not loaded.classifier.learner.exportable:
        raise InputError(checkpoint, f"ONNX export does not support {loaded.classifier.learner.title} prompt learners yet")
    verification = check_result(result, loaded.checkpoint.sha256, loaded.backbone.sha256, allow_unverified, loaded.checkpoint.meta.backbone.embedded)
    clf = loaded.classifier.freeze()
    t0 = time.perf_counter()
    _, raw = build_graph(loaded)
    model = onnx.load_from_string(raw)
    export_s = time.perf_counter() - t0
    meta = attestation(loaded, verification, graph_digest(model), allow_unverified)
    onnx.helper.set_model_props(model, meta)
    data = model.SerializeToString()
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:  # the exporter produced an invalid graph: ci-gate's fault, not the input's
        raise InternalError(f"the exported ONNX graph fails onnx.checker: {str(exc).splitlines()[0][:200]}") from None
    # the graph must compute the classifier that was scanned (its fast path included)
    parity = max_logit_difference(data, clf, probe_images(loaded.backbone.preprocessing.image_size))
    if parity is not None and not parity <= PARITY_ATOL:
        raise InternalError(f"the exported graph's logits differ from the classifier's by {parity:.2e} (> {PARITY_ATOL:g})")
    atomic_write_bytes(out, data)
    return ExportReport(out, sha256_bytes(data), len(data), export_s, parity, meta)
