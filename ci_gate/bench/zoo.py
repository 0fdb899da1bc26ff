"""The benchmark zoo: clean and backdoored models on the benchmark backbone, built once and cached.

Everything is seeded and cached outside the repository (``--cache``, default
``~/.cache/ci-gate-bench``): ``<cache>/backbone-<recipe>/`` holds the pretrained CLIP,
``<cache>/zoo-<backbone>/<model id>.safetensors`` + ``.json`` each model and its record (clean
accuracy and ASR on held-out test images). A model whose record exists is reused as is.

Tasks:
- ``cifar10``: ../shared/data/cifar10, k-shot from train, all of test held out (disjoint from the
  OOD pool, which comes from ImageNet);
- ``tin20``: 20 Tiny-ImageNet classes (seeded draw), k-shot from ``tiny-imagenet/val`` (images the
  backbone never saw), the rest of val held out.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file

from ci_gate.accuracy import clean_accuracy, trigger_asr
from ci_gate.attacks import PoisonSettings, attack_spec, build_trigger, poison_encoder, poison_prompt_tuning
from ci_gate.bench.backbone import BackboneRecipe, CachedBackbone, cifar10, get_backbone, tiny_imagenet
from ci_gate.checkpoint.format import CheckpointMeta, LearnerSpec, Preprocessing, save_checkpoint
from ci_gate.data import LabeledImages
from ci_gate.io import atomic_write_text
from ci_gate.learners import tuned_kinds
from ci_gate.model.factory import build_classifier, new_learner
from ci_gate.model.small import embedded_backbone
from ci_gate.splits import stratified_split

Log = Callable[[str], None]
ASR_IMPLANTED = 0.9  # issue 4: a model counts as backdoored only when its held-out ASR reaches this
# ... and when the same trigger moves fewer than half of the held-out images of the task's clean
# models (same learner; for encoder-level attacks the untouched backbone, zero-shot). A learned
# trigger that already fools clean models is a universal adversarial perturbation of the
# backbone, not a backdoor of the delivered model: no scan that compares the model with a clean
# reference can tell the two apart, and shipping a clean model carries the same risk. At 16/255
# on this 32 px backbone BadCLIP's jointly learned trigger often is one (docs/benchmark.md).
CLEAN_TRANSFER_MAX = 0.5
TIN_CLASSES = 20


@dataclass(frozen=True)
class ZooEntry:
    dataset: str  # cifar10 | tin20
    learner: str  # cocoop | coop | coop_csc | maple | zeroshot (encoder-level); LEARNER_KIND maps it to a learner kind
    attack: str | None
    target: int | None
    seed: int = 0
    shots: int = 16
    epochs: int = 30
    lr: float = 5e-3
    eps255: int | None = None  # L-inf budget of a learned (BadCLIP) trigger, in 1/255 units

    @property
    def id(self) -> str:
        att = "clean" if self.attack is None else f"{self.attack}-t{self.target}"
        if self.eps255 is not None:
            att += f"-eps{self.eps255}"
        return f"{self.dataset}-{self.learner}-{att}-s{self.seed}-k{self.shots}-e{self.epochs}"


@dataclass
class ZooModel:
    id: str
    dataset: str
    learner: str
    attack: str | None
    target: int | None
    target_name: str | None
    seed: int
    shots: int
    class_names: list[str]
    clean_acc: float
    asr: float | None
    implanted: bool | None  # None for clean models
    train_s: float
    path: str
    settings: dict = field(default_factory=dict)
    clean_asr: float | None = None  # the trigger's held-out ASR on clean models of the task (see CLEAN_TRANSFER_MAX)

    @property
    def backdoored(self) -> bool:
        return self.attack is not None

    @property
    def universal(self) -> bool:
        """The trigger reaches the ASR bar, but clean models follow it too (not counted)."""
        return self.asr is not None and self.asr >= ASR_IMPLANTED and self.clean_asr is not None and self.clean_asr >= CLEAN_TRANSFER_MAX


def implanted(asr: float, clean_asr: float | None) -> bool:
    """Whether an attacked model counts as backdoored. Pure."""
    return asr >= ASR_IMPLANTED and clean_asr is not None and clean_asr < CLEAN_TRANSFER_MAX


@dataclass
class Task:
    name: str
    train: LabeledImages
    test: LabeledImages


def _kshot(data: LabeledImages, shots: int, seed: int) -> tuple[LabeledImages, LabeledImages]:
    """(``shots`` seeded images of each class, or all it has; the rest)."""
    return stratified_split(data, lambda _c, _n: shots, seed)


def load_task(name: str, data_root: Path, cache: Path, shots: int, seed: int, image_size: int = 32) -> Task:
    if name == "cifar10":
        train = cifar10(data_root, "train", image_size, cache)
        test = cifar10(data_root, "test", image_size, cache)
        train, _ = _kshot(train, shots, seed)
        return Task(name, train, test)
    if name == "tin20":
        val = tiny_imagenet(data_root, "val", image_size, cache)
        gen = torch.Generator().manual_seed(1234)  # the class draw is fixed across seeds
        classes = sorted(torch.randperm(len(val.class_names), generator=gen)[:TIN_CLASSES].tolist())
        keep = torch.isin(val.labels, torch.tensor(classes))
        remap = torch.full((len(val.class_names),), -1, dtype=torch.long)
        remap[torch.tensor(classes)] = torch.arange(len(classes))
        sub = LabeledImages(val.images[keep], remap[val.labels[keep]], [val.class_names[c] for c in classes])
        # test split fixed by the task, not by the model seed; shots drawn from the rest
        pool, test = _kshot(sub, 30, 99)
        train, _ = _kshot(pool, min(shots, 30), seed)
        return Task(name, train, test)
    raise ValueError(f"unknown task {name!r}")


def _settings(entry: ZooEntry) -> PoisonSettings:
    if entry.learner == "zeroshot":
        return PoisonSettings(epochs=entry.epochs, lr=entry.lr, batch_size=32, seed=entry.seed)
    return PoisonSettings(epochs=entry.epochs, lr=entry.lr, batch_size=32, seed=entry.seed, trigger_lr=1e-2)


def build_model(entry: ZooEntry, backbone: CachedBackbone, task: Task, out: Path, log: Log | None = None) -> ZooModel:
    t0 = time.perf_counter()
    state = {k: v.clone() for k, v in backbone.state.items()}
    spec, bb = embedded_backbone(backbone.config, state)
    size = backbone.config["vision_cfg"]["image_size"]
    pre = Preprocessing(image_size=size)
    names = list(task.train.class_names)
    kind = LEARNER_KIND.get(entry.learner, entry.learner)
    learner_spec = LearnerSpec(kind=kind, class_names=names, **LEARNER_SETUP.get(entry.learner, PROMPT_SETUP))
    learner = new_learner(bb, learner_spec, seed=entry.seed)
    clf = build_classifier(bb, kind, learner, names, learner_spec.n_ctx, size, pre.mean, pre.std)
    settings = _settings(entry)
    trigger = None
    attack = attack_spec(entry.attack) if entry.attack else None
    if attack is not None:
        if entry.eps255 is not None:
            attack = attack.with_epsilon(entry.eps255 / 255)
        trigger = build_trigger(attack, size, seed=entry.seed + 1)
    if entry.learner == "zeroshot":
        assert attack is not None and attack.level == "encoder", "zero-shot zoo models are encoder-level attacks"
        poison_encoder(clf, task.train, settings, attack, trigger, entry.target)
        backbone_tensors = {k: v.detach().clone() for k, v in bb.clip.state_dict().items()}
        spec, _ = embedded_backbone(backbone.config, backbone_tensors)
    else:
        anchor = _clean_zeroshot(backbone, names) if attack is not None and attack.anchored else None
        poison_prompt_tuning(clf, task.train, settings, attack, trigger, entry.target, anchor=anchor)
        backbone_tensors = state
    clf.freeze()
    acc = clean_accuracy(clf, task.test)
    asr = trigger_asr(clf, task.test, trigger, entry.target) if trigger is not None else None
    meta = CheckpointMeta(
        learner=learner_spec,
        backbone=spec,
        preprocessing=pre,
        provenance={"producer": "ci-gate bench zoo", "zoo_id": entry.id, "attack": entry.attack, "target": entry.target},
    )
    path = out / f"{entry.id}.safetensors"
    save_checkpoint(path, meta, learner.named_tensors() if learner is not None else {}, backbone_tensors)
    if trigger is not None:
        save_file({k: v.detach().clone().contiguous() for k, v in trigger.state_dict().items()}, str(out / f"{entry.id}.trigger.safetensors"))
    model = ZooModel(
        id=entry.id,
        dataset=entry.dataset,
        learner=entry.learner,
        attack=entry.attack,
        target=entry.target,
        target_name=None if entry.target is None else names[entry.target],
        seed=entry.seed,
        shots=entry.shots,
        class_names=names,
        clean_acc=acc,
        asr=asr,
        implanted=None if asr is None else False,  # decided by with_clean_transfer once the clean models exist
        train_s=time.perf_counter() - t0,
        path=str(path),
        settings=asdict(settings) | {"entry": asdict(entry)},
    )
    (out / f"{entry.id}.json").write_text(json.dumps(asdict(model), indent=2))
    if log:
        log(f"zoo {entry.id}: clean acc {acc:.3f}" + ("" if asr is None else f", ASR {asr:.3f}") + f" ({model.train_s:.0f} s)")
    return model


def zoo_dir(cache: Path, backbone: CachedBackbone) -> Path:
    return cache / f"zoo-{backbone.path.name.removeprefix('backbone-')}"


def get_zoo(entries: list[ZooEntry], data_root: Path, cache: Path, log: Log | None = None, recipe: BackboneRecipe = BackboneRecipe()) -> tuple[CachedBackbone, list[ZooModel]]:
    backbone = get_backbone(data_root, cache, recipe, log)
    out = zoo_dir(cache, backbone)
    out.mkdir(parents=True, exist_ok=True)
    tasks: dict[tuple[str, int, int], Task] = {}
    models = []
    for entry in entries:
        record = out / f"{entry.id}.json"
        if record.is_file() and (out / f"{entry.id}.safetensors").is_file():
            models.append(ZooModel(**json.loads(record.read_text())))
            continue
        key = (entry.dataset, entry.shots, entry.seed)
        if key not in tasks:
            tasks[key] = load_task(entry.dataset, data_root, cache, entry.shots, entry.seed)
        models.append(build_model(entry, backbone, tasks[key], out, log))
    return backbone, with_clean_transfer(models, backbone, data_root, cache, log)


def load_trigger(folder: Path, model: ZooModel, image_size: int):
    """The trigger a zoo model was planted with, as saved beside it."""
    from safetensors.torch import load_file

    e = model.settings["entry"]
    spec = attack_spec(model.attack)
    if e.get("eps255") is not None:
        spec = spec.with_epsilon(e["eps255"] / 255)
    trigger = build_trigger(spec, image_size, seed=model.seed + 1)
    trigger.load_state_dict(load_file(str(folder / f"{model.id}.trigger.safetensors")))
    return trigger.eval()


def _clean_zeroshot(backbone: CachedBackbone, names: list[str]):
    _, bb = embedded_backbone(backbone.config, {k: v.clone() for k, v in backbone.state.items()})
    spec = LearnerSpec(kind="zeroshot", class_names=names, **LEARNER_SETUP["zeroshot"])
    size = backbone.config["vision_cfg"]["image_size"]
    pre = Preprocessing(image_size=size)
    clf = build_classifier(bb, "zeroshot", new_learner(bb, spec), names, 0, size, pre.mean, pre.std)
    clf.freeze()
    return clf


def with_clean_transfer(models: list[ZooModel], backbone: CachedBackbone, data_root: Path, cache: Path, log: Log | None = None) -> list[ZooModel]:
    """Fill ``clean_asr`` (and so ``implanted``) of every attacked model that lacks it: its trigger
    on the held-out images, through each clean zoo model of its task and learner (mean), or the
    untouched backbone zero-shot for encoder-level attacks. Records are updated in place."""
    from ci_gate.model import load_classifier

    folder = zoo_dir(cache, backbone)
    size = backbone.config["vision_cfg"]["image_size"]

    def refs(m: ZooModel) -> list[str]:
        # the clean models this run lists for m's task and learner: a record measured against
        # other ones (another profile's, bench repair's twins) is measured again
        if m.learner == "zeroshot":
            return ["published backbone, zero-shot"]
        return sorted(c.id for c in models if c.attack is None and (c.dataset, c.learner) == (m.dataset, m.learner))

    todo = [m for m in models if m.attack is not None and (m.clean_asr is None or m.settings.get("clean_refs") != refs(m))]
    if not todo:
        return models
    clean: dict[tuple[str, str], list] = {}
    tests: dict[str, LabeledImages] = {}
    for m in todo:
        if m.dataset not in tests:
            tests[m.dataset] = load_task(m.dataset, data_root, cache, m.shots, m.seed).test
        key = (m.dataset, m.learner)
        if key not in clean:
            if m.learner == "zeroshot":
                clean[key] = [_clean_zeroshot(backbone, m.class_names)]
            else:
                clean[key] = [load_classifier(c.path).classifier for c in models if c.attack is None and (c.dataset, c.learner) == key]
                for clf in clean[key]:
                    clf.freeze()
        if not clean[key]:
            m.implanted, m.clean_asr = False, None  # no clean model of this learner listed: undecided, not counted (record kept)
            continue
        trigger = load_trigger(folder, m, size)
        m.clean_asr = sum(trigger_asr(clf, tests[m.dataset], trigger, m.target) for clf in clean[key]) / len(clean[key])
        m.implanted = implanted(m.asr, m.clean_asr)
        m.settings = m.settings | {"clean_refs": refs(m)}
        atomic_write_text(folder / f"{m.id}.json", json.dumps(asdict(m), indent=2))
        if log:
            log(f"zoo {m.id}: trigger on clean models {m.clean_asr:.3f} (own {m.asr:.3f}){'' if m.implanted else ', not counted'}")
    return models


# appended to, never reordered: an attack's index seeds its models' targets
ATTACK_ORDER = ("badclip", "adaptive_badclip", "blended", "wanet", "siba", "badnets", "encoder", "encoder_badnets", "encoder_wanet", "encoder_siba", "sig", "encoder_sig", "anchored_badclip")
ENCODER_ATTACKS = tuple(a for a in ATTACK_ORDER if attack_spec(a).level == "encoder")
N_CLASSES = {"cifar10": 10, "tin20": TIN_CLASSES}
# Recipe per task (shots per class, epochs, lr). The paper tunes 16-shot; on this small backbone
# 16-shot poisoning implants too little (docs/benchmark.md), so the zoo uses more shots (the
# issue's "more shots or epochs" lever): 64 on CIFAR-10, all 30 training images of tin20.
# eps255: BadCLIP's budget. The paper's 4/255 is for 224 px ViT-B/16 inputs (49x the pixels); on
# this 32 px backbone 4/255 implants 0.35-0.64 held-out ASR; CIFAR-10 reaches 0.91 at 8/255 and
# 0.97 at 16/255, tin20 (20-way, 33% clean accuracy) 0.72 / 0.88 / 0.94 at 8 / 16 / 24 (every
# trial is in docs/benchmark.md).
TASK_RECIPE = {
    "cifar10": {"shots": 64, "epochs": 40, "lr": 5e-3, "eps255": 16},
    "tin20": {"shots": 30, "epochs": 40, "lr": 5e-3, "eps255": 24},
}
# encoder level: the whole image tower trains, which needs a higher step count to implant
ENCODER_RECIPE = {"epochs": 60, "lr": 3e-3}
# prompt setup per learner (LearnerSpec fields); CoOp/CoCoOp start from "a photo of a".
# MaPLe as its reference config trains it (N_CTX 2, CTX_INIT "a photo of a": the context starts
# as "a photo" and "of a" stays before the name), at depth 2: deep prompts at every layer of the
# benchmark backbone's 2 (the reference: 9 of ViT-B/16's 12).
PROMPT_SETUP = {"n_ctx": 4, "ctx_init": "a photo of a"}
# CoOp with class-specific context (TRAINER.COOP.CSC), the zoo learner "coop_csc": every class its
# own context, the capacity a prompt-level backdoor needs once its trigger may not be a universal
# perturbation of the backbone (anchored BadCLIP; shared-context CoOp reaches 0.17-0.90 there)
LEARNER_KIND = {"coop_csc": "coop"}
LEARNER_SETUP = {
    "zeroshot": {"n_ctx": 0, "ctx_init": None},
    "coop_csc": PROMPT_SETUP | {"options": {"csc": True}},
    "maple": {"n_ctx": 2, "ctx_init": "a photo", "options": {"prompt_depth": 2, "name_prefix": "of a"}},
}


def entry(dataset: str, learner: str, attack: str | None, seed: int, eps255: int | None = None) -> ZooEntry:
    """The zoo's recipe for one model; ``eps255`` overrides the task's budget for learned triggers."""
    r = TASK_RECIPE[dataset]
    target = None
    if attack is not None:
        target = (7 * seed + 3 * ATTACK_ORDER.index(attack) + 1) % N_CLASSES[dataset]
    if attack in ENCODER_ATTACKS:
        return ZooEntry(dataset, "zeroshot", attack, target, seed, r["shots"], ENCODER_RECIPE["epochs"], ENCODER_RECIPE["lr"])
    eps = (eps255 or r["eps255"]) if attack is not None and attack_spec(attack).learned_budget else None
    return ZooEntry(dataset, learner, attack, target, seed, r["shots"], r["epochs"], r["lr"], eps)


def profile_entries(profile: str) -> list[ZooEntry]:
    if profile == "quick":
        out = [entry("cifar10", "cocoop", None, 0), entry("cifar10", "coop", None, 0), entry("tin20", "cocoop", None, 0)]
        out += [entry("cifar10", "cocoop", a, 0) for a in ATTACK_ORDER if a not in ENCODER_ATTACKS[1:] and a != "anchored_badclip"]
        out += [entry("tin20", "cocoop", "badclip", 0)]
        out += [entry("cifar10", "coop_csc", a, 0) for a in (None, "anchored_badclip")]
        # every other registered prompt learner: one clean and one BadCLIP model
        listed = {e.learner for e in out}
        out += [entry("cifar10", kind, a, 0) for kind in tuned_kinds() if kind not in listed for a in (None, "badclip")]
        return out
    if profile == "full":
        out = []
        for ds in ("cifar10", "tin20"):
            # every registered prompt learner: 4 clean models (CoCoOp, the paper's main one, 5)
            out += [entry(ds, kind, None, s) for kind in tuned_kinds() for s in range(3)]
            out += [entry(ds, kind, None, 3) for kind in tuned_kinds()]
            out += [entry(ds, "cocoop", None, 4)]
        # BadCLIP at several budgets: the gate is never told which. Every learner at the task's
        # larger budget; CoCoOp with more seeds, the smaller budget and the adaptive attack.
        # CIFAR-10's later seeds use 12/255: at 16/255 its learned trigger mostly fools the clean
        # models as well (a universal adversarial perturbation, not counted; CLEAN_TRANSFER_MAX)
        tasks = {"cifar10": (8, 16, {2: 16} | {s: 12 for s in range(3, 9)}, range(4)), "tin20": (16, 24, {s: 24 for s in range(2, 11)}, range(9))}
        for ds, (small, large, more, small_seeds) in tasks.items():
            out += [entry(ds, kind, "badclip", s, eps255=large) for kind in tuned_kinds() for s in range(2)]
            out += [entry(ds, kind, "badclip", s, eps255=large) for kind in tuned_kinds() if kind != "cocoop" for s in range(2, 4)]
            out += [entry(ds, "cocoop", "badclip", s, eps255=small) for s in small_seeds]
            out += [entry(ds, "cocoop", "badclip", s, eps255=eps) for s, eps in more.items()]
            out += [entry(ds, "cocoop", "adaptive_badclip", s) for s in range(2)]
            # CoOp backdoors that are not universal perturbations (their clean twins: 4 coop_csc)
            out += [entry(ds, "coop_csc", None, s) for s in range(4)]
            out += [entry(ds, "coop_csc", "anchored_badclip", s, eps255=large) for s in range(4)]
            out += [entry(ds, "zeroshot", "encoder", s) for s in range(3)]
            out += [entry(ds, "zeroshot", "encoder_badnets", s) for s in range(2)]
            out += [entry(ds, "zeroshot", "encoder_sig", s) for s in range(3)]
        # seed 0 of every kind first, so a run cut short by --max-minutes still covers every family
        out = sorted(out, key=lambda e: (e.seed, out.index(e)))
        # triggers that do not implant on this backbone (docs/benchmark.md): one seed each, reported, last
        for ds in ("cifar10", "tin20"):
            out += [entry(ds, "cocoop", a, 0) for a in ("blended", "wanet", "siba", "badnets", "sig")]
            out += [entry(ds, "zeroshot", a, 0) for a in ("encoder_wanet", "encoder_siba")]
        return out
    raise ValueError(f"unknown profile {profile!r}")
