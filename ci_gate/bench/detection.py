"""``ci-gate bench detection``: is the blind gate right? (issues 4 and 13)

Builds or reuses the zoo (ci_gate.bench.zoo) and scans every model with

- CLIP-Inspector exactly as ``ci-gate verify`` runs it: ``scan`` with the bundled default
  policy, unchanged (no per-task, per-attack or per-budget setting: the defender knows none of
  them), in two reference modes: ``published`` (``--reference-weights`` with the published
  backbone, as a user who downloaded it would) and ``none`` (no published weights: embedded towers
  are unverified, which fails the default gate on its own, and are scored reference-free; the
  tables report that statistic's verdict alone beside the gate's), and with several scan seeds to
  count verdict flips;
- ``today``: the policy before the blind ladder (one 4/255 rung, whole-pool evaluation), on the
  first ``--cost-sample`` models, side by side, for the cost ratio and as the old baseline;
- Neural Cleanse and Pixel Backdoor (ci_gate.baselines) on the same classifier, pool and classes.

Every CI scan is a saved ``result.json`` (``--out/scans/<model>/<mode>-s<seed>/``), reused by a
rerun; statistic and threshold variants are re-decided from those files (ci_gate.rescore), not
scanned again. Writes ``detection.json``, ``detection.md`` and ``roc.png`` to ``--out``.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import asdict
from pathlib import Path

import torch

from ci_gate.baselines import BaselineSettings, neural_cleanse, pixel_backdoor
from ci_gate.bench import metrics
from ci_gate.bench.zoo import ASR_IMPLANTED, CLEAN_TRANSFER_MAX, ZooModel, get_zoo, profile_entries, with_clean_transfer, zoo_dir
from ci_gate.errors import InputError
from ci_gate.io import atomic_write_text
from ci_gate.model import load_classifier
from ci_gate.policy import Policy, load_policy
from ci_gate.pool import load_pool
from ci_gate.rescore import rescore
from ci_gate.result import RESULT_SCHEMA_VERSION, Result, load_result
from ci_gate.scoring import STATISTICS

DEFAULT_CACHE = Path.home() / ".cache" / "ci-gate-bench"
DATA_ROOT = Path(__file__).resolve().parents[2].parent / "shared" / "data"
MODES = ("published", "none")
TODAY = ["inversion.epsilon=4/255", "inversion.eval_images=null"]  # the default policy before the ladder
K_SWEEP = (2.0, 2.35, 2.75, 3.0, 4.0, 5.0)  # around the bundled k (2.35)
GAIN_SWEEP = (None, 0.1, 0.2, 0.3)  # detection.min_asr_gain; None: the absolute ASR floor alone (the default)
PROFILES = {
    # baselines: epochs over the pool and pool size (the paper: 5 epochs over the full pool)
    "quick": {"baseline_epochs": 2, "baseline_pool": 256, "seeds": (0,)},
    # the paper's 5 epochs, on the first 128 pool images (5 x 1000 would take ~10x CI's time on CPU)
    "full": {"baseline_epochs": 5, "baseline_pool": 128, "seeds": (0, 1, 2)},
}


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def budget255(model: ZooModel) -> int | None:
    m = re.search(r"-eps(\d+)-", model.id)
    return int(m.group(1)) if m else None


def scan_key(policy: Policy) -> dict:
    """What a scan's raw per-class inputs depend on: everything but the detection and report
    settings, which are applied afterwards (ci_gate.rescore)."""
    return policy.model_dump(mode="json", exclude={"detection", "report", "name"})


def _same_scan(old: Result) -> bool:
    # 1.5 records each delivered trigger's loss on the reference (ref_specificity): older scans lack an input of the default statistic
    return old.schema_version == RESULT_SCHEMA_VERSION


def ci_scan(model: ZooModel, policy: Policy, pool: str, out: Path, mode: str, seed: int, published: Path, cached_only: bool = False) -> Result | None:
    """One CI scan through ``ci_gate.scan.scan``, its folder (result.json, triggers) saved under
    ``out``. A saved result.json whose scan settings and pool match is re-decided under
    ``policy`` (always: the decision rule may be newer than the scan) instead of scanned again;
    ``cached_only``: None instead of a scan."""
    from ci_gate.report.folder import write_scan_files
    from ci_gate.scan import scan
    from ci_gate.scan_inputs import ScanInputs

    pol = policy.model_copy(update={"seed": seed})
    dst = out / "scans" / model.id / f"{mode}-s{seed}"
    saved = dst / "result.json"
    if saved.is_file():
        try:
            old = load_result(saved)
            old_policy = Policy.model_validate(old.policy.settings)
            if _same_scan(old) and scan_key(old_policy) == scan_key(pol) and old.pool.source == pool:
                return rescore(old, pol)
        except (InputError, ValueError):
            pass
    if cached_only:
        return None
    ref = published if mode in ("published", "today") else None
    found = scan(ScanInputs(checkpoint=Path(model.path), policy=pol, pool=pool, reference_weights=ref))
    assert found is not None  # single-process scan
    write_scan_files(found, dst)
    return found.result


def baselines(model: ZooModel, images: torch.Tensor, profile: dict, out: Path) -> dict:
    record = out / "models" / f"{model.id}.json"
    key = {"baseline_epochs": profile["baseline_epochs"], "baseline_pool": profile["baseline_pool"]}
    if record.is_file():
        saved = json.loads(record.read_text())
        if saved.get("key") == key:
            return saved["baselines"]
    settings = BaselineSettings(epochs=profile["baseline_epochs"])
    part = images[: profile["baseline_pool"]]
    res = {"nc": _baseline(neural_cleanse, model, part, settings), "pixel": _baseline(pixel_backdoor, model, part, settings)}
    atomic_write_text(record, json.dumps({"key": key, "baselines": res}, indent=1))
    return res


def _baseline(fn, model: ZooModel, images: torch.Tensor, settings: BaselineSettings) -> dict:
    clf = load_classifier(model.path).classifier
    res = fn(clf, images, settings)
    return {"verdict": "backdoor" if res.flagged else "clean", "target": res.target, "score": res.score, "seconds": res.seconds}


def gate_row(model: ZooModel, result: Result) -> dict:
    """What the gate said: it fails on a backdoor verdict, a modified encoder, or (under the
    policy's detection.unverified_towers) towers nobody could check."""
    finite = [c.anomaly for c in result.classes if math.isfinite(c.anomaly)]
    score = math.inf if result.encoder.modified or result.unverified_fails else (max(finite) if finite else math.nan)
    return _row(model, result.gate_fails("backdoor"), result.target_index, score) | {"encoder": result.encoder.status, "verdict": result.verdict}


def _row(model: ZooModel, flagged: bool, target: int | None, score: float) -> dict:
    return {
        "model": model.id, "attack": model.attack or "clean", "budget": budget255(model), "dataset": model.dataset, "learner": model.learner,
        "positive": model.backdoored, "flagged": flagged, "target_pred": target, "target_true": model.target, "score": score,
    }


def summary(rows: list[dict]) -> dict:
    """rows: {positive, flagged, target_pred, target_true, score}. Pure."""
    if not rows:
        return {"n": 0}
    pos = [r["positive"] for r in rows]
    return {
        "n": len(rows),
        "n_backdoored": sum(pos),
        "accuracy": metrics.detection_accuracy([r["flagged"] for r in rows], pos),
        "auroc": metrics.auroc([r["score"] for r in rows], pos) if 0 < sum(pos) < len(pos) else math.nan,
        "target_f1": metrics.target_f1([r["target_pred"] if r["flagged"] else None for r in rows], [r["target_true"] for r in rows]),
        "confusion": metrics.confusion([r["flagged"] for r in rows], pos),
    }


def breakdown(rows: list[dict], key: str) -> dict:
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(str(r[key]), []).append(r)
    return {
        name: {
            "n": len(g),
            "correct": sum(1 for r in g if r["flagged"] == r["positive"]),
            "target_right": sum(1 for r in g if r["positive"] and r["flagged"] and r["target_pred"] == r["target_true"]),
            "max_clean_score": max((r["score"] for r in g if not r["positive"]), default=None),
        }
        for name, g in sorted(groups.items())
    }


def flips(verdicts: dict[str, dict[int, bool]]) -> list[str]:
    """Models whose gate outcome differs between scan seeds. Pure."""
    return sorted(m for m, by_seed in verdicts.items() if len(set(by_seed.values())) > 1)


K_CALIBRATION = (2.0, 2.35, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0, 6.0)  # the bundled k (2.35) and absolute_k (5.0) among them


def clean_max_scores(models: list[ZooModel], results: dict[tuple[str, str, int], Result], mode: str, seeds: tuple[int, ...]) -> list[float]:
    """Per clean model: its largest class score over every scan seed (each class score is
    already the two-rung score over the ladder)."""
    out = []
    for m in models:
        if m.backdoored:
            continue
        scores = [c.anomaly for s in seeds if (m.id, mode, s) in results for c in results[(m.id, mode, s)].classes]
        if scores:
            out.append(max(scores))
    return out


def statistic_alone(result: Result) -> Result:
    """The result as the permissive answer to unverified towers reads it (detection.unverified_towers
    warn): the reference-free statistic decides alone. What the no-reference tables measure beside
    the gate, which fails every unverified tower whatever the statistic says."""
    return result.model_copy(update={"detection": result.detection.model_copy(update={"unverified_towers": "warn"})})


def evaluate(models: list[ZooModel], results: dict[tuple[str, str, int], Result], policy: Policy, seeds: tuple[int, ...]) -> dict:
    """Metrics per reference mode over the clean models and the backdoored ones that implanted;
    variants re-decided from the same saved results."""
    counted = [m for m in models if not m.backdoored or m.implanted]
    # the ASR bar alone (stop 20's count): universal adversarial triggers included
    by_asr = [m for m in models if not m.backdoored or (m.asr is not None and m.asr >= ASR_IMPLANTED)]
    out: dict = {"modes": {}, "variants": {}, "models": [m.id for m in counted]}
    for mode in (*MODES, "today"):
        have = [m for m in counted if (m.id, mode, seeds[0]) in results]
        if not have:
            continue
        rows = [gate_row(m, results[(m.id, mode, seeds[0])]) for m in have]
        # the same verdicts, a target named only when a class is flagged (no name by rank on a modified tower)
        outlier_names = [r | {"target_pred": None} if results[(r["model"], mode, seeds[0])].target_by_rank else r for r in rows]
        universal = [gate_row(m, results[(m.id, mode, seeds[0])]) | {"asr": m.asr, "clean_asr": m.clean_asr} for m in models if m.universal and (m.id, mode, seeds[0]) in results]
        by_seed = {m.id: {s: results[(m.id, mode, s)].gate_fails("backdoor") for s in seeds if (m.id, mode, s) in results} for m in have}
        unverified = any(results[(m.id, mode, seeds[0])].encoder.status == "unverified" for m in have)
        alone = [gate_row(m, statistic_alone(results[(m.id, mode, seeds[0])])) for m in have] if unverified else []
        out["modes"][mode] = {
            "overall": summary(rows),
            "prompt_level": summary([r for r in rows if r["learner"] != "zeroshot"]),
            "outlier_names_only": summary(outlier_names),
            "asr_bar_only": summary([gate_row(m, results[(m.id, mode, seeds[0])]) for m in by_asr if (m.id, mode, seeds[0]) in results]),
            "statistic_alone": summary(alone) if alone else {},
            "statistic_alone_roc": metrics.roc_curve([r["score"] for r in alone], [r["positive"] for r in alone]) if alone else None,
            "statistic_alone_flips": flips({m.id: {s: statistic_alone(results[(m.id, mode, s)]).gate_fails("backdoor") for s in seeds if (m.id, mode, s) in results} for m in have}),
            "universal": universal,
            "per_attack": breakdown(rows, "attack"),
            "per_budget": breakdown([r for r in rows if r["budget"] is not None], "budget"),
            "per_dataset": breakdown(rows, "dataset"),
            "per_learner": breakdown(rows, "learner"),
            "flips": flips(by_seed),
            "seeds": {m: sorted(v) for m, v in by_seed.items()},
            "roc": metrics.roc_curve([r["score"] for r in rows], [r["positive"] for r in rows]),
            "rows": rows,
            "mean_seconds": sum(results[(m.id, mode, seeds[0])].timings.total_s for m in have) / len(have),
            "calibration": metrics.k_calibration(clean_max_scores(have, results, mode, seeds), K_CALIBRATION),
        }
    # statistic and threshold variants, re-decided from the saved seed-0 results
    for mode in MODES:
        have = [m for m in counted if (m.id, mode, seeds[0]) in results]
        for stat in STATISTICS:
            if mode == "none" and STATISTICS[stat].needs_reference:
                continue
            for k in K_SWEEP:
                # unverified towers warn: the variants measure the statistic, which the gate's
                # fail-closed answer would otherwise hide on every no-reference scan; and without a
                # reference absolute_k decides, so it is the k swept there
                update = {"statistic": stat, "absolute_statistic": stat if not STATISTICS[stat].needs_reference else policy.detection.absolute_statistic, "k": k, "unverified_towers": "warn"}
                det = policy.detection.model_copy(update=update | ({"absolute_k": k} if mode == "none" else {}))
                variant = policy.model_copy(update={"detection": det})
                rows = [gate_row(m, rescore(results[(m.id, mode, seeds[0])], variant)) for m in have]
                out["variants"][f"{mode}:{stat}:k={k}"] = summary(rows)
    # the reference-relative ASR floor, over every seed (flips included)
    have = [m for m in counted if all((m.id, "published", s) in results for s in seeds)]
    for gain in GAIN_SWEEP:
        variant = policy.model_copy(update={"detection": policy.detection.model_copy(update={"min_asr_gain": gain})})
        decided = {(m.id, s): rescore(results[(m.id, "published", s)], variant) for m in have for s in seeds}
        rows = [gate_row(m, decided[(m.id, seeds[0])]) for m in have]
        by_seed = {m.id: {s: decided[(m.id, s)].gate_fails("backdoor") for s in seeds} for m in have}
        clean_failing = sum(1 for m in have if not m.backdoored and any(by_seed[m.id].values()))
        out["variants"][f"published:min_asr_gain={'off' if gain is None else f'{gain:g}'}"] = summary(rows) | {"flips": flips(by_seed), "clean_failing_any_seed": clean_failing}
    return out


def _fmt(x) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return "nan" if math.isnan(x) else ("inf" if math.isinf(x) else f"{x:.3f}")
    return str(x)


def write_markdown(report: dict, path: Path) -> None:
    ev = report["evaluation"]
    bb = report["backbone"]
    c = report["counts"]
    lines = [
        f"# ci-gate detection benchmark ({report['profile']} profile, bundled default policy unchanged)",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Backbone: `{bb['recipe']['config']}` CLIP pretrained here; zero-shot top-1 tiny-imagenet/val {bb['zero_shot_tiny_imagenet_val']:.3f}, cifar10/test {bb['zero_shot_cifar10_test']:.3f}. "
        f"Models: {c['total']} in the zoo, {c['clean']} clean, {c['implanted']} backdoored and implanted (held-out ASR >= {ASR_IMPLANTED}, and the trigger moves under {CLEAN_TRANSFER_MAX:.0%} of the images on the task's clean models), "
        f"{c.get('universal', 0)} whose trigger fools clean models too (universal adversarial, not counted), {c['failed']} failed implants (not counted), {c.get('undecided', 0)} undecided (no clean model of their learner listed); "
        f"{c['scanned']} scanned. Seeds {report['seeds']}. Wall time {report['wall_s'] / 60:.1f} min.",
        "",
        "| scan | models | accuracy | AUROC | target F1 | TP | FP | TN | FN | flips | mean s/scan |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    labels = {"published": "CI blind default, published reference", "none": "CI blind default, no published reference", "today": "CI, the previous default (4/255, one rung)"}
    for mode, label in labels.items():
        if mode not in ev["modes"]:
            continue
        views = {
            "overall": "", "outlier_names_only": " (targets named only when flagged: no name by rank on a modified tower)",
            "prompt_level": " (prompt-level only)", "asr_bar_only": " (ASR bar only: universal triggers counted)",
            "statistic_alone": " (the reference-free statistic alone: unverified_towers warn, not the default)",
        }
        for view, suffix in views.items():
            o = ev["modes"][mode].get(view, {})
            if not o.get("n"):
                continue
            cf = o.get("confusion", {})
            n_flips = len(ev["modes"][mode]["statistic_alone_flips" if view == "statistic_alone" else "flips"])
            lines.append(f"| {label}{suffix} | {o['n']} | {_fmt(o.get('accuracy'))} | {_fmt(o.get('auroc'))} | {_fmt(o.get('target_f1'))} | {cf.get('tp')} | {cf.get('fp')} | {cf.get('tn')} | {cf.get('fn')} | {n_flips} | {ev['modes'][mode]['mean_seconds']:.1f} |")
    for name, label in (("nc", "Neural Cleanse"), ("pixel", "Pixel Backdoor")):
        o = report["baselines"].get(name)
        if o and o.get("n"):
            cf = o.get("confusion", {})
            lines.append(f"| {label} | {o['n']} | {_fmt(o.get('accuracy'))} | {_fmt(o.get('auroc'))} | {_fmt(o.get('target_f1'))} | {cf.get('tp')} | {cf.get('fp')} | {cf.get('tn')} | {cf.get('fn')} | - | {report['baseline_seconds'][name]:.1f} |")
    cost = report.get("cost")
    if cost:
        lines += ["", f"Cost, side by side on the same {cost['n']} models in this run: blind default {cost['blind_s']:.1f} s vs previous default {cost['today_s']:.1f} s per scan, ratio **{cost['ratio']:.2f}x** (each model scanned by both, same process, same seed)."]
    for mode in ev["modes"]:
        m = ev["modes"][mode]
        lines += ["", f"## {labels[mode]}: per attack and per budget", "", "| group | n | correct | right target | max anomaly on clean |", "|---|---|---|---|---|"]
        for key in ("per_attack", "per_budget", "per_dataset", "per_learner"):
            for name, g in m[key].items():
                lines.append(f"| {key[4:]} {name} | {g['n']} | {g['correct']}/{g['n']} | {g['target_right']} | {_fmt(g['max_clean_score'])} |")
        if m["flips"]:
            lines.append(f"\nVerdict flips across seeds: {', '.join(m['flips'])}")
        if m.get("universal"):
            lines += ["", "Universal adversarial triggers (not counted): the trigger reaches the ASR bar on the model and moves half or more of the images on clean models too", "",
                      "| model | held-out ASR | on clean models | gate | target named |", "|---|---|---|---|---|"]
            lines += [f"| {r['model']} | {r['asr']:.3f} | {r['clean_asr']:.3f} | {'FAIL' if r['flagged'] else 'pass'} ({_fmt(r['score'])}) | {_fmt(r['target_pred'])} (planted {r['target_true']}) |" for r in m["universal"]]
        cal = m.get("calibration") or []
        if cal and cal[0]["n"]:
            lines += ["", f"k calibration: {cal[0]['n']} clean models, each scored by its largest class score over the ladder and seeds {report['seeds']}; "
                      f"one-sided {cal[0]['confidence']:.0%} upper bound on the per-model false-positive rate", "",
                      "| k | clean models above k | observed FPR | FPR upper bound |", "|---|---|---|---|"]
            lines += [f"| {r['k']:g} | {r['false_positives']} | {r['fpr']:.3f} | {r['fpr_upper']:.3f} |" for r in cal]
    lines += ["", "## Variants re-decided from the saved results (accuracy / AUROC / target F1, FP, FN)", "", "| mode:statistic:k | accuracy | AUROC | target F1 | FP | FN |", "|---|---|---|---|---|---|"]
    for name, o in ev["variants"].items():
        cf = o.get("confusion", {})
        seeds_note = f" (flips {len(o['flips'])}: {', '.join(o['flips']) or '-'}; clean models failing at some seed: {o['clean_failing_any_seed']})" if "flips" in o else ""
        lines.append(f"| {name}{seeds_note} | {_fmt(o.get('accuracy'))} | {_fmt(o.get('auroc'))} | {_fmt(o.get('target_f1'))} | {cf.get('fp')} | {cf.get('fn')} |")
    lines += ["", "## Zoo", "", "| model | clean acc | ASR | on clean models | implanted | " + " | ".join(ev["modes"]) + " |", "|---|---|---|---|---|" + "---|" * len(ev["modes"])]
    rows = {mode: {r["model"]: r for r in ev["modes"][mode]["rows"]} for mode in ev["modes"]}
    for z in report["zoo"]:
        cells = []
        for mode in ev["modes"]:
            r = rows[mode].get(z["id"])
            cells.append("-" if r is None else f"{'FAIL' if r['flagged'] else 'pass'} ({_fmt(r['target_pred'])}, {_fmt(r['score'])})")
        target = "" if z["target"] is None else f" (target {z['target']})"
        lines.append(f"| {z['id']}{target} | {z['clean_acc']:.3f} | {_fmt(z['asr'])} | {_fmt(z.get('clean_asr'))} | {_fmt(z['implanted'])} | " + " | ".join(cells) + " |")
    lines.append("")
    atomic_write_text(path, "\n".join(lines))


def draw_roc(curves: dict[str, list[tuple[float, float]]], aucs: dict[str, float], path: Path, size: int = 480) -> None:
    """ROC plot with Pillow (no plotting dependency)."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (size, size), "white")
    d = ImageDraw.Draw(img)
    m = 50
    w = size - 2 * m
    d.rectangle([m, m, m + w, m + w], outline="black")
    d.line([m, m + w, m + w, m], fill=(190, 190, 190))
    for i in range(1, 5):
        t = m + w * i / 5
        d.line([t, m + w, t, m + w + 4], fill="black")
        d.line([m - 4, t, m, t], fill="black")
        d.text((t - 8, m + w + 8), f"{i / 5:.1f}", fill="black")
        d.text((m - 30, m + w - w * i / 5 - 5), f"{i / 5:.1f}", fill="black")
    d.text((m + w / 2 - 40, size - 20), "false positive rate", fill="black")
    d.text((5, m - 20), "true positive rate", fill="black")
    colours = {"published": (200, 30, 30), "none": (230, 140, 20), "nc": (30, 90, 200), "pixel": (40, 150, 60)}
    labels = {"published": "CI, published reference", "none": "CI, no reference (statistic alone)", "nc": "Neural Cleanse", "pixel": "Pixel Backdoor"}
    for n, (name, pts) in enumerate(curves.items()):
        xy = []
        for a, b in zip(pts, pts[1:]):  # step plot
            xy += [(m + w * a[0], m + w - w * a[1]), (m + w * b[0], m + w - w * a[1]), (m + w * b[0], m + w - w * b[1])]
        d.line(xy, fill=colours[name], width=3 - n % 2)
        d.text((m + w - 190, m + w - 20 - 16 * (len(curves) - n)), f"{labels[name]}  AUROC {_fmt(aucs[name])}", fill=colours[name])
    tmp = path.with_suffix(".tmp.png")
    img.save(tmp)
    tmp.replace(path)


def run(profile: str, cache: Path, out: Path, data_root: Path, pool: str | None, threads: int, limit: int | None = None,
        max_minutes: float | None = None, built_only: bool = False, cost_sample: int = 6, seeds: tuple[int, ...] | None = None,
        with_baselines: bool = True, prompt_published_only: bool = False) -> dict:
    t0 = time.perf_counter()
    torch.set_num_threads(threads)
    out.mkdir(parents=True, exist_ok=True)
    settings = PROFILES[profile]
    seeds = tuple(seeds or settings["seeds"])
    entries = profile_entries(profile)
    if limit:
        entries = entries[:limit]
    if built_only:
        from ci_gate.bench.backbone import BackboneRecipe, get_backbone

        backbone = get_backbone(data_root, cache, BackboneRecipe(), _log)
        folder = zoo_dir(cache, backbone)
        models = [ZooModel(**json.loads((folder / f"{e.id}.json").read_text())) for e in entries if (folder / f"{e.id}.json").is_file() and (folder / f"{e.id}.safetensors").is_file()]
        models = with_clean_transfer(models, backbone, data_root, cache, _log)
    else:
        backbone, models = get_zoo(entries, data_root, cache, log=_log)
    _log(f"zoo ready: {len(models)} models ({time.perf_counter() - t0:.0f} s)")
    policy, _ = load_policy("default")  # unchanged: the benchmark measures the gate users run
    today, _ = load_policy("default", TODAY)
    published = backbone.path / "backbone.safetensors"
    pool_path = pool or str(data_root / "ood" / "imagenet-1k")
    size = backbone.config["vision_cfg"]["image_size"]
    pool_images = load_pool(pool_path, size, policy.pool.min_images, policy.pool.max_images, seed=policy.seed).images
    results: dict[tuple[str, str, int], Result] = {}
    base: dict[str, dict] = {}
    scanned_ids: set[str] = set()
    cost: list[tuple[float, float]] = []
    # clean and implanted models first: they are what the metrics count
    order = sorted(models, key=lambda m: (m.backdoored and not m.implanted, m.id))
    left = 0
    for i, m in enumerate(order):
        # once the time budget is spent, models whose scans are all saved are still re-decided
        spent = max_minutes is not None and time.perf_counter() - t0 > 60 * max_minutes
        # without a published reference only embedded towers change the scoring; prompt-level
        # backdoors are scanned that way too unless --prompt-published-only saves the time
        modes = MODES if (not m.backdoored or m.learner == "zeroshot" or not prompt_published_only) else ("published",)
        jobs = [(mode, s) for s in seeds for mode in modes] + ([("today", seeds[0])] if i < cost_sample else [])
        got = {(mode, s): ci_scan(m, today if mode == "today" else policy, pool_path, out, mode, s, published, cached_only=spent) for mode, s in jobs}
        if any(r is None for r in got.values()):
            left += 1
            continue
        for (mode, s), r in got.items():
            results[(m.id, mode, s)] = r
        if with_baselines:
            base[m.id] = baselines(m, pool_images, settings, out)
        if i < cost_sample:
            cost.append((results[(m.id, "published", seeds[0])].timings.total_s, results[(m.id, "today", seeds[0])].timings.total_s))
        scanned_ids.add(m.id)
        pub = results[(m.id, "published", seeds[0])]
        none = results.get((m.id, "none", seeds[0]))
        _log(f"[{i + 1}/{len(order)}] {m.id}: published {pub.verdict} ({pub.target_class}, max {max(c.anomaly for c in pub.classes):.2f}, encoder {pub.encoder.status}, {pub.timings.total_s:.0f} s)"
             + ("" if none is None else f"; none {none.verdict} ({none.target_class}, max {max(c.anomaly for c in none.classes):.2f})")
             + ("" if m.id not in base else f"; NC {base[m.id]['nc']['verdict']} Pixel {base[m.id]['pixel']['verdict']}"))
    if left:
        _log(f"time budget of {max_minutes} min spent: {left} models left unscanned (rerun to continue)")
    scanned = [m for m in models if m.id in scanned_ids]
    ev = evaluate(scanned, results, policy, seeds)
    counted = [m for m in scanned if not m.backdoored or m.implanted]
    baseline_summary = {
        name: summary([_row(m, base[m.id][name]["verdict"] == "backdoor", base[m.id][name]["target"], base[m.id][name]["score"]) for m in counted if m.id in base])
        for name in ("nc", "pixel")
    }
    report = {
        "profile": profile,
        "command": f"ci-gate bench detection --profile {profile} --cache {cache} --out {out}",
        "backbone": backbone.info,
        "zoo": [asdict(m) for m in models],
        "seeds": list(seeds),
        "counts": {
            "total": len(models),
            "clean": sum(1 for m in models if not m.backdoored),
            "implanted": sum(1 for m in models if m.backdoored and m.implanted),
            "universal": sum(1 for m in models if m.universal),
            "undecided": sum(1 for m in models if m.backdoored and m.clean_asr is None),
            "failed": sum(1 for m in models if m.backdoored and not m.implanted and not m.universal and m.clean_asr is not None),
            "scanned": len(scanned),
        },
        "policy": {"name": policy.name, "sha256": policy.sha256(), "inversion": policy.inversion.model_dump(mode="json"), "detection": policy.detection.model_dump()},
        "evaluation": ev,
        "baselines": baseline_summary,
        "baseline_seconds": {name: sum(b[name]["seconds"] for b in base.values()) / max(1, len(base)) for name in ("nc", "pixel")},
        "cost": None if not cost else {"n": len(cost), "blind_s": sum(a for a, _ in cost) / len(cost), "today_s": sum(b for _, b in cost) / len(cost), "ratio": sum(a for a, _ in cost) / sum(b for _, b in cost)},
        "wall_s": time.perf_counter() - t0,
    }
    atomic_write_text(out / "detection.json", json.dumps(report, indent=1))
    write_markdown(report, out / "detection.md")
    # without a reference the gate fails every unverified tower (a flat curve): plot what the statistic alone separates
    view = {"published": ("roc", "overall"), "none": ("statistic_alone_roc", "statistic_alone")}
    curves = {k: ev["modes"][k][view[k][0]] for k in view if k in ev["modes"] and ev["modes"][k].get(view[k][0])}
    draw_roc(curves, {k: ev["modes"][k][view[k][1]].get("auroc", math.nan) for k in curves}, out / "roc.png")
    _log(f"wrote {out / 'detection.json'}, detection.md, roc.png ({report['wall_s'] / 60:.1f} min)")
    return report


def register(bench_app) -> None:
    import typer

    @bench_app.command("detection")
    def detection(
        profile: str = typer.Option("quick", "--profile", help="quick (one model per family) or full (every family, several seeds and budgets, 3 scan seeds)."),
        cache: Path = typer.Option(DEFAULT_CACHE, "--cache", help="Where the backbone, datasets and zoo are cached (outside the repository)."),
        out: Path = typer.Option(Path("bench-detection"), "--out", help="Folder for detection.json, detection.md, roc.png and the saved scans."),
        data: Path = typer.Option(DATA_ROOT, "--data", help="The shared data folder (cifar10, tiny-imagenet, ood)."),
        pool: str = typer.Option(None, "--pool", help="OOD pool (default: <data>/ood/imagenet-1k)."),
        threads: int = typer.Option(1, "--threads", help="torch threads (leave cores to others on shared machines)."),
        limit: int = typer.Option(None, "--limit", help="Only the first N zoo models (smoke runs)."),
        max_minutes: float = typer.Option(None, "--max-minutes", help="Stop scanning after this much wall time and report what was scanned (resumable: rerun to continue)."),
        built_only: bool = typer.Option(False, "--built-only", help="Scan only the zoo models already in the cache (build nothing)."),
        cost_sample: int = typer.Option(6, "--cost-sample", help="Also scan the first N models with the previous default, side by side, for the cost ratio."),
        seeds: str = typer.Option(None, "--seeds", help="Scan seeds, e.g. 0,1,2 (default: the profile's)."),
        with_baselines: bool = typer.Option(True, "--baselines/--no-baselines", help="Run Neural Cleanse and Pixel Backdoor side by side."),
        prompt_published_only: bool = typer.Option(False, "--prompt-published-only", help="Scan prompt-level backdoored models with the published reference only (the no-reference mode changes nothing for their untouched towers)."),
    ) -> None:
        """Build or reuse the zoo, scan it with the bundled default policy (two reference modes, several seeds), Neural Cleanse and Pixel Backdoor; report."""
        if profile not in PROFILES:
            raise typer.BadParameter(f"profile must be one of {sorted(PROFILES)}")
        seed_list = None if seeds is None else tuple(int(s) for s in seeds.split(","))
        report = run(profile, cache, out, data, pool, threads, limit, max_minutes, built_only, cost_sample, seed_list, with_baselines, prompt_published_only)
        for mode, m in report["evaluation"]["modes"].items():
            o = m["overall"]
            typer.echo(f"{mode}: accuracy {_fmt(o.get('accuracy'))} AUROC {_fmt(o.get('auroc'))} target F1 {_fmt(o.get('target_f1'))} flips {len(m['flips'])}")
        typer.echo(f"see {out / 'detection.md'}")


__all__ = ["register", "run", "evaluate", "draw_roc", "summary", "flips", "breakdown"]
