"""The demo pipeline: build a small CLIP, tune a clean and a backdoored CoCoOp model, verify both."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from open_clip.model import CLIP
from open_clip.tokenizer import SimpleTokenizer
from safetensors.torch import save as st_save

from ci_gate.accuracy import clean_accuracy, trigger_asr
from ci_gate.artifacts import save_image
from ci_gate.attacks.triggers import LearnedTrigger
from ci_gate.checkpoint.format import LearnerSpec, Preprocessing
from ci_gate.demo.synthetic import COLOURS, colours_dataset, ood_pool
from ci_gate.io import atomic_write_bytes
from ci_gate.model.architecture import write_config_file
from ci_gate.model.small import embedded_backbone, small_config
from ci_gate.policy import load_policy
from ci_gate.result import Result
from ci_gate.report.folder import write_scan_files
from ci_gate.rng import global_rng
from ci_gate.scan import scan
from ci_gate.scan_inputs import ScanInputs
from ci_gate.tuning.pretrain import PretrainSettings, pretrain_clip, zero_shot_accuracy
from ci_gate.tuning.recipes import tune_checkpoint
from ci_gate.tuning.train import TuneSettings

CONFIG = "tiny-32"
# A purple-leaning pool is rare, so a backdoor to purple cannot hide behind a class the pool
# already drifts to. The tiny demo backbone only knows colours and is far more robust to small
# perturbations than a real CLIP, so the attacker gets a 16/255 budget to implant BadCLIP at all,
# and the scan searches the same budget.
TARGET = "purple"
ATTACK_EPSILON = 16 / 255
POOL_SIZE = 300


@dataclass
class DemoOutcome:
    name: str
    expected: str
    result: Result
    out_dir: Path
    clean_accuracy: float
    attack_success: float | None

    @property
    def correct(self) -> bool:
        if self.result.verdict != self.expected:
            return False
        return self.expected == "clean" or self.result.target_class == TARGET


def run_demo(out: Path, seed: int = 0, log: Callable[[str], None] = print) -> list[DemoOutcome]:
    t0 = time.perf_counter()
    cfg = small_config(CONFIG)
    size = cfg["vision_cfg"]["image_size"]

    log("1/4 generating data and pretraining a small CLIP on it")
    corpus = colours_dataset(per_class=160, size=size, seed=seed)
    tuning = colours_dataset(per_class=48, size=size, seed=seed + 1)
    held_out = colours_dataset(per_class=40, size=size, seed=seed + 2)
    with global_rng(seed):  # open_clip's CLIP draws its initial weights from the global generator
        clip = CLIP(**copy.deepcopy(cfg))
    tok = SimpleTokenizer()
    pretrain_clip(clip, tok, corpus, PretrainSettings(epochs=5, lr=2e-3, batch_size=64, weight_decay=0.05, seed=seed))
    state = {k: v.detach().clone() for k, v in clip.state_dict().items()}
    spec, backbone = embedded_backbone(cfg, state)
    log(f"    zero-shot accuracy on held-out images: {zero_shot_accuracy(backbone.clip, backbone.tokenizer, held_out):.1%} ({time.perf_counter() - t0:.0f}s)")

    pool_dir = out / "pool"
    _, pool_images = ood_pool(POOL_SIZE, size, seed=seed + 3)
    for i, img in enumerate(pool_images):
        save_image(pool_dir / f"{i:04d}.png", img)

    learner = LearnerSpec(kind="cocoop", class_names=list(COLOURS))
    pre = Preprocessing(image_size=size)
    target = list(COLOURS).index(TARGET)
    plans = [
        ("clean", None, TuneSettings(epochs=10, lr=5e-3, seed=seed)),
        ("backdoored", LearnedTrigger(size, epsilon=ATTACK_EPSILON, seed=seed + 1), TuneSettings(epochs=10, lr=5e-3, seed=seed, poison_rate=0.2, target=target, trigger_lr=1e-2)),
    ]
    # The backbone the demo "publishes": both models embed it, and the scans get it as the
    # published weights (verify --reference-weights), as a user who downloaded the backbone would.
    published = out / "published-backbone.safetensors"
    atomic_write_bytes(published, st_save({k: v.contiguous() for k, v in state.items()}))
    write_config_file(out, cfg)  # its architecture, as open_clip's hub layout ships it beside the weights
    # the bundled default policy, unchanged: the gate does not know the attacker's 16/255 budget
    policy, _ = load_policy("default")
    outcomes = []
    for step, (name, attack, settings) in enumerate(plans, start=2):
        log(f"{step}/4 prompt-tuning the {name} CoCoOp model" + (f" (BadCLIP backdoor, target '{TARGET}')" if attack is not None else ""))
        model_dir = out / name
        tuned = tune_checkpoint(
            backbone, spec, learner, pre, tuning, settings, model_dir / "model.safetensors",
            attack=attack, backbone_tensors=state, provenance={"demo": name, "seed": seed},
        )
        acc = clean_accuracy(tuned.classifier, held_out)
        asr = trigger_asr(tuned.classifier, held_out, tuned.trigger, target) if tuned.trigger is not None else None
        log(f"    clean accuracy {acc:.1%}" + (f", attack success {asr:.1%}" if asr is not None else ""))
        found = scan(ScanInputs(checkpoint=tuned.path, policy=policy, pool=str(pool_dir), reference_weights=published))
        assert found is not None  # single-process scan
        write_scan_files(found, model_dir / "report")
        outcomes.append(DemoOutcome(name, "clean" if attack is None else "backdoor", found.result, model_dir / "report", acc, asr))
    log(f"4/4 done in {time.perf_counter() - t0:.0f}s")
    return outcomes
