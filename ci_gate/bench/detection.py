"""``ci-gate bench detection``: how often is ci-gate right? (issue 4)

Builds or reuses the zoo (ci_gate.bench.zoo), scans every model whose backdoor really implanted
(held-out ASR >= 90%) and every clean model with

- CLIP-Inspector exactly as ``ci-gate verify`` runs it (``run_scan`` with the bundled default
  policy, CPU),
- the clean reference: the same backbone with hand-written prompts, inverted with the same
  settings and pool (feeds the ``ref_*`` statistics of ci_gate.scoring),
- Neural Cleanse and Pixel Backdoor (ci_gate.baselines) on the same classifier, pool and classes,

and writes ``detection.json``, ``detection.md`` and ``roc.png`` to ``--out``. Per-model results
are kept under ``--out/models/`` and reused, so an interrupted full run resumes.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from ci_gate.baselines import BaselineSettings, neural_cleanse, pixel_backdoor
from ci_gate.bench import metrics
from ci_gate.bench.zoo import ATTACK_ORDER, TASK_RECIPE, ZooModel, get_zoo, profile_entries
from ci_gate.io import atomic_write_text
from ci_gate.model import load_classifier
from ci_gate.model.small import embedded_backbone
from ci_gate.policy import Policy, load_policy
from ci_gate.pool import load_pool
from ci_gate.reference import reference_stats
from ci_gate.scan import inversion_settings
from ci_gate.scoring import ClassStats, decide

DEFAULT_CACHE = Path.home() / ".cache" / "ci-gate-bench"
DATA_ROOT = Path(__file__).resolve().parents[2].parent / "shared" / "data"
STATISTICS = ("loss_drop", "neg_loss", "asr", "asr_gain", "ref_loss_gain", "ref_asr_gain", "ref_drop_gain")

K_SWEEP = (2.0, 2.5, 3.0, 4.0, 5.0)
MIN_ASR_SWEEP = (0.3, 0.5, 0.7)
PROFILES = {
    # baselines: epochs over the pool and pool size (the paper: 5 epochs over the full pool)
    "quick": {"baseline_epochs": 2, "baseline_pool": 256},
    # the paper's 5 epochs, on the first 128 pool images (5 x 1000 would take ~10x CI's time on
    # CPU; this keeps a baseline scan near CI's cost so the full zoo fits in its time budget)
    "full": {"baseline_epochs": 5, "baseline_pool": 128},
}


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


@dataclass
class ModelScan:
    model: str
    ci: dict  # verdict, target, score (max anomaly), seconds, classes (per-class raw stats)
    reference: dict  # per-class ref stats, seconds
    nc: dict
    pixel: dict


def _ci_scan(model: ZooModel, policy: Policy, pool_path: str, out: Path, published: Path | None = None) -> dict:
    from ci_gate.scan import ScanRequest, run_scan

    # encoder-level checkpoints embed their (poisoned) tower: give the reference the published
    # one, as `verify --reference-weights` does
    weights = published if model.learner == "zeroshot" else None
    res = run_scan(ScanRequest(checkpoint=Path(model.path), policy=policy, pool=pool_path, out_dir=out, reference_weights=weights))
    classes = [
        {"index": c.index, "name": c.name, "asr": c.asr, "base_rate": c.base_rate, "final_loss": c.final_loss, "clean_loss": c.clean_loss, "anomaly": c.anomaly}
        for c in res.classes
    ]
    score = max((c["anomaly"] for c in classes if math.isfinite(c["anomaly"])), default=math.nan)
    return {"verdict": res.verdict, "target": res.target_index, "score": score, "seconds": res.timings.total_s, "inversion_s": res.timings.inversion_s, "classes": classes}


def _reference(model: ZooModel, policy: Policy, images: torch.Tensor, pristine=None) -> dict:
    """Invert the backbone with hand-written prompts (zero-shot). Prompt-level models carry the
    published backbone unchanged; for encoder-level models the published (pristine) backbone
    is used, as a user would: the checkpoint's own image tower is the one under suspicion."""
    t0 = time.perf_counter()
    loaded = load_classifier(model.path)
    settings = inversion_settings(policy)
    use = pristine if model.learner == "zeroshot" else None
    ref = reference_stats(loaded, list(loaded.classifier.class_names), images, settings, backbone=use)
    return {
        "classes": [{"index": i, "asr": r.asr, "final_loss": r.final_loss, "clean_loss": r.clean_loss} for i, r in enumerate(ref)],
        "seconds": time.perf_counter() - t0,
        "backbone": "pristine" if use is not None else "checkpoint",
    }


def _baseline(fn, model: ZooModel, images: torch.Tensor, settings: BaselineSettings) -> dict:
    loaded = load_classifier(model.path)
    clf = loaded.classifier
    res = fn(clf, images, settings)
    return {
        "verdict": "backdoor" if res.flagged else "clean",
        "target": res.target,
        "score": res.score,
        "seconds": res.seconds,
        "classes": [asdict(c) | {"anomaly": a} for c, a in zip(res.classes, res.anomaly)],
    }


def scan_policy(base: Policy, dataset: str) -> Policy:
    """The default policy with the inversion budget set to the task's trigger budget.

    The paper scans at its attack's budget (4/255 on 224 px CLIP); the zoo's BadCLIP budget is
    larger on this 32 px backbone (zoo.TASK_RECIPE), and a 4/255 scan misses it there
    (docs/benchmark.md), so the scan follows the attack, as the paper's does.
    """
    inversion = base.inversion.model_copy(update={"epsilon": TASK_RECIPE[dataset]["eps255"] / 255})
    return base.model_copy(update={"inversion": inversion})


def scan_model(
    model: ZooModel, policy: Policy, pool_path: str, pool_images: torch.Tensor, profile: dict, out: Path,
    pristine=None, cached_only: bool = False, published_weights: Path | None = None,
) -> ModelScan | None:
    record = out / "models" / f"{model.id}.json"
    # The raw per-class statistics depend on the inversion, pool and seed, not on the detection
    # settings (statistic, k, min_asr are applied afterwards), so those are not part of the key.
    # The baselines do not depend on CI's inversion settings: they are reused when only it changed.
    base_key = {"profile": profile, "pool": pool_path, "seed": policy.seed}
    key = {"inversion": policy.inversion.model_dump(mode="json"), "pool_policy": policy.pool.model_dump(mode="json")} | base_key
    saved = json.loads(record.read_text()) if record.is_file() else {}
    old = saved.get("key", {})
    if old == key:
        return ModelScan(**saved["scan"])
    if cached_only:
        return None
    torch.manual_seed(0)
    ci = _ci_scan(model, policy, pool_path, out / "scans" / model.id, published_weights)
    ref = _reference(model, policy, pool_images, pristine)
    if old and all(old.get(k) == v for k, v in base_key.items()):
        nc, px = saved["scan"]["nc"], saved["scan"]["pixel"]
    else:
        bsettings = BaselineSettings(epochs=profile["baseline_epochs"])
        base_images = pool_images[: profile["baseline_pool"]]
        nc = _baseline(neural_cleanse, model, base_images, bsettings)
        px = _baseline(pixel_backdoor, model, base_images, bsettings)
    scan = ModelScan(model=model.id, ci=ci, reference=ref, nc=nc, pixel=px)
    atomic_write_text(record, json.dumps({"key": key, "scan": asdict(scan)}, indent=1))
    return scan


def class_stats(scan: ModelScan) -> list[ClassStats]:
    ref = {c["index"]: c for c in scan.reference["classes"]}
    return [
        ClassStats(
            asr=c["asr"], base_rate=c["base_rate"], final_loss=c["final_loss"], clean_loss=c["clean_loss"],
            ref_asr=ref[c["index"]]["asr"], ref_final_loss=ref[c["index"]]["final_loss"], ref_clean_loss=ref[c["index"]]["clean_loss"],
        )
        for c in scan.ci["classes"]
    ]


def _summary(rows: list[dict]) -> dict:
    """rows: {positive, flagged, target_pred, target_true, score}."""
    if not rows:
        return {"n": 0}
    pos = [r["positive"] for r in rows]
    return {
        "n": len(rows),
        "n_backdoored": sum(pos),
        "accuracy": metrics.detection_accuracy([r["flagged"] for r in rows], pos),
        "auroc": metrics.auroc([r["score"] for r in rows], pos),
        "target_f1": metrics.target_f1([r["target_pred"] for r in rows], [r["target_true"] for r in rows]),
        "confusion": metrics.confusion([r["flagged"] for r in rows], pos),
    }


def _rows_for(method: str, models: list[ZooModel], scans: dict[str, ModelScan], policy: Policy, statistic: str | None = None, k: float | None = None, min_asr: float | None = None) -> list[dict]:
    det = policy.detection
    k = det.k if k is None else k
    min_asr = det.min_asr if min_asr is None else min_asr
    rows = []
    for m in models:
        s = scans[m.id]
        if method == "ci":
            stat = statistic or det.statistic
            d = decide(class_stats(s), stat, k, min_asr, det.mad_floor)
            finite = [a for a in d.anomaly if math.isfinite(a)]
            flagged, target, score = d.verdict == "backdoor", d.target, max(finite) if finite else math.nan
        else:
            r = getattr(s, method)
            flagged, target, score = r["verdict"] == "backdoor", r["target"], r["score"]
        rows.append({"model": m.id, "attack": m.attack or "clean", "dataset": m.dataset, "learner": m.learner, "positive": m.backdoored, "flagged": flagged, "target_pred": target, "target_true": m.target, "score": score})
    return rows


def _breakdown(rows: list[dict], key: str) -> dict:
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r[key], []).append(r)
    out = {}
    for name, g in groups.items():
        out[name] = {
            "n": len(g),
            "correct": sum(1 for r in g if r["flagged"] == r["positive"]),
            "target_right": sum(1 for r in g if r["positive"] and r["target_pred"] == r["target_true"]),
        }
        if key != "attack":
            out[name].update({k: v for k, v in _summary(g).items() if k in ("accuracy", "auroc", "target_f1")})
    return out


LENIENT_ASR = 0.5


def evaluate(models: list[ZooModel], scans: dict[str, ModelScan], policy: Policy, min_model_asr: float | None = None) -> dict:
    """Metrics over clean models plus backdoored models that implanted: held-out ASR >= 0.9
    (issue 4's bar) or, for the secondary ``lenient`` view, >= ``min_model_asr``."""
    if min_model_asr is None:
        counted = [m for m in models if not m.backdoored or m.implanted]
    else:
        counted = [m for m in models if not m.backdoored or (m.asr or 0) >= min_model_asr]
    counted = [m for m in counted if m.id in scans]
    out = {"methods": {}, "statistics": {}, "models": [m.id for m in counted]}
    for method in ("ci", "nc", "pixel"):
        rows = _rows_for(method, counted, scans, policy)
        out["methods"][method] = {
            "overall": _summary(rows),
            "per_attack": _breakdown(rows, "attack"),
            "per_dataset": _breakdown(rows, "dataset"),
            "per_learner": _breakdown(rows, "learner"),
            "roc": metrics.roc_curve([r["score"] for r in rows], [r["positive"] for r in rows]),
            "rows": rows,
        }
    for stat in STATISTICS:
        rows = _rows_for("ci", counted, scans, policy, statistic=stat)
        sweep = {}
        for k in K_SWEEP:
            for a in MIN_ASR_SWEEP:
                o = _summary(_rows_for("ci", counted, scans, policy, statistic=stat, k=k, min_asr=a))
                sweep[f"k={k},min_asr={a}"] = {"accuracy": o.get("accuracy"), "target_f1": o.get("target_f1"), "confusion": o.get("confusion")}
        out["statistics"][stat] = _summary(rows) | {"per_attack": _breakdown(rows, "attack"), "sweep": sweep}
    return out


def _fmt(x) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return "nan" if math.isnan(x) else f"{x:.3f}"
    return str(x)


def write_markdown(report: dict, path: Path) -> None:
    ev = report["evaluation"]
    lines = [f"# ci-gate detection benchmark ({report['profile']} profile)", ""]
    bb = report["backbone"]
    lines += [
        f"Backbone: `{bb['recipe']['config']}` CLIP pretrained here on {bb['corpus_images']} images / {bb['corpus_classes']} captioned classes "
        f"({bb['pretrain_s']:.0f} s); zero-shot top-1 tiny-imagenet/val {bb['zero_shot_tiny_imagenet_val']:.3f}, cifar10/test {bb['zero_shot_cifar10_test']:.3f}.",
        "",
        f"Models: {report['counts']['total']} built, {report['counts']['clean']} clean, {report['counts']['implanted']} backdoored and implanted (ASR >= 0.9), "
        f"{report['counts']['failed']} attacks failed to implant (excluded from the detection metrics); {report['counts'].get('scanned')} models scanned. Total wall time {report['wall_s'] / 60:.1f} min.",
        "",
        "## Detection (CI: default policy, inversion budget = the task's trigger budget; baselines at anomaly index > 2)",
        "",
        "| method | models | accuracy | AUROC | target F1 | TP | FP | TN | FN | mean s/scan |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    names = {"ci": "CLIP-Inspector (ci-gate)", "nc": "Neural Cleanse", "pixel": "Pixel Backdoor"}
    for m, label in names.items():
        o = ev["methods"][m]["overall"]
        c = o.get("confusion", {})
        lines.append(f"| {label} | {o['n']} | {_fmt(o.get('accuracy'))} | {_fmt(o.get('auroc'))} | {_fmt(o.get('target_f1'))} | {c.get('tp')} | {c.get('fp')} | {c.get('tn')} | {c.get('fn')} | {report['mean_seconds'][m]:.1f} |")
    lev = report.get("evaluation_lenient")
    if lev:
        lines += ["", f"Secondary view: backdoored models with held-out ASR >= {LENIENT_ASR} (partially implanted) counted as backdoored:", "", "| method | models | accuracy | AUROC | target F1 | TP | FP | TN | FN |", "|---|---|---|---|---|---|---|---|---|"]
        for m, label in names.items():
            o = lev["methods"][m]["overall"]
            c = o.get("confusion", {})
            lines.append(f"| {label} | {o['n']} | {_fmt(o.get('accuracy'))} | {_fmt(o.get('auroc'))} | {_fmt(o.get('target_f1'))} | {c.get('tp')} | {c.get('fp')} | {c.get('tn')} | {c.get('fn')} |")
        lines += ["", "| statistic (lenient view) | accuracy | AUROC | target F1 | FP | FN |", "|---|---|---|---|---|---|"]
        for stat, o in lev["statistics"].items():
            c = o.get("confusion", {})
            lines.append(f"| {stat} | {_fmt(o.get('accuracy'))} | {_fmt(o.get('auroc'))} | {_fmt(o.get('target_f1'))} | {c.get('fp')} | {c.get('fn')} |")
    allv = report.get("evaluation_all")
    if allv:
        lines += ["", "All attacked models counted as backdoored, whatever their ASR (how each statistic ranks weak backdoors):", "", "| statistic (all view) | accuracy | AUROC | target F1 | FP | FN |", "|---|---|---|---|---|---|"]
        for stat, o in allv["statistics"].items():
            c = o.get("confusion", {})
            lines.append(f"| {stat} | {_fmt(o.get('accuracy'))} | {_fmt(o.get('auroc'))} | {_fmt(o.get('target_f1'))} | {c.get('fp')} | {c.get('fn')} |")
        for m, label in names.items():
            o = allv["methods"][m]["overall"]
            lines.append(f"\n{label} (all view): accuracy {_fmt(o.get('accuracy'))}, AUROC {_fmt(o.get('auroc'))}, target F1 {_fmt(o.get('target_f1'))}")
    bd = report.get("evaluation_all", ev)
    lines += ["", "## Per attack (all scanned models, failed implants included; correct verdicts / models; right target among backdoored)", "", "| attack | n | CI | CI target | NC | NC target | Pixel | Pixel target |", "|---|---|---|---|---|---|---|---|"]
    for att, g in bd["methods"]["ci"]["per_attack"].items():
        nc, px = bd["methods"]["nc"]["per_attack"][att], bd["methods"]["pixel"]["per_attack"][att]
        tgt = lambda d: "-" if att == "clean" else f"{d['target_right']}/{d['n']}"  # noqa: E731
        lines.append(f"| {att} | {g['n']} | {g['correct']}/{g['n']} | {tgt(g)} | {nc['correct']}/{nc['n']} | {tgt(nc)} | {px['correct']}/{px['n']} | {tgt(px)} |")
    for title, src in (("strict view", ev), ("all view", bd)):
        lines += ["", f"## Per dataset and learner ({title})", "", "| group | n | CI acc | CI AUROC | CI F1 | NC AUROC | Pixel AUROC |", "|---|---|---|---|---|---|---|"]
        for key in ("per_dataset", "per_learner"):
            for name, g in src["methods"]["ci"][key].items():
                nc, px = src["methods"]["nc"][key][name], src["methods"]["pixel"][key][name]
                lines.append(f"| {name} | {g['n']} | {_fmt(g.get('accuracy'))} | {_fmt(g.get('auroc'))} | {_fmt(g.get('target_f1'))} | {_fmt(nc.get('auroc'))} | {_fmt(px.get('auroc'))} |")
    det = report["policy"]["detection"]
    lines += ["", f"## CI statistic variants (k={det['k']}, min_asr={det['min_asr']}, same scans)", "", "| statistic | accuracy | AUROC | target F1 | FP | FN |", "|---|---|---|---|---|---|"]
    for stat, o in ev["statistics"].items():
        c = o.get("confusion", {})
        lines.append(f"| {stat} | {_fmt(o.get('accuracy'))} | {_fmt(o.get('auroc'))} | {_fmt(o.get('target_f1'))} | {c.get('fp')} | {c.get('fn')} |")
    lines += ["", "Threshold sweep (accuracy / target F1), same scans; k is the anomaly index threshold:", "", "| statistic | " + " | ".join(f"k={k}" for k in K_SWEEP) + " |", "|---|" + "---|" * len(K_SWEEP)]
    for stat, o in ev["statistics"].items():
        cells = []
        for k in K_SWEEP:
            best = max(MIN_ASR_SWEEP, key=lambda a: (o["sweep"][f"k={k},min_asr={a}"]["accuracy"] or 0))
            c = o["sweep"][f"k={k},min_asr=0.5"]
            cells.append(f"{_fmt(c['accuracy'])} / {_fmt(c['target_f1'])} (best min_asr {best}: {_fmt(o['sweep'][f'k={k},min_asr={best}']['accuracy'])})")
        lines.append(f"| {stat} | " + " | ".join(cells) + " |")
    lines += ["", "## Zoo", "", "| model | clean acc | ASR | implanted | CI verdict (target) | anomaly | NC | Pixel |", "|---|---|---|---|---|---|---|---|"]
    rows_src = report.get("evaluation_all", ev)
    ci_rows = {r["model"]: r for r in rows_src["methods"]["ci"]["rows"]}
    nc_rows = {r["model"]: r for r in rows_src["methods"]["nc"]["rows"]}
    px_rows = {r["model"]: r for r in rows_src["methods"]["pixel"]["rows"]}
    for z in report["zoo"]:
        r = ci_rows.get(z["id"])
        ci = "-" if r is None else f"{'backdoor' if r['flagged'] else 'clean'} ({_fmt(r['target_pred'])})"
        nc = "-" if z["id"] not in nc_rows else f"{'backdoor' if nc_rows[z['id']]['flagged'] else 'clean'} {_fmt(nc_rows[z['id']]['score'])}"
        px = "-" if z["id"] not in px_rows else f"{'backdoor' if px_rows[z['id']]['flagged'] else 'clean'} {_fmt(px_rows[z['id']]['score'])}"
        target = "" if z["target"] is None else f" (target {z['target']})"
        lines.append(f"| {z['id']}{target} | {z['clean_acc']:.3f} | {_fmt(z['asr'])} | {_fmt(z['implanted'])} | {ci} | {_fmt(None if r is None else r['score'])} | {nc} | {px} |")
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
    colours = {"ci": (200, 30, 30), "nc": (30, 90, 200), "pixel": (40, 150, 60)}
    labels = {"ci": "CLIP-Inspector", "nc": "Neural Cleanse", "pixel": "Pixel Backdoor"}
    for n, (name, pts) in enumerate(curves.items()):
        xy = []
        for a, b in zip(pts, pts[1:]):  # step plot
            xy += [(m + w * a[0], m + w - w * a[1]), (m + w * b[0], m + w - w * a[1]), (m + w * b[0], m + w - w * b[1])]
        d.line(xy, fill=colours[name], width=3 - n % 2)
        d.text((m + w - 190, m + w - 20 - 16 * (len(curves) - n)), f"{labels[name]}  AUROC {_fmt(aucs[name])}", fill=colours[name])
    tmp = path.with_suffix(".tmp.png")
    img.save(tmp)
    tmp.replace(path)


def run(profile: str, cache: Path, out: Path, data_root: Path, pool: str | None, threads: int, limit: int | None = None, max_minutes: float | None = None) -> dict:
    t0 = time.perf_counter()
    torch.set_num_threads(threads)
    out.mkdir(parents=True, exist_ok=True)
    entries = profile_entries(profile)
    if limit:
        entries = entries[:limit]
    backbone, models = get_zoo(entries, data_root, cache, log=_log)
    _log(f"zoo ready: {len(models)} models ({time.perf_counter() - t0:.0f} s)")
    policy, _ = load_policy("default", overrides=["device=cpu"])
    pool_path = pool or str(data_root / "ood" / "imagenet-1k")
    size = backbone.config["vision_cfg"]["image_size"]
    pool_images = load_pool(pool_path, size, policy.pool.min_images, policy.pool.max_images, seed=policy.seed).images
    settings = PROFILES[profile]
    _, pristine = embedded_backbone(backbone.config, backbone.state)
    scans: dict[str, ModelScan] = {}
    # failed implants are scanned too (they feed the secondary, lenient view), strict ones first
    to_scan = sorted(models, key=lambda m: (m.backdoored and not m.implanted, -(m.asr or 0)))
    skipped = 0
    for i, m in enumerate(to_scan):
        budget_spent = max_minutes is not None and time.perf_counter() - t0 > 60 * max_minutes
        s = scan_model(m, scan_policy(policy, m.dataset), pool_path, pool_images, settings, out, pristine, cached_only=budget_spent, published_weights=backbone.path / "backbone.safetensors")
        if s is None:  # budget spent and no record yet: left for a rerun
            skipped += 1
            continue
        scans[m.id] = s
        # the verdict under this run's policy and the benchmark's reference (a cached record may
        # have been scanned under another statistic)
        det = policy.detection
        d = decide(class_stats(s), det.statistic, det.k, det.min_asr, det.mad_floor)
        score = max((a for a in d.anomaly if math.isfinite(a)), default=math.nan)
        _log(
            f"[{i + 1}/{len(to_scan)}] {m.id}: CI {d.verdict} ({d.target}, {score:.2f}, {s.ci['seconds']:.0f} s) "
            f"NC {s.nc['verdict']} ({s.nc['score']:.2f}, {s.nc['seconds']:.0f} s) Pixel {s.pixel['verdict']} ({s.pixel['score']:.2f}, {s.pixel['seconds']:.0f} s)"
        )
    if skipped:
        _log(f"time budget of {max_minutes} min spent: {skipped} models left unscanned (the report covers the {len(scans)} scanned ones; rerun to continue)")
    ev = evaluate(models, scans, policy)
    lenient = evaluate(models, scans, policy, min_model_asr=LENIENT_ASR)
    everything = evaluate(models, scans, policy, min_model_asr=0.0)
    mean_s = {k: (sum(getattr(s, k)["seconds"] for s in scans.values()) / max(1, len(scans))) for k in ("ci", "nc", "pixel")}
    mean_s["reference"] = sum(s.reference["seconds"] for s in scans.values()) / max(1, len(scans))
    report = {
        "profile": profile,
        "command": f"ci-gate bench detection --profile {profile} --cache {cache} --out {out}",
        "backbone": backbone.info,
        "zoo": [asdict(m) for m in models],
        "counts": {
            "total": len(models),
            "clean": sum(1 for m in models if not m.backdoored),
            "implanted": sum(1 for m in models if m.backdoored and m.implanted),
            "failed": sum(1 for m in models if m.backdoored and not m.implanted),
            "scanned": len(scans),
        },
        "policy": {"name": policy.name, "sha256": policy.sha256(), "detection": policy.detection.model_dump(), "scan_epsilon": {ds: r["eps255"] / 255 for ds, r in TASK_RECIPE.items()}},
        "baseline_settings": asdict(BaselineSettings(epochs=settings["baseline_epochs"])) | {"pool_images": settings["baseline_pool"]},
        "evaluation": ev,
        "evaluation_lenient": lenient,
        "evaluation_all": everything,
        "mean_seconds": mean_s,
        "wall_s": time.perf_counter() - t0,
    }
    atomic_write_text(out / "detection.json", json.dumps(report, indent=1))
    write_markdown(report, out / "detection.md")
    draw_roc({k: ev["methods"][k]["roc"] for k in ("ci", "nc", "pixel")}, {k: ev["methods"][k]["overall"].get("auroc", math.nan) for k in ("ci", "nc", "pixel")}, out / "roc.png")
    _log(f"wrote {out / 'detection.json'}, detection.md, roc.png ({report['wall_s'] / 60:.1f} min)")
    return report


def register(bench_app) -> None:
    import typer

    @bench_app.command("detection")
    def detection(
        profile: str = typer.Option("quick", "--profile", help="quick (about 15 min on 2 CPU cores once the backbone is cached) or full (40+ models)."),
        cache: Path = typer.Option(DEFAULT_CACHE, "--cache", help="Where the backbone, datasets and zoo are cached (outside the repository)."),
        out: Path = typer.Option(Path("bench-detection"), "--out", help="Folder for detection.json, detection.md, roc.png."),
        data: Path = typer.Option(DATA_ROOT, "--data", help="The shared data folder (cifar10, tiny-imagenet, ood)."),
        pool: str = typer.Option(None, "--pool", help="OOD pool (default: <data>/ood/imagenet-1k)."),
        threads: int = typer.Option(1, "--threads", help="torch threads (leave cores to others on shared machines)."),
        limit: int = typer.Option(None, "--limit", help="Only the first N zoo models (smoke runs)."),
        max_minutes: float = typer.Option(None, "--max-minutes", help="Stop scanning after this much wall time and report what was scanned (resumable: rerun to continue)."),
    ) -> None:
        """Build or reuse the zoo, scan it with CI, Neural Cleanse and Pixel Backdoor, report."""
        if profile not in PROFILES:
            raise typer.BadParameter(f"profile must be one of {sorted(PROFILES)}")
        report = run(profile, cache, out, data, pool, threads, limit, max_minutes)
        ci = report["evaluation"]["methods"]["ci"]["overall"]
        typer.echo(f"CI accuracy {_fmt(ci.get('accuracy'))} AUROC {_fmt(ci.get('auroc'))} target F1 {_fmt(ci.get('target_f1'))}; see {out / 'detection.md'}")


__all__ = ["register", "run", "evaluate", "draw_roc", "replace"]
