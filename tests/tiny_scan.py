"""A random-weight tiny-32 checkpoint and an 8-image pool: a real `ci-gate verify` in about a second
once torch is imported. For tests of what verify writes, not of what it detects."""

from __future__ import annotations

from pathlib import Path

SETTINGS = [
    "--set", "pool.min_images=8", "--set", "pool.max_images=8", "--set", "inversion.batch_size=8",
    "--set", "inversion.epochs=1", "--set", "device=cpu",
]  # fmt: skip


def build(root: Path, names: list[str] | None = None, n_images: int = 8, kind: str = "coop") -> tuple[Path, Path]:
    """(checkpoint, pool folder) under root; the same arguments give the same bytes."""
    from ci_gate.artifacts import write_png
    from ci_gate.bench.speed_run import candidate_names, random_pool
    from ci_gate.checkpoint.format import CheckpointMeta, LearnerSpec, Preprocessing, save_checkpoint
    from ci_gate.model.factory import new_learner
    from ci_gate.model.small import embedded_backbone, random_clip_state, small_config

    root.mkdir(parents=True, exist_ok=True)
    cfg = small_config("tiny-32")
    state = random_clip_state(cfg, seed=0)
    spec, backbone = embedded_backbone(cfg, state)
    learner_spec = LearnerSpec(kind=kind, class_names=names or candidate_names(4))
    learner = new_learner(backbone, learner_spec, seed=0)
    meta = CheckpointMeta(learner=learner_spec, backbone=spec, preprocessing=Preprocessing(image_size=32))
    ckpt = root / "model.safetensors"
    save_checkpoint(ckpt, meta, learner.named_tensors(), state)
    pool = root / "pool"
    for i, img in enumerate(random_pool(n_images, 32, seed=1)):
        write_png(pool / f"{i:03d}.png", img)
    return ckpt, pool


def published_weights(root: Path) -> Path:
    """The tower ``build`` embeds, as the published weights file a user passes to
    --reference-weights (without it the embedded tower is unverified and fails the default gate),
    with its architecture beside it (open_clip_config.json: the inline config is checked against it)."""
    from safetensors.torch import save_file

    from ci_gate.model.architecture import write_config_file
    from ci_gate.model.small import random_clip_state, small_config

    root.mkdir(parents=True, exist_ok=True)
    path = root / "published.safetensors"
    save_file({k: v.contiguous() for k, v in random_clip_state(small_config("tiny-32"), seed=0).items()}, str(path))
    write_config_file(root, small_config("tiny-32"))
    return path
