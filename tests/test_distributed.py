"""Scale out (issue 5): ``torchrun --nproc-per-node 2 -m ci_gate verify`` shards the candidate
classes across two gloo processes and rank 0 writes one Result equal to the single-process scan."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ci_gate.artifacts import write_png
from ci_gate.bench.speed_run import candidate_names, random_pool
from ci_gate.checkpoint.format import BackboneSpec, CheckpointMeta, LearnerSpec, Preprocessing, save_checkpoint
from ci_gate.distributed import Shard, shard_classes
from ci_gate.errors import InputError
from ci_gate.model.factory import new_learner
from ci_gate.model.small import embedded_backbone, random_clip_state, small_config
from ci_gate.pool import load_pool

REPO = Path(__file__).resolve().parents[1]
N_CLASSES = 5
SETTINGS = [
    "--set", "pool.min_images=16", "--set", "inversion.batch_size=8", "--set", "inversion.class_batch=2",
    "--set", "device=cpu", "--set", "report.formats=[json]",
]  # fmt: skip


def test_shard_classes_partitions_in_order():
    for n in (1, 5, 7, 50):
        for world in (1, 2, 3, 8):
            parts = [shard_classes(n, r, world) for r in range(world)]
            assert [c for p in parts for c in p] == list(range(n))
            assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_shard_reads_only_the_mapping_it_is_given():
    assert Shard.from_launcher({}) == Shard()
    s = Shard.from_launcher({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "MASTER_ADDR": "10.0.0.2", "MASTER_PORT": "1234"})
    assert (s.rank, s.world_size, s.local_rank, s.master_addr, s.master_port) == (3, 4, 1, "10.0.0.2", 1234)
    assert s.distributed and not s.is_main
    with pytest.raises(InputError):
        Shard.from_launcher({"WORLD_SIZE": "2", "RANK": "2"})
    with pytest.raises(InputError):
        Shard.from_launcher({"WORLD_SIZE": "two"})


@pytest.fixture(scope="module")
def scan_inputs(tmp_path_factory) -> tuple[Path, Path]:
    """A random-weight tiny-32 CoCoOp checkpoint and a 24-image pool folder."""
    root = tmp_path_factory.mktemp("dist")
    cfg = small_config("tiny-32")
    state = random_clip_state(cfg, seed=0)
    spec, backbone = embedded_backbone(cfg, state)
    learner_spec = LearnerSpec(kind="cocoop", class_names=candidate_names(N_CLASSES))
    learner = new_learner(backbone, learner_spec, seed=0)
    meta = CheckpointMeta(learner=learner_spec, backbone=spec, preprocessing=Preprocessing(image_size=32))
    ckpt = root / "model.safetensors"
    save_checkpoint(ckpt, meta, learner.named_tensors(), state)
    pool = root / "pool"
    for i, img in enumerate(random_pool(24, 32, seed=1)):
        write_png(pool / f"{i:03d}.png", img)
    return ckpt, pool


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")  # two processes on a shared 2-core box
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=180)


def test_torchrun_two_processes_match_one(scan_inputs, tmp_path):
    ckpt, pool = scan_inputs
    one, two = tmp_path / "one", tmp_path / "two"
    verify = ["-m", "ci_gate", "verify", str(ckpt), "--pool", str(pool), "--quiet", "--fail-on", "never", *SETTINGS]
    single = _run([sys.executable, *verify, "--out", str(one)], tmp_path)
    assert single.returncode == 0, single.stderr
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    launch = [torchrun, "--nproc-per-node", "2", "--master-addr", "127.0.0.1", "--master-port", str(_free_port())]
    sharded = _run([*launch, *verify, "--out", str(two)], tmp_path)
    assert sharded.returncode == 0, sharded.stderr
    assert sharded.stdout.count("model=") == 1  # only rank 0 reports

    a = json.loads((one / "result.json").read_text())
    b = json.loads((two / "result.json").read_text())
    assert a["device"] == "cpu" and b["device"] == "cpu x2 processes"
    assert (a["verdict"], a["target_index"]) == (b["verdict"], b["target_index"])
    assert [c["index"] for c in b["classes"]] == list(range(N_CLASSES))
    for x, y in zip(a["classes"], b["classes"]):
        assert (x["name"], x["status"], x["asr"], x["base_rate"]) == (y["name"], y["status"], y["asr"], y["base_rate"])
        for key in ("final_loss", "clean_loss", "statistic", "anomaly", "trigger_linf"):
            assert abs(x[key] - y[key]) <= 1e-4, (x["name"], key, x[key], y[key])
        ta, tb = (load_file(str(root / c["trigger_tensor"]))["delta"] for root, c in ((one, x), (two, y)))
        torch.testing.assert_close(ta, tb, atol=1e-4, rtol=0)
    # only rank 0 wrote: the same files as the single process, no strays or temporaries
    assert _tree(two) == _tree(one)
    assert load_pool(str(pool), 32, 16, 1000).images.shape[0] == b["pool"]["n_images"] == 24
