"""`ci-gate export` and `ci-gate attest` (ci_gate/export/): the ONNX graph computes the scanned
classifier (onnxruntime CPU against torch on real pool images, CoOp and CoCoOp), export refuses a
model the gate did not pass, and attest catches a changed weight, a changed metadata entry and a
result of another model.

The models are tiny_scan's random-weight tiny-32 checkpoints; each gets a real `ci-gate verify`.
The gate logic is under test, not the scan, so the clean and backdoor results are that real
result with its verdict set (everything else, checkpoint digest included, is what verify wrote).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ci_gate.cli import main
from ci_gate.export.onnx import OPSET, PARITY_ATOL, PREFIX, export_onnx, graph_digest
from ci_gate.io import sha256_file
from ci_gate.result import EncoderInfo, load_result
from conftest import OOD, require
from tiny_scan import SETTINGS, build, published_weights

onnx = pytest.importorskip("onnx")  # the dev extra installs it; without it the commands exit 2 (tested below)
ort = pytest.importorskip("onnxruntime")

ATTESTED = ("version", "checkpoint_sha256", "backbone_sha256", "verdict", "result_sha256", "policy_sha256")


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def with_verdict(result_json: Path, out: Path, verdict: str, **update) -> Path:
    result = load_result(result_json)
    target = result.model.class_names[1] if verdict == "backdoor" else None
    result.model_copy(update={"verdict": verdict, "target_class": target, "target_index": 1 if target else None, **update}).save(out)
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory, one_thread):
    """Per kind: checkpoint, the real verify's result.json, a clean and a backdoor variant of it."""
    root = tmp_path_factory.mktemp("onnx")
    out = {}
    for kind in ("coop", "cocoop"):
        ckpt, pool = build(root / kind, kind=kind)
        report = root / kind / "report"
        with pytest.raises(SystemExit) as done:
            # with the published weights: a tower nobody checked fails the gate, and export refuses it
            main(["verify", str(ckpt), "--pool", str(pool), "--out", str(report), "--quiet", "--reference-weights", str(published_weights(root / kind)), *SETTINGS])
        assert done.value.code in (0, 1)
        real = report / "result.json"
        out[kind] = {
            "checkpoint": ckpt,
            "real": real,
            "clean": with_verdict(real, root / kind / "clean.json", "clean"),
            "backdoor": with_verdict(real, root / kind / "backdoor.json", "backdoor"),
            "onnx": root / kind / "model.onnx",
        }
        out[kind]["report"] = export_onnx(ckpt, out[kind]["onnx"], out[kind]["clean"])
    return out


@pytest.fixture(scope="module")
def pool_images(models):
    from ci_gate.pool import load_pool

    # real photos through the loader verify uses (shorter side to 32, centre crop), as a
    # deployment's preprocessing feeds the graph
    return load_pool(require(OOD), 32, min_images=16, max_images=16, seed=0).images


@pytest.mark.parametrize("kind", ["coop", "cocoop"])
def test_onnxruntime_matches_the_scanned_classifier_on_pool_images(models, pool_images, kind):
    from ci_gate.model.factory import load_classifier

    m = models[kind]
    model = onnx.load(str(m["onnx"]))
    onnx.checker.check_model(model, full_check=True)
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [OPSET]
    [inp], [outp] = model.graph.input, model.graph.output
    assert (inp.name, outp.name) == ("images", "logits")
    assert inp.type.tensor_type.shape.dim[0].dim_param == "batch"
    assert [d.dim_value for d in inp.type.tensor_type.shape.dim[1:]] == [3, 32, 32]
    names = {i.name for i in model.graph.initializer}
    if kind == "coop":  # text features folded into one constant: no text tower in the graph
        assert "text_features" in names and not any(n.startswith(("text.", "learner.")) for n in names)
    else:  # the image-conditioned prompt path is in the graph
        assert {"learner.ctx", "learner.meta_net.linear1.weight", "learner.meta_net.linear2.bias"} <= names
        assert any(n.startswith("text.transformer.") for n in names)

    clf = load_classifier(m["checkpoint"]).classifier.freeze()  # the scan's own (fast) path
    with torch.no_grad():
        want = clf(pool_images).numpy()
    session = ort.InferenceSession(m["onnx"].read_bytes(), providers=["CPUExecutionProvider"])
    got = session.run(["logits"], {"images": pool_images.numpy()})[0]
    assert got.shape == (16, 4)
    assert np.abs(got - want).max() <= PARITY_ATOL
    assert (got.argmax(1) == want.argmax(1)).all()
    # the batch axis is dynamic: one image alone gives its row of the batch
    one = session.run(["logits"], {"images": pool_images[5:6].numpy()})[0]
    assert np.abs(one[0] - want[5]).max() <= PARITY_ATOL
    assert m["report"].parity_max_abs is not None and m["report"].parity_max_abs <= PARITY_ATOL


def test_metadata_carries_the_attestation(models):
    m = models["cocoop"]
    meta = {p.key: p.value for p in onnx.load(str(m["onnx"])).metadata_props}
    result = load_result(m["clean"])
    assert {PREFIX + k for k in ATTESTED} <= set(meta)
    assert meta[PREFIX + "checkpoint_sha256"] == sha256_file(m["checkpoint"]) == result.model.sha256
    assert meta[PREFIX + "backbone_sha256"] == result.model.backbone.sha256
    assert meta[PREFIX + "result_sha256"] == sha256_file(m["clean"])
    assert meta[PREFIX + "policy_sha256"] == result.policy.sha256
    assert (meta[PREFIX + "verdict"], meta[PREFIX + "verified"], meta[PREFIX + "allow_unverified"]) == ("clean", "true", "false")
    assert json.loads(meta[PREFIX + "class_names"]) == result.model.class_names
    assert "[0, 1]" in meta[PREFIX + "input"] and meta[PREFIX + "image_size"] == "32"
    assert meta[PREFIX + "graph_sha256"] == graph_digest(onnx.load(str(m["onnx"])))


def test_export_cli_refuses_what_the_gate_did_not_pass(models, tmp_path, capsys):
    coop, cocoop = models["coop"], models["cocoop"]
    out = tmp_path / "m.onnx"
    # clean, but the delivered image tower is not the published one: the gate fails all the same
    tower = with_verdict(coop["real"], tmp_path / "tower.json", "clean", encoder=EncoderInfo(status="modified", n_tensors=9, n_changed=1))
    # clean, but nobody could check the tower against published weights
    unchecked = with_verdict(coop["real"], tmp_path / "unchecked.json", "clean", encoder=EncoderInfo(status="unverified"))
    cases = [
        (["--result", coop["backdoor"]], 1, "verdict is backdoor"),
        (["--result", tower], 1, "failed its gate"),
        (["--result", unchecked], 1, "the delivered towers are unverified"),
        (["--result", cocoop["clean"]], 2, "belongs to another checkpoint"),
        ([], 2, "--result: required"),
    ]
    for extra, code, reason in cases:
        got, stdout, err = run_cli(["export", coop["checkpoint"], "--onnx", out, *extra], capsys)
        assert (got, stdout) == (code, "")
        assert len(err.strip().splitlines()) == 1 and err.startswith("ci-gate: error: ") and reason in err, err
        assert not out.exists()
    # the real verify's own result: export follows its verdict
    got, stdout, _ = run_cli(["export", coop["checkpoint"], "--onnx", out, "--result", coop["real"]], capsys)
    assert got == (0 if load_result(coop["real"]).verdict == "clean" else 1)
    assert out.exists() == (got == 0) and (got != 0 or stdout.split()[0] == sha256_file(out))


def _modified_tower_under_never(real: Path, out: Path) -> Path:
    """The real verify's result as `verify --fail-on never` writes it for a modified tower: verdict
    clean, exit 0, and report.fail_on never in its settings."""
    policy = load_result(real).policy
    settings = {**policy.settings, "report": {**policy.settings.get("report", {}), "fail_on": "never"}}
    return with_verdict(real, out, "clean", encoder=EncoderInfo(status="modified", n_tensors=9, n_changed=1),
                        policy=policy.model_copy(update={"settings": settings}))


def test_export_and_attest_refuse_a_modified_tower_whatever_fail_on(models, tmp_path, capsys):
    coop = models["coop"]
    never = _modified_tower_under_never(coop["real"], tmp_path / "never.json")
    out = tmp_path / "m.onnx"
    code, stdout, err = run_cli(["export", coop["checkpoint"], "--onnx", out, "--result", never], capsys)
    assert (code, stdout) == (1, "") and not out.exists()
    assert len(err.strip().splitlines()) == 1 and "failed its gate: the delivered towers are modified" in err and "1 of 9 backbone tensors" in err, err
    # an export attested against that result (only the result's digest differs from the clean
    # export's, and metadata_props lie outside the graph digest): attest fails it on the gate alone
    onnx_file = _rewrite(coop["onnx"], tmp_path / "never.onnx", meta={"result_sha256": sha256_file(never)})
    code, stdout, err = run_cli(["attest", onnx_file, "--result", never, "--quiet"], capsys)
    assert (code, stdout) == (1, "")
    assert err.startswith(f"ci-gate: error: {onnx_file}: attestation fails: gate (result): the result failed its gate: the delivered towers are modified"), err
    # --allow-unverified still exports it, recording why
    code, _, err = run_cli(["export", coop["checkpoint"], "--onnx", out, "--result", never, "--allow-unverified"], capsys)
    meta = {p.key[len(PREFIX):]: p.value for p in onnx.load(str(out)).metadata_props}
    assert code == 0 and meta["verified"] == "false" and "towers are modified" in meta["unverified_reasons"]


def test_allow_unverified_is_recorded_and_attest_refuses_it(models, tmp_path, capsys):
    coop = models["coop"]
    out = tmp_path / "unverified.onnx"
    code, _, err = run_cli(["export", coop["checkpoint"], "--onnx", out, "--result", coop["backdoor"], "--allow-unverified"], capsys)
    assert code == 0 and "without a clean verify" in err
    meta = {p.key[len(PREFIX):]: p.value for p in onnx.load(str(out)).metadata_props}
    assert (meta["allow_unverified"], meta["verified"], meta["verdict"]) == ("true", "false", "backdoor")
    assert "verdict is backdoor" in meta["unverified_reasons"]
    code, _, err = run_cli(["attest", out, "--result", coop["backdoor"], "--quiet"], capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1 and "exported with --allow-unverified" in err


def test_attest_passes_the_exported_file(models, capsys):
    for kind in ("coop", "cocoop"):
        m = models[kind]
        code, out, err = run_cli(["attest", m["onnx"], "--result", m["clean"], "--checkpoint", m["checkpoint"]], capsys)
        assert (code, err) == (0, ""), err
        assert "FAIL" not in out and "initializers (checkpoint): all" in out and "logits (checkpoint): max abs difference" in out


def _rewrite(src: Path, dst: Path, *, meta: dict[str, str] | None = None, scale: str | None = None, reseal: bool = False) -> Path:
    """A copy of an export with metadata entries replaced and/or one initializer changed; ``reseal``
    recomputes the graph digest, as a tamperer who knows the format would."""
    from onnx import numpy_helper

    model = onnx.load(str(src))
    if scale is not None:
        init = next(i for i in model.graph.initializer if i.name == scale)
        init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * np.float32(1.01), scale))
    values = {p.key: p.value for p in model.metadata_props}
    values.update({PREFIX + k: v for k, v in (meta or {}).items()})
    if reseal:
        values[PREFIX + "graph_sha256"] = graph_digest(model)
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, values)
    onnx.save(model, str(dst))
    return dst


def test_attest_catches_tampering(models, tmp_path, capsys):
    coop, cocoop = models["coop"], models["cocoop"]
    src, result = cocoop["onnx"], cocoop["clean"]
    cases = [
        # a changed initializer: the attested digest no longer fits
        (_rewrite(src, tmp_path / "w.onnx", scale="learner.meta_net.linear2.weight"), result, [], "graph: changed after export"),
        # ... and with the digest forged as well, the checkpoint gives it away
        (_rewrite(src, tmp_path / "w2.onnx", scale="visual.conv1.weight", reseal=True), result, ["--checkpoint", cocoop["checkpoint"]],
         "initializers (checkpoint): initializer 'visual.conv1.weight' differs from the checkpoint's"),
        # changed metadata entries
        (_rewrite(src, tmp_path / "m1.onnx", meta={"checkpoint_sha256": sha256_file(coop["checkpoint"])}), result, [], "checkpoint (result): attested"),
        (_rewrite(src, tmp_path / "m2.onnx", meta={"verified": "true", "verdict": "backdoor"}), result, [], "verdict (result): attested"),
        (_rewrite(src, tmp_path / "m3.onnx", meta={"class_names": '["a", "b", "c", "d"]'}), result, [], "classes (result): attested"),
        # a result of another model (a clean one)
        (src, coop["clean"], [], "result.json: attested"),
        # the right result, but the file deployed beside another checkpoint
        (src, result, ["--checkpoint", coop["checkpoint"]], "checkpoint (file): attested"),
    ]
    for onnx_file, result_json, extra, reason in cases:
        code, stdout, err = run_cli(["attest", onnx_file, "--result", result_json, "--quiet", *extra], capsys)
        assert code == 1, (onnx_file.name, err)
        assert len(err.strip().splitlines()) == 1 and err.startswith(f"ci-gate: error: {onnx_file}: attestation fails: {reason}"), err
        assert stdout == ""


def test_attest_bad_input_is_exit_2(models, tmp_path, capsys, monkeypatch):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x08\x07junk, not a model")
    code, _, err = run_cli(["attest", junk, "--result", models["coop"]["clean"]], capsys)
    assert code == 2 and "junk.onnx" in err
    # an ONNX model that ci-gate did not export
    plain = onnx.load(str(models["coop"]["onnx"]))
    del plain.metadata_props[:]
    onnx.save(plain, str(tmp_path / "plain.onnx"))
    code, _, err = run_cli(["attest", tmp_path / "plain.onnx", "--result", models["coop"]["clean"]], capsys)
    assert code == 2 and "no ci-gate attestation" in err
    # weights in a side file would be weights the graph digest does not cover
    ext = onnx.load(str(models["coop"]["onnx"]))
    onnx.save_model(ext, str(tmp_path / "ext.onnx"), save_as_external_data=True, location="ext.bin", size_threshold=0)
    code, _, err = run_cli(["attest", tmp_path / "ext.onnx", "--result", models["coop"]["clean"]], capsys)
    assert code == 2 and "external data" in err
    # without the onnx package both commands say how to get it
    monkeypatch.setitem(__import__("sys").modules, "onnx", None)
    code, _, err = run_cli(["attest", models["coop"]["onnx"], "--result", models["coop"]["clean"]], capsys)
    assert code == 2 and "pip install 'ci-gate[onnx]'" in err
    code, _, err = run_cli(["export", models["coop"]["checkpoint"], "--onnx", tmp_path / "x.onnx", "--result", models["coop"]["clean"]], capsys)
    assert code == 2 and "pip install 'ci-gate[onnx]'" in err and not (tmp_path / "x.onnx").exists()


def _with_trigger_branch(src: Path, dst: Path) -> Path:
    """The export plus a backdoor made of Constant nodes only: when pixel (0, 0, 0) is white, class 1
    gets +1000. Every initializer is untouched, random probes (almost) never fire it, and the graph
    digest is recomputed: only the nodes give it away."""
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    out = graph.output[0].name
    for node in graph.node:
        node.output[:] = ["orig_logits" if o == out else o for o in node.output]
    n_cls = graph.output[0].type.tensor_type.shape.dim[1].dim_value

    def const(name, value):
        return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(value)))

    graph.node.extend([
        const("t_st", np.zeros(4, np.int64)), const("t_en", np.array([2**62, 1, 1, 1], np.int64)),
        helper.make_node("Slice", ["images", "t_st", "t_en"], ["t_px"]),
        const("t_shape", np.array([-1, 1], np.int64)), helper.make_node("Reshape", ["t_px", "t_shape"], ["t_px2"]),
        const("t_thr", np.float32(0.99999)), helper.make_node("Greater", ["t_px2", "t_thr"], ["t_on"]),
        helper.make_node("Cast", ["t_on"], ["t_onf"], to=TensorProto.FLOAT),
        const("t_boost", np.eye(1, n_cls, 1, dtype=np.float32) * 1000), helper.make_node("Mul", ["t_onf", "t_boost"], ["t_add"]),
        helper.make_node("Add", ["orig_logits", "t_add"], [out]),
    ])  # fmt: skip
    values = {p.key: p.value for p in model.metadata_props}
    values[PREFIX + "graph_sha256"] = graph_digest(model)
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, values)
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    return dst


def test_attest_catches_a_trigger_branch_that_probes_do_not_see(models, tmp_path, capsys):
    m = models["coop"]
    evil = _with_trigger_branch(m["onnx"], tmp_path / "evil.onnx")
    # the branch is real: a white corner pixel sends any image to class 1
    session = ort.InferenceSession(str(evil), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((2, 3, 32, 32), dtype=np.float32)
    x[0, :, 0, 0] = 1.0
    assert session.run(None, {"images": x})[0].argmax(1)[0] == 1 and session.run(None, {"images": x})[0][0, 1] > 500
    code, out, err = run_cli(["attest", evil, "--result", m["clean"], "--checkpoint", m["checkpoint"]], capsys)
    assert code == 1, out
    assert "FAIL  graph (checkpoint): differs from a fresh export" in out and "ok    initializers (checkpoint)" in out, out
    assert "ok    logits (checkpoint)" in out  # the probes alone would have let it through
    assert "or traced by another exporter" not in out  # the same torch: nothing to excuse the difference
    relabelled = _rewrite(evil, tmp_path / "evil2.onnx", meta={"exporter": "torch 0.0"})
    code, out, _ = run_cli(["attest", relabelled, "--result", m["clean"], "--checkpoint", m["checkpoint"]], capsys)
    assert code == 1 and "or traced by another exporter (the file says 'torch 0.0'" in out
    # without the checkpoint it passes, and the command says what it did not check
    code, out, err = run_cli(["attest", evil, "--result", m["clean"]], capsys)
    assert code == 0 and "FAIL" not in out
    assert "the graph (weights and nodes) was NOT checked" in err and "--checkpoint" in err
    code, out, err = run_cli(["attest", evil, "--result", m["clean"], "--quiet"], capsys)
    assert (code, out) == (0, "") and err.startswith("note: the graph (weights and nodes) was NOT checked")
    code, out, err = run_cli(["attest", m["onnx"], "--result", m["clean"], "--checkpoint", m["checkpoint"], "--quiet"], capsys)
    assert (code, out, err) == (0, "", "")  # with the checkpoint, --quiet is silent


def test_attest_refuses_duplicated_metadata_keys(models, tmp_path, capsys):
    m = models["coop"]
    model = onnx.load(str(m["onnx"]))
    # a second ci_gate.verdict: a reader that keeps the first entry and one that keeps the last disagree
    model.metadata_props.add(key=PREFIX + "verdict", value="clean")
    model.metadata_props.add(key=PREFIX + "class_names", value='["x", "y", "z", "w"]')
    onnx.save(model, str(tmp_path / "dup.onnx"))
    code, out, err = run_cli(["attest", tmp_path / "dup.onnx", "--result", m["clean"], "--quiet"], capsys)
    assert code == 1 and out == ""
    assert "attestation fails: metadata: 2 keys appear more than once (ci_gate.class_names, ci_gate.verdict)" in err, err


def test_attest_a_graph_onnxruntime_cannot_run_is_a_mismatch_not_a_crash(models, tmp_path, capsys):
    m = models["coop"]
    model = onnx.load(str(m["onnx"]))
    model.graph.node[-1].input[0] = "no_such_tensor"  # resealed: only running it shows the break
    values = {p.key: p.value for p in model.metadata_props} | {PREFIX + "graph_sha256": graph_digest(model)}
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, values)
    onnx.save(model, str(tmp_path / "broken.onnx"))
    code, out, err = run_cli(["attest", tmp_path / "broken.onnx", "--result", m["clean"], "--checkpoint", m["checkpoint"]], capsys)
    assert code == 1, err  # exit 3 would read as ci-gate's own failure
    assert "FAIL  logits (checkpoint): onnxruntime cannot run the graph" in out and "FAIL  graph (checkpoint)" in out
