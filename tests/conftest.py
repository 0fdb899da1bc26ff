"""Shared fixtures: a small CLIP pretrained on CIFAR-10 and a clean and a backdoored CoCoOp model
tuned on it. Built once per test session and xdist worker (about two minutes on 2 CPU cores), reused by the
end-to-end, repair and canary tests."""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

# Under pytest-xdist (the default run: -n auto --dist loadfile, see pyproject) each worker is one
# process on one core; torch's own intra-op threads would only oversubscribe the other workers'.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CIFAR = SHARED / "cifar10"
OOD = SHARED / "ood" / "imagenet-1k"
TARGET = "cat"


def require(path: Path) -> Path:
    if not path.is_dir():
        pytest.skip(f"{path} is absent (shared datasets live next to the repository, see ../shared/data/README.md)")
    return path


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
    require(CIFAR)
    from open_clip.model import CLIP
    from open_clip.tokenizer import SimpleTokenizer

    from ci_gate.checkpoint.format import LearnerSpec, Preprocessing
    from ci_gate.data import load_labeled_folder
    from ci_gate.model.small import embedded_backbone, small_config
    from ci_gate.tuning.pretrain import PretrainSettings, pretrain_clip
    from ci_gate.tuning.recipes import tune_checkpoint
    from ci_gate.tuning.train import TuneSettings

    root = tmp_path_factory.mktemp("cifar-models")
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
    return CifarModels(state, clean, bad, TARGET, test, root)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: one thread is as fast and does not oversubscribe the shared 2-core CI machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
