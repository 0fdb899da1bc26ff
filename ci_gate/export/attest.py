"""``ci-gate attest``: is this ONNX file the model that was verified?

Checked from the file and result.json alone: the graph against its attested digest, result.json
against the digest the export recorded, and the result's checkpoint, backbone, policy, classes and
verdict against the metadata. Without the checkpoint nothing outside the file vouches for the
graph: its digest sits in the same metadata, so a rewritten graph with a recomputed digest passes
those checks (the command says so). With the checkpoint as well: the checkpoint's digest, every
initializer against the tensor the checkpoint's classifier holds under that name (bit for bit;
CoOp's folded text features within a tolerance), the graph's structure (nodes, inputs, outputs,
opsets, local functions) against a fresh trace of that classifier, and its logits against the
classifier on probe images (onnxruntime, when installed). Probe logits alone cannot vouch for the
nodes: an added branch that fires only on a trigger pattern leaves random probes untouched.

The attestation binds the ONNX file to result.json and the checkpoint; it is not a signature. The
result.json it is checked against must come from where the gate stored it (the CI artifact), not
from the party that ships the ONNX file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ci_gate.checkpoint.format import load_checkpoint
from ci_gate.encoder_check import status_contradiction
from ci_gate.errors import InputError
from ci_gate.export.onnx import PARITY_ATOL, PREFIX, graph_digest, max_logit_difference, not_clean, probe_images, require_onnx
from ci_gate.io import sha256_file
from ci_gate.result import Result, load_result


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class Attestation:
    checks: list[Check]

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]


def read_onnx(path: Path):
    """(ModelProto, metadata without the prefix); InputError for a file that is no attested export."""
    onnx = require_onnx(str(path))
    if not path.is_file():
        raise InputError(path, "ONNX file not found")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise InputError(path, f"not a readable ONNX model: {type(exc).__name__}") from None
    # ci-gate writes every weight into the file; external data would be weights the digest does not cover
    if any(init.data_location == onnx.TensorProto.EXTERNAL for init in model.graph.initializer):
        raise InputError(path, "initializers stored as external data; ci-gate exports (and attests) self-contained files only")
    meta = {p.key[len(PREFIX):]: p.value for p in model.metadata_props if p.key.startswith(PREFIX)}
    if "graph_sha256" not in meta:
        raise InputError(path, "no ci-gate attestation in metadata_props (not written by `ci-gate export`)")
    return model, meta


def _same(name: str, attested: str, actual: str | None) -> Check:
    ok = actual is not None and attested == actual
    return Check(name, ok, "matches" if ok else f"attested {_short(attested)}, found {_short(actual)}")


def _short(value: str | None) -> str:
    if not value:
        return "nothing"
    return value[:12] + "..." if len(value) == 64 else repr(value[:80])


def check_file(model, meta: dict[str, str]) -> list[Check]:
    digest = graph_digest(model)
    keys = [p.key for p in model.metadata_props if p.key.startswith(PREFIX)]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    # export writes each key once; with two, attest and a deployer's reader may each see another value
    checks = [Check("metadata", not twice, "one entry per key" if not twice else f"{len(twice)} keys appear more than once ({', '.join(twice[:3])})")]
    checks += [Check("graph", digest == meta["graph_sha256"],
                    "matches its attested digest" if digest == meta["graph_sha256"]
                    else f"changed after export (weights or nodes): SHA-256 {digest[:12]}..., attested {meta['graph_sha256'][:12]}...")]
    verified = meta.get("verified") == "true"
    checks.append(Check("verified export", verified, "exported after a clean verify" if verified
                        else f"exported with --allow-unverified ({meta.get('unverified_reasons') or 'no reason recorded'})"))
    return checks


def check_result(meta: dict[str, str], result: Result, result_sha256: str) -> list[Check]:
    failing = not_clean(result)
    return [
        _same("result.json", meta.get("result_sha256", ""), result_sha256),
        _same("checkpoint (result)", meta.get("checkpoint_sha256", ""), result.model.sha256),
        _same("backbone (result)", meta.get("backbone_sha256", ""), result.model.backbone.sha256 or ""),
        _same("policy (result)", meta.get("policy_sha256", ""), result.policy.sha256),
        _same("classes (result)", meta.get("class_names", ""), json.dumps(result.model.class_names, ensure_ascii=False)),
        _same("learner (result)", meta.get("learner", ""), result.model.learner),
        _same("verdict (result)", meta.get("verdict", ""), result.verdict),
        Check("gate (result)", failing is None, "the result passed its gate" if failing is None else f"the result {failing}"),
    ]


def check_checkpoint(model, meta: dict[str, str], checkpoint: Path, backbone_weights: Path | None) -> list[Check]:
    """The graph against the classifier the checkpoint builds (what verify scanned)."""
    import numpy as np
    from onnx import numpy_helper

    from ci_gate.export.graph import DERIVED, DERIVED_ATOL, GraphClassifier, expected_tensors
    from ci_gate.model.factory import load_classifier

    checks = [_same("checkpoint (file)", meta.get("checkpoint_sha256", ""), sha256_file(checkpoint))]
    loaded = load_classifier(checkpoint, weights=backbone_weights)
    pre = loaded.backbone.preprocessing
    checks.append(_same("backbone (checkpoint)", meta.get("backbone_sha256", ""), loaded.backbone.sha256 or ""))
    checks.append(_same("classes (checkpoint)", meta.get("class_names", ""), json.dumps(loaded.classifier.class_names, ensure_ascii=False)))
    checks.append(_same("preprocessing (backbone)", json.dumps([meta.get("image_size"), meta.get("mean"), meta.get("std")]),
                        json.dumps([str(pre.image_size), json.dumps(list(pre.mean)), json.dumps(list(pre.std))])))
    clf = loaded.classifier.freeze()
    expected = expected_tensors(GraphClassifier(clf).eval())
    bad: list[str] = []
    for init in model.graph.initializer:
        want = expected.get(init.name)
        if want is None:
            bad.append(f"initializer {init.name!r} has no counterpart in the checkpoint's classifier")
            continue
        got = numpy_helper.to_array(init)
        want_np = want.cpu().numpy()
        if got.shape != want_np.shape or got.dtype != want_np.dtype:
            bad.append(f"initializer {init.name!r} is {got.dtype}{list(got.shape)}, the checkpoint's {want_np.dtype}{list(want_np.shape)}")
        elif init.name in DERIVED:
            diff = float(np.abs(got - want_np).max())
            if not diff <= DERIVED_ATOL:
                bad.append(f"initializer {init.name!r} differs from the checkpoint's by {diff:.2e} (> {DERIVED_ATOL:g})")
        elif not np.array_equal(got, want_np):
            diff = float(np.abs(got.astype(np.float64) - want_np.astype(np.float64)).max())
            bad.append(f"initializer {init.name!r} differs from the checkpoint's (max abs {diff:.3g})")
    n = len(model.graph.initializer)
    checks.append(Check("initializers (checkpoint)", not bad, f"all {n} match" if not bad else bad[0] + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else "")))
    checks.append(check_structure(model, clf, pre.image_size, meta.get("exporter", "")))
    try:
        parity = max_logit_difference(model.SerializeToString(), clf, probe_images(pre.image_size, seed=1))
    except Exception as exc:  # onnxruntime refuses the graph: the file is not the export, not a ci-gate crash
        checks.append(Check("logits (checkpoint)", False, f"onnxruntime cannot run the graph: {' '.join(str(exc).split())[:160]}"))
        return checks
    if parity is None:
        checks.append(Check("logits (checkpoint)", True, "not compared: onnxruntime is not installed"))
    else:
        ok = parity <= PARITY_ATOL
        checks.append(Check("logits (checkpoint)", ok, f"max abs difference {parity:.1e} on probe images" + ("" if ok else f" (> {PARITY_ATOL:g})")))
    return checks


def structure(model) -> bytes:
    """What a graph computes, initializer values aside (those are compared one by one): nodes,
    inputs, outputs, value infos, initializer names, types and shapes, opsets, local functions and
    training info. Deterministic serialisation, so two traces of one module give the same bytes."""
    import onnx

    graph = onnx.GraphProto()
    graph.CopyFrom(model.graph)
    del graph.initializer[:]
    for init in model.graph.initializer:
        graph.initializer.append(onnx.TensorProto(name=init.name, data_type=init.data_type, dims=list(init.dims)))
    # sparse initializers stay whole: ci-gate never writes one, so any makes the structures differ
    shape = onnx.ModelProto()
    shape.graph.CopyFrom(graph)
    shape.opset_import.extend(model.opset_import)
    shape.functions.extend(model.functions)
    shape.training_info.extend(model.training_info)
    return shape.SerializeToString(deterministic=True)


def check_structure(model, clf, image_size: int, exported_with: str) -> Check:
    """The graph against a fresh trace of the checkpoint's classifier (the same exporter settings)."""
    import onnx

    from ci_gate.export.graph import GraphClassifier
    from ci_gate.export.onnx import exporter, trace_to_onnx

    fresh = onnx.load_from_string(trace_to_onnx(GraphClassifier(clf).eval(), image_size))
    if structure(fresh) == structure(model):
        return Check("graph (checkpoint)", True, f"nodes, inputs and outputs match a fresh export ({len(model.graph.node)} nodes)")
    n_file, n_fresh = len(model.graph.node), len(fresh.graph.node)
    # another torch version may trace differently: then re-export rather than trust the file
    return Check("graph (checkpoint)", False,
                 f"differs from a fresh export of the checkpoint ({n_file} nodes, a fresh export has {n_fresh}; "
                 f"inputs {[i.name for i in model.graph.input]}, outputs {[o.name for o in model.graph.output]}); "
                 f"added or changed nodes" + (f", or traced by another exporter (the file says {exported_with!r}, this is {exporter()!r})"
                                               if exported_with != exporter() else ""))


def attest(onnx_path: Path, result_path: Path, checkpoint: Path | None = None, backbone_weights: Path | None = None) -> Attestation:
    model, meta = read_onnx(onnx_path)
    result = load_result(result_path)
    checks = check_file(model, meta) + check_result(meta, result, sha256_file(result_path))
    if checkpoint is not None:
        checks += check_checkpoint(model, meta, checkpoint, backbone_weights)
        contradiction = status_contradiction(result.encoder.status, load_checkpoint(checkpoint).meta.backbone.embedded)
        checks.append(Check("tower status (checkpoint)", contradiction is None, contradiction or f"encoder.status {result.encoder.status} fits the checkpoint"))
    return Attestation(checks)
