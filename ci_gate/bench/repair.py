"""``ci-gate bench repair``: does repair remove the attacker's REAL backdoor, and is it the trigger
that does it? (paper: ASR 84.4% -> 6.1%, clean accuracy 80.6% -> 80.8%; controls 64.6% clean-only,
52.7% random noise, 47.0% wrong class's trigger; our target: real-trigger ASR < 5% with clean
accuracy within 1 point).

Models come from the benchmark zoo (``ci_gate.bench.zoo``, shared with ``bench detection`` and
cached), or from ``--checkpoint`` with the attacker's trigger (``--trigger``: the trigger module's
state dict, as the zoo stores it). The labeled images of ``--task-data`` (default: CIFAR-10 test)
are split per class, seeded: ``--clean-per-class`` images play the user's small clean set, the
rest is the held-out evaluation set. Each model is measured with
:func:`ci_gate.repair.evaluate.evaluate_repair`.

Heavy imports stay inside the functions: ``ci-gate --help`` must not load torch.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from statistics import fmean

import typer

DATA_ROOT = Path(__file__).resolve().parents[2].parent / "shared" / "data"
DEFAULT_CACHE = Path.home() / ".cache" / "ci-gate-bench"


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _split(data, per_class: int, seed: int, source: Path):
    """(clean set, held-out): ``per_class`` seeded images of each class, and the rest."""
    from ci_gate.errors import InputError
    from ci_gate.splits import stratified_split

    def clean_part(c: int, n: int) -> int:
        if n <= per_class:
            raise InputError(source, f"class {data.class_names[c]!r} has {n} images; --clean-per-class {per_class} leaves none held out")
        return per_class

    return stratified_split(data, clean_part, seed)


def _load_trigger(path: Path, attack: str, size: int, seed: int):
    from safetensors.torch import load_file

    from ci_gate.attacks import attack_spec, build_trigger
    from ci_gate.errors import InputError

    if not path.is_file():
        raise InputError(path, "trigger file not found")
    trig = build_trigger(attack_spec(attack), size, seed=seed)
    try:
        trig.load_state_dict(load_file(str(path)))
    except Exception as exc:  # wrong attack for this file, or not a trigger file
        raise InputError(path, f"not a {attack} trigger state dict: {str(exc).splitlines()[0]}") from None
    return trig.eval()


def _models(args: dict) -> list[dict]:
    """[{id, checkpoint, trigger, target, attack}] from the zoo or from --checkpoint."""
    from ci_gate.checkpoint.format import load_checkpoint
    from ci_gate.errors import InputError

    if args["checkpoint"] is not None:
        ckpt = load_checkpoint(args["checkpoint"])
        names = list(ckpt.meta.learner.class_names)
        if args["target"] is None or args["target"] not in names:
            raise InputError("--target", f"give the backdoor's target class, one of {names}")
        trig = _load_trigger(args["trigger"], args["attack"], ckpt.meta.preprocessing.image_size, 0)
        return [{"id": args["checkpoint"].stem, "checkpoint": args["checkpoint"], "trigger": trig, "target": names.index(args["target"]),
                 "attack": args["attack"], "class_names": names, "clean_twin": args["clean_twin"], "reference_weights": args["reference_weights"]}]
    from ci_gate.bench.zoo import entry, get_zoo, zoo_dir

    entries = [entry("cifar10", "cocoop", a, s, eps255=args["eps255"]) for s in args["seeds"] for a in args["attacks"]]
    twins = {s: entry("cifar10", "cocoop", None, s) for s in args["seeds"]}
    backbone, models = get_zoo(entries + list(twins.values()), args["data"], args["cache"], log=_log)
    twin_paths = {e.seed: Path(m.path) for e, m in zip(entries + list(twins.values()), models) if e.attack is None}
    folder = zoo_dir(args["cache"], backbone)
    size = backbone.config["vision_cfg"]["image_size"]
    out = []
    for e, m in zip(entries, models):
        trig = _load_trigger(folder / f"{m.id}.trigger.safetensors", m.attack, size, e.seed + 1)
        out.append({"id": m.id, "checkpoint": Path(m.path), "trigger": trig, "target": m.target, "attack": m.attack, "class_names": m.class_names,
                    "clean_twin": twin_paths[e.seed], "zoo_record": {"clean_acc": m.clean_acc, "asr": m.asr, "implanted": m.implanted},
                    # the zoo's checkpoints embed the backbone: a user checks it against the published file
                    "reference_weights": backbone.path / "backbone.safetensors"})
    return out


def _twin(path: Path | None, trigger, target: int, test) -> dict | None:
    """The same trigger against a never-backdoored model tuned the same way: the level a repair
    can hope for. On small backbones a learned 4/255 trigger is partly a universal adversarial
    perturbation, so this is well above the no-trigger rate."""
    if path is None:
        return None
    from ci_gate.model import load_classifier
    from ci_gate.accuracy import clean_accuracy, trigger_asr

    clf = load_classifier(path).classifier
    clf.freeze()
    return {"path": str(path), "clean_accuracy": clean_accuracy(clf, test), "real_asr": trigger_asr(clf, test, trigger, target),
            "natural_rate": trigger_asr(clf, test, lambda x: x, target)}


TARGET_ASR = 0.05  # the target: real-trigger ASR under 5% ...
TARGET_ACC_DROP = 0.01  # ... with held-out clean accuracy within 1 point


def summarize(evaluations: list[dict]) -> dict:
    """Means over the detected models, per variant, and how many meet the target. Models the scan
    missed are counted apart: there is nothing to repair without a target."""
    detected = [ev for ev in evaluations if ev["detected"]]
    out: dict = {"models": len(evaluations), "detected": len(detected), "variants": {}}
    if not detected:
        return out
    out["before"] = {"real_asr": fmean([ev["before"]["real_asr"] for ev in detected]), "clean_accuracy": fmean([ev["before"]["clean_accuracy"] for ev in detected])}
    twins = [ev["clean_twin"]["real_asr"] for ev in detected if ev.get("clean_twin")]
    if twins:
        out["clean_twin_real_asr"] = fmean(twins)
    for name in [v["name"] for v in detected[0]["variants"]]:
        runs = [(ev["before"], v) for ev in detected for v in ev["variants"] if v["name"] == name]
        pairs = [(b, v["after"]) for b, v in runs]
        change = [a["clean_accuracy"] - b["clean_accuracy"] for b, a in pairs]
        checks = [v["reverify"]["gate_passes"] for _, v in runs if v.get("reverify")]
        out["variants"][name] = {
            "real_asr": fmean([a["real_asr"] for _, a in pairs]),
            "clean_accuracy_change": fmean(change),
            "under_target_asr": sum(a["real_asr"] < TARGET_ASR for _, a in pairs),
            "meets_target": sum(a["real_asr"] < TARGET_ASR and c >= -TARGET_ACC_DROP for (_, a), c in zip(pairs, change)),
            # the last re-scan after ci-gate repair's rounds (the other variants are not re-scanned)
            "reverified_clean": f"{sum(checks)}/{len(checks)}" if checks else None,
        }
    return out


def _pct(x) -> str:
    return "-" if x is None or x != x else f"{100 * x:.1f}"


def write_markdown(report: dict, path: Path) -> None:
    from ci_gate.io import atomic_write_text

    lines = [
        "# Repair benchmark",
        "",
        f"`{report['command']}`",
        "",
        "Held-out clean accuracy and the attacker's REAL trigger ASR (images of non-target classes), in %. "
        "`recon ASR`: the reconstructed trigger's ASR; `no-trigger`: the rate at which the same images are "
        "predicted as the target without any trigger (the floor an ASR is read against).",
        "",
        "| model | detected (target) | variant | clean acc | real ASR | recon ASR | no-trigger | re-verification |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for ev in report["evaluations"]:
        det = f"{'yes' if ev['detected'] else 'no'} ({ev['predicted_target']}; true {ev['true_target']})"
        b = ev["before"]
        lines.append(f"| {ev['id']} | {det} | before | {_pct(b['clean_accuracy'])} | {_pct(b['real_asr'])} | {_pct(b['reconstructed_asr'])} | {_pct(b['natural_rate'])} | {ev['scan']['verdict']} |")
        for v in ev["variants"]:
            a = v["after"]
            rv = "" if v["reverify"] is None else v["reverify"]["verdict"]
            lines.append(f"| | | {v['name']} | {_pct(a['clean_accuracy'])} | {_pct(a['real_asr'])} | {_pct(a['reconstructed_asr'])} | {_pct(a['natural_rate'])} | {rv} |")
        if ev.get("clean_twin"):
            t = ev["clean_twin"]
            lines.append(f"| | | clean twin (never backdoored) | {_pct(t['clean_accuracy'])} | {_pct(t['real_asr'])} | | {_pct(t['natural_rate'])} | |")
    sm = report["summary"]
    lines += ["", f"## Means over the {sm['detected']} detected of {sm['models']} models", ""]
    if "before" in sm:
        twin = f"; the same trigger on the clean twins {_pct(sm['clean_twin_real_asr'])}" if "clean_twin_real_asr" in sm else ""
        lines += [f"Before: real ASR {_pct(sm['before']['real_asr'])}, clean accuracy {_pct(sm['before']['clean_accuracy'])}{twin}.", "",
                  "| variant | real ASR | clean acc change (points) | real ASR < 5% | and within 1 point | re-verified clean |", "|---|---|---|---|---|---|"]
        for name, v in sm["variants"].items():
            lines.append(f"| {name} | {_pct(v['real_asr'])} | {100 * v['clean_accuracy_change']:+.1f} | {v['under_target_asr']} | {v['meets_target']} | {v['reverified_clean'] or ''} |")
    lines += ["", f"Settings: {json.dumps(report['repair_settings'])}; clean set {report['clean_per_class']} per class; {report['seconds']:.0f} s.", ""]
    atomic_write_text(path, "\n".join(lines))


def run(args: dict) -> dict:
    import torch

    from ci_gate.data import load_labeled_folder
    from ci_gate.io import atomic_write_text
    from ci_gate.policy import load_policy
    from ci_gate.repair.evaluate import evaluate_repair

    t0 = time.perf_counter()
    torch.set_num_threads(args["threads"])
    policy, _ = load_policy(args["policy"], args["overrides"])
    pool = args["pool"] or str(args["data"] / "ood" / "imagenet-1k")
    task_data = args["task_data"] or args["data"] / "cifar10" / "test"
    models = _models(args)
    evaluations = []
    for m in models:
        from ci_gate.checkpoint.format import load_checkpoint

        size = load_checkpoint(m["checkpoint"]).meta.preprocessing.image_size
        data = load_labeled_folder(task_data, size, class_names=m["class_names"])
        clean, test = _split(data, args["clean_per_class"], args["seed"] + 100, task_data)
        _log(f"{m['id']}: {len(clean)} clean images for repair, {len(test)} held out")
        ev = evaluate_repair(m["checkpoint"], m["trigger"], m["target"], clean, test, pool, policy, reference_weights=m["reference_weights"], log=lambda s, i=m["id"]: _log(f"{i}: {s}"))
        twin = _twin(m["clean_twin"], m["trigger"], m["target"], test)
        evaluations.append({"id": m["id"], "attack": m["attack"], **({"zoo_record": m["zoo_record"]} if "zoo_record" in m else {}), "clean_twin": twin, **ev.to_dict()})
    report = {
        "command": args["command"],
        "policy": policy.name,
        "repair_settings": policy.repair.model_dump(mode="json"),
        "clean_per_class": args["clean_per_class"],
        "evaluations": evaluations,
        "summary": summarize(evaluations),
        "seconds": time.perf_counter() - t0,
    }
    out = args["out"]
    atomic_write_text(out / "repair.json", json.dumps(report, indent=2) + "\n")
    write_markdown(report, out / "repair.md")
    return report


def register(bench_app) -> None:
    @bench_app.command("repair")
    def repair(
        attacks: str = typer.Option("badclip,badnets", "--attacks", help="Zoo attacks to repair (cifar10, CoCoOp), comma-separated."),
        checkpoint: Path = typer.Option(None, "--checkpoint", help="Evaluate this backdoored checkpoint instead of the zoo's."),
        trigger: Path = typer.Option(None, "--trigger", help="With --checkpoint: the attacker's trigger (trigger state dict, .safetensors)."),
        attack: str = typer.Option("badclip", "--attack", help="With --checkpoint: which attack the trigger file belongs to."),
        target: str = typer.Option(None, "--target", help="With --checkpoint: the backdoor's target class."),
        clean_twin: Path = typer.Option(None, "--clean-twin", help="With --checkpoint: the same model tuned without poison (reference for the real trigger's ASR)."),
        reference_weights: Path = typer.Option(None, "--reference-weights", help="With --checkpoint: the published backbone its embedded tower is checked against (as verify's)."),
        task_data: Path = typer.Option(None, "--task-data", help="Labeled images (folder per class) split into the clean set and the held-out set (default: <data>/cifar10/test)."),
        clean_per_class: int = typer.Option(30, "--clean-per-class", help="Images per class in the user's clean set; the rest is held out."),
        policy: str = typer.Option("default", "--policy", help="Policy for the scan and the repair settings."),
        overrides: list[str] = typer.Option([], "--set", help="Policy overrides, e.g. --set detection.statistic=neg_loss"),
        eps255: int = typer.Option(None, "--eps255", help="BadCLIP's trigger budget in 1/255 (default: the zoo's task recipe, 16 on CIFAR-10). The scan keeps the policy's ladder: it is not told the budget."),
        seeds: str = typer.Option("0", "--seeds", help="Zoo model seeds, comma-separated (e.g. 0,1,2)."),
        seed: int = typer.Option(0, "--seed", help="Seed of the clean-set draw."),
        cache: Path = typer.Option(DEFAULT_CACHE, "--cache", help="Benchmark cache (backbone, datasets, zoo), shared with bench detection."),
        data: Path = typer.Option(DATA_ROOT, "--data", help="The shared data folder (cifar10, tiny-imagenet, ood)."),
        pool: str = typer.Option(None, "--pool", help="OOD pool (default: <data>/ood/imagenet-1k)."),
        out: Path = typer.Option(Path("bench-repair"), "--out", help="Folder for repair.json and repair.md."),
        threads: int = typer.Option(1, "--threads", help="torch threads (leave cores to others on shared machines)."),
    ) -> None:
        """Repair backdoored models and measure the REAL trigger's ASR and clean accuracy, with the paper's controls."""
        import sys

        from ci_gate.errors import InputError

        if checkpoint is not None and trigger is None:
            raise InputError("--trigger", "--checkpoint needs the attacker's trigger file")
        args = dict(
            attacks=[a.strip() for a in attacks.split(",") if a.strip()], checkpoint=checkpoint, trigger=trigger, attack=attack, target=target, clean_twin=clean_twin,
            reference_weights=reference_weights, task_data=task_data, clean_per_class=clean_per_class, policy=policy, overrides=list(overrides), seeds=[int(x) for x in seeds.split(",") if x.strip()], eps255=eps255, seed=seed, cache=cache, data=data,
            pool=pool, out=out, threads=threads, command="ci-gate " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["bench"] else "ci-gate bench repair",
        )
        report = run(args)
        typer.echo((out / "repair.md").read_text())
        _log(f"done in {report['seconds']:.0f} s: {out / 'repair.json'}")
