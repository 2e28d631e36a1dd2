"""Several processes (`torchrun` / `accelerate launch`): rank 0 runs the pipeline, every rank runs the training step.

Ingest, planning, evaluation, the gate, registration, the ledger and the home's lock happen on rank 0 only. Rank 0
hands the other ranks one work order (the training arguments) through the process group; each rank then trains on
its shard of the data inside the same `Trainer`, whose DDP wrapper synchronises the gradients. Rank 0 sends `None`
when there is nothing to train (or when it failed before training), and every rank ends.

Launch on one node with N GPUs (or N CPU processes with the gloo backend):
    torchrun --nproc_per_node N -m injector train --triples FILE
    accelerate launch --num_processes N -m injector train --triples FILE
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def multi(self) -> bool:
        return self.world > 1


def from_env() -> Dist:
    """What torchrun and accelerate set for each process (1 process when unset)."""
    env = os.environ
    return Dist(int(env.get("RANK", "0")), int(env.get("WORLD_SIZE", "1")), int(env.get("LOCAL_RANK", "0")))


def init() -> None:
    """Join the process group (gloo on CPU, NCCL on CUDA) the way the Trainer will, through accelerate."""
    from datetime import timedelta

    from accelerate import PartialState

    # the other ranks wait while rank 0 ingests, plans and self-distils replay: allow a long night
    PartialState(cpu=not _cuda(), timeout=timedelta(hours=4))


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def broadcast(obj=None):
    """Rank 0's `obj` on every rank (a picklable work order, or None)."""
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(obj) -> list:
    import torch.distributed as dist

    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    """Leave the process group once this process's part is done: a rank that exits with gloo's threads still
    running can abort on the way out ("terminate called without an active exception", seen once in CI)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def digest(model) -> str:
    """sha256 over the trainable parameters' bytes: equal on every rank when DDP kept them in step."""
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters(), key=lambda x: x[0]):
        if p.requires_grad:
            h.update(name.encode())
            h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
