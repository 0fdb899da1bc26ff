"""``ci-gate bench speed``: the fast inversion against the straightforward one, in one process.

Both run on the same random-weight model and the same pool, one after the other: the reference
(``invert_reference``: one class at a time, 77-token text through open_clip's own blocks, fp32)
and the fast path (``invert``: batched classes, truncated shared-prefix text, cached features,
optional autocast). The report gives the time ratio, the largest differences in the per-class
statistics and anomaly scores, whether the verdict and target agree, peak memory of each, and a
FLOP count with the achieved fraction of the device's FLOP floor.

Kept apart from ``speed.py`` (the typer command) because ``ci-gate --help`` must not import torch.
"""

from __future__ import annotations

import contextlib
import json
import platform
import resource
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from ci_gate.checkpoint.format import OPENAI_MEAN, OPENAI_STD, LearnerSpec
from ci_gate.device import pick_device
from ci_gate.inversion import ClassTrigger, InversionSettings, base_rates, invert, invert_reference
from ci_gate.inversion.losses import target_loss
from ci_gate.inversion.memory import activation_bytes_per_class, choose_class_batch
from ci_gate.inversion.optimize import _perturbed_logits
from ci_gate.io import atomic_write_text
from ci_gate.model.classifier import PromptedClassifier
from ci_gate.model.factory import build_classifier, new_learner
from ci_gate.model.small import SMALL_CONFIGS, embedded_backbone, random_clip_state, small_config
from ci_gate.policy import DetectionPolicy
from ci_gate.scoring import ClassStats, Decision, decide

Log = Callable[[str], None]
MODELS = (*SMALL_CONFIGS, "ViT-B-16")
DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}

# Real class names with 1 to 4 BPE tokens (29 x 1, 29 x 2, 5 x 3, 1 x 4: about ImageNet's mix),
# interleaved by length so any prefix of the list spans several EOS positions, as real label
# sets do (the fast path groups classes by EOS position). Beyond the list: "class <i>".
CANDIDATE_NAMES = (
    "airplane", "bullfrog", "fire salamander", "boa constrictor", "automobile", "tailed frog",
    "trilobite", "bird", "american alligator", "spiny lobster", "cat", "black widow", "cockroach",
    "deer", "tarantula", "bighorn sheep", "dog", "centipede", "frog", "brain coral", "horse",
    "sea slug", "ship", "american lobster", "truck", "black stork", "goldfish", "king penguin",
    "scorpion", "albatross", "goose", "dugong", "koala", "yorkshire terrier", "jellyfish",
    "golden retriever", "snail", "labrador retriever", "slug", "german shepherd", "chihuahua",
    "standard poodle", "cougar", "tabby cat", "lion", "persian cat", "ladybug", "egyptian cat",
    "fly", "brown bear", "bee", "walking stick", "grasshopper", "monarch butterfly", "mantis",
    "sulphur butterfly", "dragonfly", "sea cucumber", "hog", "guinea pig", "ox", "gazelle", "bison",
    "arabian camel",
)  # fmt: skip

# Dense tensor-core peaks from the vendors' datasheets (no sparsity), TFLOP/s per GPU. "fp32" is
# plain FP32 (PyTorch leaves TF32 matmuls off by default).
GPU_PEAK_TFLOPS = {
    "H200": {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0},
    "H100 PCIe": {"bf16": 756.0, "fp16": 756.0, "fp32": 51.0},
    "H100": {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0},
    "A100": {"bf16": 312.0, "fp16": 312.0, "fp32": 19.5},
    "L40S": {"bf16": 362.0, "fp16": 362.0, "fp32": 91.6},
}


def candidate_names(n: int) -> list[str]:
    return [CANDIDATE_NAMES[i] if i < len(CANDIDATE_NAMES) else f"class {i}" for i in range(n)]


def model_config(model: str) -> dict:
    if model in SMALL_CONFIGS:
        return small_config(model)
    import open_clip

    cfg = open_clip.get_model_config(model)
    if cfg is None:
        raise ValueError(f"unknown model {model!r}; expected one of {', '.join(MODELS)}")
    return {k: v for k, v in cfg.items() if k in ("embed_dim", "vision_cfg", "text_cfg")}


def random_classifier(model: str, kind: str, n_classes: int, seed: int = 0, autocast_dtype: torch.dtype | None = None) -> PromptedClassifier:
    """A prompted classifier with random (seeded) backbone and learner weights."""
    cfg = model_config(model)
    _, backbone = embedded_backbone(cfg, random_clip_state(cfg, seed))
    names = candidate_names(n_classes)
    learner = new_learner(backbone, LearnerSpec(kind=kind, class_names=names), seed=seed)
    size = cfg["vision_cfg"]["image_size"]
    return build_classifier(backbone, kind, learner, names, 4, size, OPENAI_MEAN, OPENAI_STD, autocast_dtype=autocast_dtype)


def random_pool(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """Smooth random images in [0, 1] (upsampled noise, closer to photos than white noise)."""
    gen = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, max(1, size // 4), max(1, size // 4), generator=gen)
    return torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)


# -- peak memory -------------------------------------------------------------------------------


def _proc_status(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _trim_heap() -> None:
    """Hand freed heap back to the OS (glibc), so memory the previous run freed but malloc kept
    does not hide in the baseline and make the next run's peak look smaller."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


@dataclass
class PeakMemory:
    method: str = ""
    peak_bytes: int | None = None


@contextlib.contextmanager
def peak_memory(device: torch.device) -> Iterator[PeakMemory]:
    """Peak memory of the block above what was in use when it started.

    CUDA: ``torch.cuda.max_memory_allocated`` (tensors only). Linux CPU: the resident-set
    high-water mark (VmHWM), reset through /proc/self/clear_refs, minus the resident set at the
    start after glibc's malloc_trim (the whole process: tensors, allocator caches, Python
    objects). Elsewhere: the growth of
    ``ru_maxrss``, which only shows a peak above every earlier one in the process.
    """
    out = PeakMemory()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        yield out
        torch.cuda.synchronize(device)
        out.method, out.peak_bytes = "cuda max_memory_allocated", torch.cuda.max_memory_allocated(device) - base
        return
    _trim_heap()
    rss = _proc_status("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        resettable = rss is not None
    except OSError:
        resettable = False
    if resettable:
        yield out
        out.method, out.peak_bytes = "VmHWM - VmRSS (Linux, reset via clear_refs)", (_proc_status("VmHWM") or 0) - rss
        return
    scale = 1 if platform.system() == "Darwin" else 1024
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
    yield out
    out.method = "ru_maxrss growth (lower bound)"
    out.peak_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale - before


# -- FLOPs -------------------------------------------------------------------------------------


def flops_per_image_class(clf: PromptedClassifier, images: torch.Tensor, settings: InversionSettings, k: int, n_images: int = 2) -> tuple[float, float]:
    """Counted matmul/conv/attention FLOPs of one optimisation step (forward + backward) and of one
    evaluation forward, per (image, class) pair. The scan's total is linear in both, so a few
    images suffice (the only shared work, layer 0's class-token projections, is negligible)."""
    device = clf.mean.device
    x = images[:n_images].to(device)
    b = x.shape[0]
    deltas = torch.zeros(k, *x.shape[1:], device=device, requires_grad=True)
    tgt = torch.arange(k, device=device) % clf.n_classes
    with FlopCounterMode(display=False) as train:
        logits = _perturbed_logits(clf, x, deltas)
        loss = target_loss(settings.loss, logits.reshape(k * b, -1), tgt.repeat_interleave(b)).view(k, b).mean(1).sum()
        loss.backward()
    with torch.no_grad(), FlopCounterMode(display=False) as evaluation:
        _perturbed_logits(clf, x, deltas.detach())
    return train.get_total_flops() / (k * b), evaluation.get_total_flops() / (k * b)


def scan_flops(train_per: float, eval_per: float, n_images: int, n_classes: int, epochs: int) -> float:
    """Optimisation (every image, class and epoch), the final evaluation (every image and class),
    and the clean base-rate pass (every image, all classes at once: one evaluation unit)."""
    return n_images * n_classes * epochs * train_per + n_images * n_classes * eval_per + n_images * eval_per


def cpu_gemm_tflops(seconds: float = 0.3, size: int = 1024) -> float:
    """Measured dense fp32 GEMM throughput with the current thread count (the CPU's practical peak)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        n += 1
    return 2 * size**3 * n / (time.perf_counter() - t0) / 1e12


def peak_tflops(device: torch.device, dtype: str, override: float | None) -> tuple[float | None, str]:
    if override:
        return override, "given (--peak-tflops)"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, table in GPU_PEAK_TFLOPS.items():  # "H100 PCIe" before "H100"
            if key in name:
                return table[dtype], f"datasheet {key} {dtype} dense"
        return None, f"unknown GPU {name!r}: pass --peak-tflops"
    return cpu_gemm_tflops(), "measured fp32 GEMM 1024^3 on this CPU"


# -- the two runs ------------------------------------------------------------------------------


@dataclass
class RunResult:
    seconds: float
    peak_bytes: int | None
    memory_method: str
    triggers: list[ClassTrigger]
    stats: list[ClassStats]
    decision: Decision
    class_batch: int = 1


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _score(clf, images, triggers, detection: DetectionPolicy) -> tuple[list[ClassStats], Decision]:
    rates, clean = base_rates(clf, images)
    stats = [ClassStats(asr=t.asr, base_rate=float(rates[t.index]), final_loss=t.final_loss, clean_loss=float(clean[t.index])) for t in triggers]
    return stats, decide(stats, detection.statistic, detection.k, detection.min_asr, detection.mad_floor)


def run_reference(clf: PromptedClassifier, images: torch.Tensor, settings: InversionSettings, detection: DetectionPolicy) -> RunResult:
    device = clf.mean.device
    with peak_memory(device) as mem:
        t0 = time.perf_counter()
        triggers = invert_reference(clf, images, settings)
        with clf.running(fast=False, autocast_dtype=None):  # base rates the straightforward way too
            stats, decision = _score(clf, images, triggers, detection)
        _sync(device)
        seconds = time.perf_counter() - t0
    return RunResult(seconds, mem.peak_bytes, mem.method, triggers, stats, decision)


def run_fast(clf: PromptedClassifier, images: torch.Tensor, settings: InversionSettings, detection: DetectionPolicy, class_batch: int) -> RunResult:
    device = clf.mean.device
    with peak_memory(device) as mem:
        t0 = time.perf_counter()
        triggers = invert(clf, images, settings, class_batch=class_batch)
        stats, decision = _score(clf, images, triggers, detection)
        _sync(device)
        seconds = time.perf_counter() - t0
    return RunResult(seconds, mem.peak_bytes, mem.method, triggers, stats, decision, class_batch)


# -- the benchmark -----------------------------------------------------------------------------


@dataclass(frozen=True)
class SpeedOptions:
    model: str = "small-64"
    learner: str = "cocoop"
    classes: int = 50
    pool_size: int = 256
    batch_size: int = 32
    device: str = "cpu"
    dtype: str = "fp32"
    class_batch: int | None = None  # None: choose_class_batch
    seed: int = 0
    reference: bool = True
    threads: int = 0
    peak_tflops: float | None = None
    run: bool = True  # False: only count FLOPs and give the floor, without running either scan


@dataclass
class SpeedReport:
    options: dict
    environment: dict
    fast: dict | None
    reference: dict | None
    comparison: dict | None
    flops: dict
    per_class: list[dict] = field(default_factory=list)


def _run_summary(run: RunResult) -> dict:
    return {
        "seconds": run.seconds,
        "peak_memory_bytes": run.peak_bytes,
        "memory_method": run.memory_method,
        "verdict": run.decision.verdict,
        "target": run.decision.target,
        "class_batch": run.class_batch,
    }


def compare(ref: RunResult, fast: RunResult) -> dict:
    """Largest per-class differences between the two runs, and whether the verdicts agree."""

    def gap(a, b) -> float:
        return max(abs(x - y) for x, y in zip(a, b))

    return {
        "time_ratio": ref.seconds / fast.seconds,
        "max_anomaly_diff": gap(ref.decision.anomaly, fast.decision.anomaly),
        "max_statistic_diff": gap(ref.decision.statistic, fast.decision.statistic),
        "max_asr_diff": gap([s.asr for s in ref.stats], [s.asr for s in fast.stats]),
        "max_final_loss_diff": gap([s.final_loss for s in ref.stats], [s.final_loss for s in fast.stats]),
        "max_trigger_diff": max(float((a.delta - b.delta).abs().max()) for a, b in zip(ref.triggers, fast.triggers)),
        "same_verdict": ref.decision.verdict == fast.decision.verdict,
        "same_target": ref.decision.target == fast.decision.target,
        "same_status": ref.decision.status == fast.decision.status,
    }


def run_speed_bench(opts: SpeedOptions, log: Log = lambda _: None) -> SpeedReport:
    if opts.threads:
        torch.set_num_threads(opts.threads)
    device = pick_device(opts.device, source="--device")
    clf = random_classifier(opts.model, opts.learner, opts.classes, seed=opts.seed, autocast_dtype=DTYPES[opts.dtype]).to(device).tune_for(device)
    clf.freeze()
    images = random_pool(opts.pool_size, clf.image_size, seed=opts.seed + 1)
    settings = InversionSettings(batch_size=opts.batch_size, seed=opts.seed)
    # The two runs differ only in the delivered model's inversion; the clean reference (ref_*
    # statistics) would be the same zero-shot inversion in both, so the verdicts are compared on
    # a statistic of the model's own inversion (neg_loss, the default these numbers were first
    # measured with).
    detection = DetectionPolicy(statistic="neg_loss", k=2.0)
    class_batch = opts.class_batch or choose_class_batch(clf, settings.batch_size, opts.classes, device)
    log(f"{opts.model} {opts.learner}, {opts.classes} classes, {opts.pool_size} images, {device}, {opts.dtype}, class batch {class_batch}")

    fast = ref = None
    if opts.run:
        fast = run_fast(clf, images, settings, detection, class_batch)
        log(f"fast: {fast.seconds:.2f} s, verdict {fast.decision.verdict}")
    if opts.run and opts.reference:
        ref = run_reference(clf, images, settings, detection)
        log(f"reference: {ref.seconds:.2f} s, verdict {ref.decision.verdict}")

    # FLOPs per (image, class), counted on one step of each path, then scaled to the whole scan.
    # The count does not depend on the dtype; on a CPU it is taken in fp32 (CPU bf16 kernels are slow).
    with clf.running(fast=True, autocast_dtype=None if device.type == "cpu" else clf.autocast_dtype):
        fast_train, fast_eval = flops_per_image_class(clf, images, settings, min(class_batch, opts.classes, 2))
    fast_total = scan_flops(fast_train, fast_eval, opts.pool_size, opts.classes, settings.epochs)
    ref_total = None
    if opts.reference:
        with clf.running(fast=False, autocast_dtype=None):
            ref_train, ref_eval = flops_per_image_class(clf, images, settings, 1, n_images=1)
        ref_total = scan_flops(ref_train, ref_eval, opts.pool_size, opts.classes, settings.epochs)
    peak, peak_source = peak_tflops(device, opts.dtype, opts.peak_tflops)
    floor_s = fast_total / (peak * 1e12) if peak else None
    flops = {
        "fast_total": fast_total,
        "fast_per_image_class_step": fast_train,
        "reference_total": ref_total,
        "peak_tflops": peak,
        "peak_source": peak_source,
        "floor_seconds": floor_s,
        "achieved_fraction_of_floor": floor_s / fast.seconds if floor_s and fast else None,
        "achieved_tflops": fast_total / fast.seconds / 1e12 if fast else None,
        "counted": "matmul, convolution and attention FLOPs (torch.utils.flop_counter); elementwise ops not counted",
    }
    env = {
        "torch": torch.__version__,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "class_batch": class_batch,
        "memory_estimate_per_class_bytes": activation_bytes_per_class(clf, settings.batch_size),
    }
    per_class = []
    for i, t in enumerate(fast.triggers if fast else []):
        row = {"class": clf.class_names[t.index], "fast_asr": t.asr, "fast_anomaly": fast.decision.anomaly[i], "fast_status": fast.decision.status[i]}
        if ref is not None:
            row.update(reference_asr=ref.triggers[i].asr, reference_anomaly=ref.decision.anomaly[i], reference_status=ref.decision.status[i])
        per_class.append(row)
    return SpeedReport(
        options=asdict(opts),
        environment=env,
        fast=None if fast is None else _run_summary(fast),
        reference=None if ref is None else _run_summary(ref),
        comparison=None if ref is None or fast is None else compare(ref, fast),
        flops=flops,
        per_class=per_class,
    )


def _mib(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 2**20:.0f} MiB"


def to_markdown(rep: SpeedReport) -> str:
    o, f, r, c, fl = rep.options, rep.fast, rep.reference, rep.comparison, rep.flops
    lines = [
        "# ci-gate bench speed",
        "",
        f"{o['model']} (random weights), {o['learner']}, {o['classes']} classes, {o['pool_size']} pool images, "
        f"batch {o['batch_size']}, {rep.environment['device']} ({rep.environment['device_name']}, {rep.environment['threads']} threads), "
        f"fast path {o['dtype']}, class batch {rep.environment['class_batch']}, torch {rep.environment['torch']}.",
        "",
    ]
    if f is None:
        lines += ["**FLOP count only: neither scan was run (--flops-only).**", ""]
    else:
        lines += ["| run | time (s) | peak memory | verdict | target |", "|---|---:|---:|---|---|"]
        if r is not None:
            lines.append(f"| reference | {r['seconds']:.2f} | {_mib(r['peak_memory_bytes'])} | {r['verdict']} | {r['target']} |")
        lines.append(f"| fast | {f['seconds']:.2f} | {_mib(f['peak_memory_bytes'])} | {f['verdict']} | {f['target']} |")
        lines += ["", f"Peak memory: {f['memory_method']}.", ""]
    if c is not None:
        lines += [
            f"- speed-up (reference time / fast time): **{c['time_ratio']:.1f}x**",
            f"- same verdict: **{c['same_verdict']}**, same target: {c['same_target']}, same per-class status: {c['same_status']}",
            f"- largest differences: anomaly score {c['max_anomaly_diff']:.2e}, statistic {c['max_statistic_diff']:.2e}, "
            f"ASR {c['max_asr_diff']:.2e}, final loss {c['max_final_loss_diff']:.2e}, trigger {c['max_trigger_diff']:.2e}",
        ]
    lines.append(f"- FLOPs (fast): {fl['fast_total']:.3e}" + ("" if fl["reference_total"] is None else f"; reference: {fl['reference_total']:.3e}"))
    if fl["floor_seconds"] is not None:
        floor = f"- FLOP floor at {fl['peak_tflops']:.3g} TFLOP/s ({fl['peak_source']}): {fl['floor_seconds']:.3g} s"
        if fl["achieved_fraction_of_floor"] is not None:
            floor += f"; achieved {fl['achieved_fraction_of_floor']:.1%} of it ({fl['achieved_tflops']:.3g} TFLOP/s)"
        lines.append(floor)
    else:
        lines.append(f"- FLOP floor: {fl['peak_source']}")
    lines.append(f"- counted: {fl['counted']}")
    return "\n".join(lines) + "\n"


def write_report(rep: SpeedReport, out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    js, md = out / "speed.json", out / "speed.md"
    atomic_write_text(js, json.dumps(asdict(rep), indent=2) + "\n")
    atomic_write_text(md, to_markdown(rep))
    return js, md
