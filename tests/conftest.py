"""Shared fixtures: a small CLIP pretrained on CIFAR-10 and a clean and a backdoored CoCoOp model
tuned on it. Built once per test session and xdist worker (about two minutes on 2 CPU cores), reused by the
end-to-end, repair and canary tests."""

from __future__ import annotations

import copy
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

# Under pytest-xdist (the default run: -n auto --dist loadfile, see pyproject) each worker is one
# process on one core; torch's own intra-op threads would only oversubscribe the other workers'.
# The CLI runs that tests start as subprocesses inherit the same limit: two threads each beside a
# busy worker oversubscribe the cores and ran `ci-gate demo` 2.4x slower.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CIFAR = SHARED / "cifar10"
OOD = SHARED / "ood" / "imagenet-1k"
TARGET = "cat"


def require(path: Path) -> Path:
    if not path.is_dir():
        pytest.skip(f"{path} is absent (shared datasets live next to the repository, see ../shared/data/README.md)")
    return path


# Order of the test files. Under xdist (loadfile, --no-loadscope-reorder: see pyproject) each
# worker takes the next file in this order. The first user of the session's CIFAR models builds
# them (two to three minutes) while the other worker runs the long files that do not need them;
# the models' other users come next (once built, they load in a second), and the many short files
# last, so that both workers finish together. A file not named here is a short one.
FIRST = ("test_canary.py", "test_demo.py", "test_distributed.py", "test_report_folder.py")
CIFAR_USERS = ("test_repair.py", "test_verify_reference.py", "test_verify_e2e.py")


def pytest_collection_modifyitems(config, items):
    def rank(item) -> tuple[int, int]:
        name = item.path.name
        if name in FIRST:
            return 0, FIRST.index(name)
        if name in CIFAR_USERS:
            return 1, CIFAR_USERS.index(name)
        return 2, 0

    items.sort(key=rank)  # stable: tests keep their order within a file


@dataclass
class CifarModels:
    backbone_state: dict[str, torch.Tensor]
    clean: object  # ci_gate.tuning.recipes.TunedModel
    backdoored: object
    target: str
    test: object  # LabeledImages, held out
    root: Path


@pytest.fixture(scope="session")
def cifar_models(tmp_path_factory) -> CifarModels:
    """Under pytest-xdist the first worker to need the models builds them into the session's
    shared temp folder and the others load the same files (a file lock orders them), so the
    two-minute build runs once per test run, not once per worker."""
    require(CIFAR)
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return _build_cifar_models(tmp_path_factory.mktemp("cifar-models"))
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp().parent  # one folder per run, shared by its workers
    root, done = shared / "cifar-models", shared / "cifar-models.complete"
    # the lock and the marker live beside the models: tests compare the models folder's listing
    with FileLock(str(shared / "cifar-models.lock")):
        if done.is_file():
            return _load_cifar_models(root)
        root.mkdir(exist_ok=True)
        models = _build_cifar_models(root)
        done.write_text("built\n")
        return models


@pytest.fixture(scope="module")
def cifar_published(cifar_models, tmp_path_factory) -> Path:
    """The backbone the CIFAR models were tuned on, as the file a user downloads and passes to
    --reference-weights (without it their embedded tower is unverified and fails the default gate)."""
    from safetensors.torch import save_file

    from ci_gate.model.architecture import write_config_file
    from ci_gate.model.small import small_config

    path = tmp_path_factory.mktemp("published") / "published.safetensors"
    save_file({k: v.contiguous() for k, v in cifar_models.backbone_state.items()}, str(path))
    write_config_file(path.parent, small_config("tiny-32"))  # its architecture (_build_cifar_models), as open_clip's hub layout ships it
    return path


def _load_cifar_models(root: Path) -> CifarModels:
    from safetensors.torch import load_file

    from ci_gate.attacks.triggers import LearnedTrigger
    from ci_gate.data import load_labeled_folder
    from ci_gate.model import load_classifier
    from ci_gate.tuning.recipes import TunedModel

    train = load_labeled_folder(CIFAR / "train", 32)
    test = load_labeled_folder(CIFAR / "test", 32, class_names=train.class_names)
    saved = load_file(root / "trigger.safetensors")
    trigger = LearnedTrigger(32, epsilon=float(saved["epsilon"]))
    with torch.no_grad():
        trigger.delta.copy_(saved["delta"])
    trigger.delta.requires_grad_(False)

    def tuned(path: Path, trig, target) -> TunedModel:
        return TunedModel(classifier=load_classifier(path).classifier, trigger=trig, target=target, path=path, sha256=hashlib.sha256(path.read_bytes()).hexdigest())

    target = train.class_names.index(TARGET)
    return CifarModels(
        load_file(root / "backbone.safetensors"), tuned(root / "clean.safetensors", None, None),
        tuned(root / "backdoored.safetensors", trigger, target), TARGET, test, root,
    )


def _build_cifar_models(root: Path) -> CifarModels:
    from open_clip.model import CLIP
    from open_clip.tokenizer import SimpleTokenizer

    from ci_gate.checkpoint.format import LearnerSpec, Preprocessing
    from ci_gate.data import load_labeled_folder
    from ci_gate.model.small import embedded_backbone, small_config
    from ci_gate.tuning.pretrain import PretrainSettings, pretrain_clip
    from ci_gate.tuning.recipes import tune_checkpoint
    from ci_gate.tuning.train import TuneSettings

    cfg = small_config("tiny-32")
    train = load_labeled_folder(CIFAR / "train", 32)
    test = load_labeled_folder(CIFAR / "test", 32, class_names=train.class_names)
    torch.manual_seed(0)
    clip = CLIP(**copy.deepcopy(cfg))
    pretrain_clip(clip, SimpleTokenizer(), train, PretrainSettings(epochs=40, lr=3e-3, batch_size=128, seed=0))
    state = {k: v.detach().clone() for k, v in clip.state_dict().items()}
    spec, backbone = embedded_backbone(cfg, state)
    gen = torch.Generator().manual_seed(1)
    shots = torch.cat([torch.nonzero(train.labels == c).flatten()[torch.randperm(200, generator=gen)[:100]] for c in range(10)])
    tuning = train.subset(shots)
    learner = LearnerSpec(kind="cocoop", class_names=train.class_names)
    pre = Preprocessing(image_size=32)
    target = train.class_names.index(TARGET)
    clean = tune_checkpoint(
        backbone, spec, learner, pre, tuning, TuneSettings(epochs=10, lr=2e-3, seed=0),
        root / "clean.safetensors", backbone_tensors=state, provenance={"test": "clean"},
    )
    bad = tune_checkpoint(
        backbone, spec, learner, pre, tuning,
        TuneSettings(epochs=20, lr=5e-3, seed=0, poison_rate=0.2, target=target, trigger_lr=1e-2),
        root / "backdoored.safetensors", attack="badclip", backbone_tensors=state, provenance={"test": "badclip"},
    )
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, str(root / "backbone.safetensors"))
    save_file({"delta": bad.trigger.delta.detach().contiguous(), "epsilon": torch.tensor(bad.trigger.epsilon, dtype=torch.float64)}, str(root / "trigger.safetensors"))
    return CifarModels(state, clean, bad, TARGET, test, root)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: one thread is as fast and does not oversubscribe the shared 2-core CI machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
