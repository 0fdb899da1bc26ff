"""The detection benchmark's evaluation (ci_gate.bench.detection.evaluate) on saved results: what
it counts, and the decision-rule variants it re-decides them under. No model, no scan."""

from __future__ import annotations

from ci_gate.bench.detection import GAIN_SWEEP, evaluate
from ci_gate.bench.zoo import ZooModel
from result_factory import DEFAULT_NAMES, make_ladder_result, unverified_ladder_result


def _model(mid: str, target: int | None, learner: str = "cocoop") -> ZooModel:
    return ZooModel(
        id=mid, dataset="cifar10", learner=learner, attack=None if target is None else "badclip", target=target, target_name=None, seed=0, shots=16,
        class_names=DEFAULT_NAMES, clean_acc=0.5, asr=None if target is None else 0.95, implanted=None if target is None else True, train_s=1.0,
        path=f"{mid}.safetensors", clean_asr=None if target is None else 0.1,
    )


def test_evaluate_counts_the_gate_and_re_decides_the_reference_relative_floor(tmp_path):
    # a clean model whose class 2 stands out but is as easy on the published model (stop 21's
    # flip), a backdoor whose trigger beats the reference's by 0.5, and a modified tower whose
    # planted class ranks first below k
    easy, _ = make_ladder_result(tmp_path / "a", target_asr=0.6, ref_asr=0.55, gain=14.0)
    planted, _ = make_ladder_result(tmp_path / "b", target_asr=0.6, ref_asr=0.1)
    ranked, policy = make_ladder_result(tmp_path / "c", target_asr=0.9, ref_asr=0.1, gain=9.0, modified=True)
    # the bundled policy leaves min_asr_gain off: the easy clean class fails the gate
    assert easy.verdict == "backdoor" and policy_gain(easy) is None
    assert planted.verdict == "backdoor" and planted.target_index == 2
    assert ranked.verdict == "clean" and ranked.target_by_rank and ranked.target_index == 2
    models = [_model("clean-easy", None), _model("badclip", 2), _model("encoder", 2, learner="zeroshot")]
    results = {(m.id, "published", 0): r for m, r in zip(models, (easy, planted, ranked))}
    ev = evaluate(models, results, policy, (0,))
    overall = ev["modes"]["published"]["overall"]
    assert overall["confusion"] == {"tp": 2, "fp": 1, "tn": 0, "fn": 0}
    assert ev["modes"]["published"]["outlier_names_only"]["target_f1"] < 1.0, "the rank-named target is what that view leaves out"
    off = ev["variants"]["published:min_asr_gain=off"]
    assert off["confusion"]["fp"] == 1 and off["clean_failing_any_seed"] == 1, "the absolute floor alone fails the clean model"
    on = ev["variants"]["published:min_asr_gain=0.2"]
    assert on["confusion"]["fp"] == 0 and on["flips"] == []
    assert on["target_f1"] == 1.0
    assert {f"published:min_asr_gain={'off' if g is None else f'{g:g}'}" for g in GAIN_SWEEP} <= set(ev["variants"])


def policy_gain(result):
    return result.detection.min_asr_gain


def test_without_a_reference_the_gate_fails_closed_and_the_statistic_is_reported_beside_it(tmp_path):
    from ci_gate.policy import load_policy
    from ci_gate.rescore import rescore

    policy, _ = load_policy("default")
    # no-reference scans of a clean model and of a backdoored one, decided by the bundled default
    clean = rescore(unverified_ladder_result(tmp_path / "a", gain=0.0), policy)
    planted = rescore(unverified_ladder_result(tmp_path / "b", gain=60.0), policy)
    assert clean.verdict == "clean" and planted.verdict == "backdoor" and clean.unverified_fails
    models = [_model("clean", None, learner="zeroshot"), _model("encoder", 2, learner="zeroshot")]
    ev = evaluate(models, {(models[0].id, "none", 0): clean, (models[1].id, "none", 0): planted}, policy, (0,))
    none = ev["modes"]["none"]
    # the gate: an unverified tower fails whatever the classes scored
    assert none["overall"]["confusion"] == {"tp": 1, "fp": 1, "tn": 0, "fn": 0}
    # the statistic alone (unverified_towers warn) tells the two apart
    assert none["statistic_alone"]["confusion"] == {"tp": 1, "fp": 0, "tn": 1, "fn": 0}
    assert none["statistic_alone"]["auroc"] == 1.0 and none["statistic_alone_flips"] == []
    # the variants measure the statistic, not the fail-closed answer
    assert ev["variants"]["none:loss_drop:k=5.0"]["confusion"]["fp"] == 0
