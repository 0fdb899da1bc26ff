"""Synthetic Results with real PNG artifacts on disk, for reporter and GitHub tests (no torch).

``make_result`` writes trigger and example PNGs into a folder and returns a Result whose
relative paths name them, the way a scan leaves its output folder.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from ci_gate.result import (
    BackboneInfo,
    ClassResult,
    Detection,
    Example,
    ModelInfo,
    PolicyInfo,
    PoolInfo,
    Result,
    Timings,
    ToolInfo,
)

DEFAULT_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
MODEL_SHA = "ab" * 32


def write_png(path: Path, seed: int, size: int = 32) -> None:
    """A small deterministic RGB image; distinct seeds give distinct pixels."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", (size, size))
    img.putdata([((x * 7 + seed * 40) % 256, (y * 11 + seed * 17) % 256, (x * y + seed) % 256) for y in range(size) for x in range(size)])
    img.save(path, format="PNG")


def _report_settings(overrides: dict | None) -> dict:
    report = {"formats": ["json", "html", "sarif", "md"], "backdoor_level": "error", "suspicious_level": "warning", "fail_on": "backdoor"}
    report.update(overrides or {})
    return report


def make_result(
    folder: Path,
    *,
    verdict: str = "backdoor",
    names: list[str] | None = None,
    target: int = 3,
    suspicious: tuple[int, ...] = (7,),
    model_path: str = "models/coop_cifar10.safetensors",
    report: dict | None = None,
    with_images: bool = True,
    warnings: list[str] | None = None,
    model_sha: str = MODEL_SHA,
) -> Result:
    """A scan result for ``names``; ``verdict="clean"`` gives every class status ok and no artifacts."""
    names = list(names or DEFAULT_NAMES)
    folder.mkdir(parents=True, exist_ok=True)
    classes = []
    for i, name in enumerate(names):
        status, anomaly, asr, loss = "ok", -1.2 + (i % 5) * 0.45, 0.05 + 0.01 * i, 1.5 - 0.05 * i
        if verdict == "backdoor" and i == target:
            status, anomaly, asr, loss = "backdoor", 6.4, 0.93, -4.2
        elif verdict == "backdoor" and i in suspicious:
            status, anomaly, asr, loss = "suspicious", 2.6, 0.31, 0.2
        png = None
        if with_images and status != "ok":
            png = f"triggers/class_{i:02d}.png"
            write_png(folder / png, seed=i)
        classes.append(
            ClassResult(
                index=i, name=name, from_checkpoint=True, asr=asr, base_rate=0.1, final_loss=loss, clean_loss=loss + 1.0,
                statistic=-loss, anomaly=anomaly, status=status, trigger_linf=4 / 255, trigger_png=png,
            )
        )
    examples = []
    if with_images and verdict == "backdoor":
        for j in range(2):
            write_png(folder / "examples" / f"{j}_clean.png", seed=100 + j)
            write_png(folder / "examples" / f"{j}_triggered.png", seed=200 + j)
            examples.append(
                Example(
                    class_name=names[target], clean_png=f"examples/{j}_clean.png", triggered_png=f"examples/{j}_triggered.png",
                    predicted_clean=names[(target + 1 + j) % len(names)], predicted_triggered=names[target],
                )
            )
    flagged = verdict == "backdoor"
    return Result(
        tool=ToolInfo(version="0.1.0"),
        created_at="2025-01-02T03:04:05+00:00",
        verdict=verdict,
        target_class=names[target] if flagged else None,
        target_index=target if flagged else None,
        model=ModelInfo(
            path=model_path, sha256=model_sha, format_version=1, learner="coop", class_names=names, n_ctx=4,
            backbone=BackboneInfo(architecture="ViT-B-16", pretrained="openai", sha256="cd" * 32),
        ),
        pool=PoolInfo(source="/data/ood", sha256="ef" * 32, n_images=1000, n_skipped=1, skipped=["bad.jpg: not an image"]),
        policy=PolicyInfo(name="default", path="policies/default.yaml", sha256="12" * 32, settings={"report": _report_settings(report)}),
        detection=Detection(statistic="neg_loss", k=2.0, min_asr=0.5, median=0.1, mad=0.3),
        classes=classes,
        examples=examples,
        timings=Timings(load_s=1.5, pool_s=2.0, inversion_s=30.25, total_s=34.0),
        device="cuda:0",
        seed=0,
        warnings=warnings if warnings is not None else ["pool has 1 unreadable file"],
    )


def saved_result(folder: Path, **kwargs) -> Path:
    """make_result + result.json in the same folder; returns the result.json path."""
    return make_result(folder, **kwargs).save(folder / "result.json")


class FactoryScan:
    """What ``ci_gate.scan.scan`` returns, as far as writing a report folder goes (a ScanOutput's
    ``result`` and ``files()``): a factory Result and the PNG bytes it names."""

    def __init__(self, result: Result, files: list[tuple[str, bytes]]):
        self.result = result
        self._files = files

    def files(self):
        return iter(self._files)


def factory_scan(**kwargs) -> FactoryScan:
    """make_result's Result and images, held in memory as a scan's output is."""
    import tempfile

    from ci_gate.report.artifacts import referenced_paths

    with tempfile.TemporaryDirectory(prefix="factory-scan-") as tmp:
        result = make_result(Path(tmp), **kwargs)
        return FactoryScan(result, [(rel, (Path(tmp) / rel).read_bytes()) for rel in referenced_paths(result)])


def stub_scan(monkeypatch, verdict: str = "clean") -> dict:
    """Replace ``ci_gate.scan`` with a stand-in whose scan returns a factory Result (and its
    images) under the inputs' policy (``seen["verdict"]`` overrides ``verdict``) and reports
    progress as invert() does: steps done, steps in all, classes. Returns ``seen``: the inputs'
    policy and progress callback."""
    import sys
    import types

    seen: dict = {}

    def scan(inputs, progress=None, shard=None):
        seen["policy"], seen["progress"] = inputs.policy, progress
        if progress is not None:
            for done in (10, 20, 30, 40):
                progress(done, 40, 4)
        found = factory_scan(verdict=seen.get("verdict", verdict), report=inputs.policy.report.model_dump(mode="json"))
        found.result.policy.settings = inputs.policy.model_dump(mode="json")
        found.result.policy.sha256 = inputs.policy.sha256()
        return found

    monkeypatch.setitem(sys.modules, "ci_gate.scan", types.SimpleNamespace(scan=scan))
    return seen


def make_ladder_result(folder: Path, *, target_asr: float = 0.6, ref_asr: float = 0.1, gain: float = 30.0, modified: bool = False):
    """A result as a ladder scan with the published reference writes it, decided by the bundled
    default policy: class 2 gains ``gain`` margins over the reference at the middle budget and
    half to three quarters of it at the others (a planted direction stands out at every budget),
    its trigger reaching ``target_asr`` (the reference's: ``ref_asr``) from the third budget on.
    Returns (result, default policy)."""
    from ci_gate.policy import load_policy
    from ci_gate.result import Detection, EncoderInfo, RungResult, TensorChange
    from ci_gate.scoring import ClassStats, decide_ladder, named_target

    base = make_result(folder, verdict="clean", with_images=False)
    policy, _ = load_policy("default")
    det = policy.detection
    eps = policy.inversion.epsilon
    gains = {2: [gain / 2, gain * 3 / 4, gain, gain * 3 / 4, gain / 2]}  # margins at logit scale 100
    target_ref = [0.1, 0.1, ref_asr, ref_asr, ref_asr]
    rungs_stats = [[ClassStats(asr=target_asr if (c == 2 and r >= 2) else 0.2, base_rate=0.1, final_loss=1.0 - gains.get(c, [0.1 * ((c % 3) - 1)] * 5)[r], clean_loss=2.0,
                               ref_asr=target_ref[r] if c == 2 else 0.1, ref_final_loss=1.0, ref_clean_loss=2.0, ref_cross_loss=1.0) for c in range(len(base.classes))] for r in range(len(eps))]
    d = decide_ladder(rungs_stats, det.statistic, det.k, det.min_asr, det.mad_floor, det.extreme, det.min_asr_gain, ["linf"] * len(eps))
    target = named_target(d, modified)
    classes = []
    for c, cls in enumerate(base.classes):
        b = d.rung[c]
        classes.append(ClassResult(
            index=c, name=cls.name, from_checkpoint=True, asr=rungs_stats[b][c].asr, base_rate=0.1, final_loss=rungs_stats[b][c].final_loss, clean_loss=2.0,
            statistic=d.statistic[b][c], anomaly=d.score[c], status=d.status[c], trigger_linf=eps[b], epsilon=eps[b], ref_clean_loss=2.0,
            rungs=[RungResult(epsilon=e, asr=rungs_stats[r][c].asr, final_loss=rungs_stats[r][c].final_loss, ref_asr=rungs_stats[r][c].ref_asr, ref_final_loss=1.0, ref_cross_loss=1.0, statistic=d.statistic[r][c], anomaly=d.anomaly[r][c]) for r, e in enumerate(eps)],
        ))
    encoder = base.encoder
    if modified:
        change = TensorChange(name="visual.proj", max_abs=0.25, rel_l2=0.01)
        encoder = EncoderInfo(status="modified", reference="pub.safetensors", n_tensors=40, n_changed=1, max_rel_l2=0.01, changed=[change])
    saved = base.model_copy(update={
        "classes": classes, "verdict": d.verdict, "target_index": target, "target_class": None if target is None else classes[target].name, "encoder": encoder,
        "detection": Detection(statistic=det.statistic, k=det.k, min_asr=det.min_asr, min_asr_gain=det.min_asr_gain, extreme=det.extreme, median=0.0, mad=0.0, epsilons=list(eps), reference="published"),
    })
    return saved, policy


def unverified_ladder_result(folder: Path, *, gain: float = 30.0, answer: str = "warn"):
    """make_ladder_result's scan as it reads without a published reference (an embedded tower,
    no --reference-weights): no ref_* values, reference none, encoder unverified, the ladder's
    classes still scored by the reference statistic (rescore or bench re-decide it)."""
    from ci_gate.result import EncoderInfo

    result, _ = make_ladder_result(folder, gain=gain)
    blank = {"ref_asr": None, "ref_final_loss": None, "ref_cross_loss": None}
    classes = [c.model_copy(update={"ref_clean_loss": None, "rungs": [r.model_copy(update=blank) for r in c.rungs]}) for c in result.classes]
    det = result.detection.model_copy(update={"reference": "none", "min_asr_gain": None, "unverified_towers": answer})
    return result.model_copy(update={"classes": classes, "detection": det, "encoder": EncoderInfo(status="unverified")})
