"""Scale out: shard candidate classes across processes started by ``torchrun`` and merge them.

Each candidate class's trigger is optimised independently over the same seeded batch order
(ci_gate.inversion.optimize), so any split of the classes gives the same triggers. Every process
loads the model and the pool, inverts its contiguous block of classes, and the per-class results
(trigger, ASR, final loss) are all-gathered as plain tensors (no pickling) so rank 0 can score
them and write the one Result; the other ranks write nothing.

The launcher's environment (WORLD_SIZE, RANK, ...) is read once, at the CLI edge
(``ci_gate.commands.verify``), into a :class:`Shard`; nothing below reads the environment. The
process group is set up with an explicit tcp:// address for the same reason.
"""

from __future__ import annotations

import contextlib
import datetime
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch

from ci_gate.errors import InputError
from ci_gate.inversion.optimize import ClassTrigger, Rung


@dataclass(frozen=True)
class Shard:
    """This process's place in a multi-process scan; the default is the single-process scan."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    timeout_s: int = 1800

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size or self.local_rank < 0:
            raise InputError("torchrun", f"inconsistent rank {self.rank} / world size {self.world_size} / local rank {self.local_rank}")
        if not 1 <= self.master_port <= 65535:
            raise InputError("torchrun", f"MASTER_PORT {self.master_port} is not a TCP port (1-65535)")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_launcher(cls, env: Mapping[str, str]) -> "Shard":
        """Parse torchrun's variables (pass ``os.environ``); absent variables mean one process."""
        if "WORLD_SIZE" not in env:
            return cls()
        try:
            return cls(
                rank=int(env.get("RANK", "0")),
                world_size=int(env["WORLD_SIZE"]),
                local_rank=int(env.get("LOCAL_RANK", "0")),
                master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
                master_port=int(env.get("MASTER_PORT", "29500")),
            )
        except ValueError as exc:
            raise InputError("torchrun", f"bad launcher variable: {exc}") from None


SINGLE = Shard()


def shard_classes(n_classes: int, rank: int, world_size: int) -> list[int]:
    """Contiguous, balanced blocks (sizes differ by at most one); ranks past n_classes get none."""
    base, extra = divmod(n_classes, world_size)
    start = rank * base + min(rank, extra)
    return list(range(start, start + base + (1 if rank < extra else 0)))


def rank_device(shard: Shard, device: torch.device) -> torch.device:
    """One GPU per process: rank-local CUDA device; CPU processes share the host."""
    if device.type == "cuda" and shard.distributed:
        return torch.device("cuda", shard.local_rank)
    return device


@contextlib.contextmanager
def process_group(shard: Shard, device: torch.device) -> Iterator[None]:
    """Join the process group for the scan's collectives (NCCL on GPUs, gloo on CPUs)."""
    if not shard.distributed:
        yield
        return
    import torch.distributed as dist

    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(
        backend,
        init_method=f"tcp://{shard.master_addr}:{shard.master_port}",
        rank=shard.rank,
        world_size=shard.world_size,
        timeout=datetime.timedelta(seconds=shard.timeout_s),
    )
    try:
        yield
    finally:
        dist.destroy_process_group()


def gather_triggers(local: list[ClassTrigger], shard: Shard, image_size: int, device: torch.device, epsilons: tuple[float, ...]) -> list[ClassTrigger] | None:
    """All ranks' triggers (every rung of the ladder), sorted by class index, on rank 0; None on
    the other ranks."""
    if not shard.distributed:
        return sorted(local, key=lambda t: t.index)
    import torch.distributed as dist

    n_rungs = len(epsilons)
    # NCCL only moves device tensors; gloo only host tensors
    comm = device if device.type == "cuda" else torch.device("cpu")
    count = torch.tensor([len(local)], dtype=torch.int64, device=comm)
    counts = [torch.zeros_like(count) for _ in range(shard.world_size)]
    dist.all_gather(counts, count)
    width = max(1, int(max(c.item() for c in counts)))
    stats = torch.zeros(width, 1 + 2 * n_rungs, dtype=torch.float64, device=comm)  # index, (ASR, final loss) per rung
    deltas = torch.zeros(width, n_rungs, 3, image_size, image_size, dtype=torch.float32, device=comm)
    for i, t in enumerate(local):
        stats[i] = torch.tensor([t.index] + [v for r in t.rungs for v in (r.asr, r.final_loss)], dtype=torch.float64)
        deltas[i] = torch.stack([r.delta for r in t.rungs]).to(comm, torch.float32)
    all_stats = [torch.zeros_like(stats) for _ in range(shard.world_size)]
    all_deltas = [torch.zeros_like(deltas) for _ in range(shard.world_size)]
    dist.all_gather(all_stats, stats)
    dist.all_gather(all_deltas, deltas)
    if not shard.is_main:
        return None
    merged = []
    for n, st, dl in zip(counts, all_stats, all_deltas):
        st, dl = st.cpu(), dl.cpu()
        for i in range(int(n.item())):
            rungs = [Rung(epsilon=e, delta=dl[i, r].clone(), asr=float(st[i, 1 + 2 * r]), final_loss=float(st[i, 2 + 2 * r])) for r, e in enumerate(epsilons)]
            merged.append(ClassTrigger(index=int(st[i, 0]), rungs=rungs))
    return sorted(merged, key=lambda t: t.index)
