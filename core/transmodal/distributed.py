"""More than one process: the process group that torchrun describes, and what the trainer reduces across it.

``torchrun --nproc_per_node N -m transmodal train CONFIG`` starts N copies of the command and sets RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR and MASTER_PORT; :func:`process_group` reads them, so any config runs unchanged. Without
them a run is one process and nothing here communicates. The conventions (README, "More than one process"):

* ``trainer.batch_size`` and ``trainer.target_batch_size`` are global: each optimizer step trains on the same global
  batch as one process would, split across the ranks (``BatchLoader.shard``), and DistributedDataParallel averages
  the gradients, so the step is the same up to float rounding and BatchNorm's per-rank batch statistics.
* Evaluation splits are divided between the ranks and their loss sums and confusion matrices summed: every sample
  counts once. Label-free validators and AdaBN's target pass read bounded samples, on every rank alike.
* BatchNorm running statistics drift apart on each rank's shard; they are averaged before every evaluation and
  checkpoint (the running mean is an exponential average, linear in the batch means, so this equals averaging at
  every step). ``trainer.sync_batchnorm`` (CUDA) normalises by the whole global batch instead.
* Rank 0 alone writes the run directory; the others learn its path from it.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import pickle
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from transmodal.config import TrainerConfig
from transmodal.errors import ConfigError, DistributedError

T = TypeVar("T")

_LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class World:
    """This process's place among the run's processes; one process by default."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` summed over the ranks, in place (every rank gets the same result)."""
        if self.distributed:
            dist.all_reduce(tensor)
        return tensor

    def average_(self, tensors: list[torch.Tensor]) -> None:
        """Replace each tensor by its mean over the ranks (one flattened all-reduce)."""
        if not self.distributed or not tensors:
            return
        flat = torch.cat([t.detach().reshape(-1).double() for t in tensors])
        dist.all_reduce(flat)
        flat /= self.world_size
        with torch.no_grad():
            for tensor, mean in zip(tensors, flat.split([t.numel() for t in tensors])):
                tensor.copy_(mean.view_as(tensor))

    # Objects travel as pickled bytes in uint8 tensors: torch's own broadcast_object_list and all_gather_object
    # go through NumPy, which the core does not depend on (they fail with "Numpy is not available" without it).

    def from_main(self, value: T) -> T:
        """Rank 0's ``value`` on every rank."""
        if not self.distributed:
            return value
        wire = _wire_device()
        data = _pickled(value).to(wire)
        size = torch.tensor([len(data)], dtype=torch.int64, device=wire)
        dist.broadcast(size, src=0)
        if not self.is_main:
            data = torch.empty(int(size.item()), dtype=torch.uint8, device=wire)
        dist.broadcast(data, src=0)
        return pickle.loads(bytes(data.cpu().tolist()))

    def gather(self, value: T) -> list[T]:
        """Every rank's ``value``, in rank order, on every rank."""
        if not self.distributed:
            return [value]
        wire = _wire_device()
        data = _pickled(value).to(wire)
        sizes = [torch.zeros(1, dtype=torch.int64, device=wire) for _ in range(self.world_size)]
        dist.all_gather(sizes, torch.tensor([len(data)], dtype=torch.int64, device=wire))
        longest = max(int(size.item()) for size in sizes)
        padded = [torch.empty(longest, dtype=torch.uint8, device=wire) for _ in range(self.world_size)]
        dist.all_gather(padded, torch.cat([data, data.new_zeros(longest - len(data))]))
        return [pickle.loads(bytes(chunk[:int(size.item())].cpu().tolist())) for chunk, size in zip(padded, sizes)]

    def device(self, device: torch.device) -> torch.device:
        """The device this rank trains on: under torchrun each process takes the GPU of its local rank."""
        if not self.distributed or device.type != "cuda":
            return device
        if device.index is not None:
            raise ConfigError(f"trainer.device: '{device}' names one GPU, but under torchrun each process takes "
                              f"the GPU of its LOCAL_RANK; use auto or cuda")
        return torch.device("cuda", self.local_rank)


SINGLE = World()


def _pickled(value: Any) -> torch.Tensor:
    return torch.frombuffer(bytearray(pickle.dumps(value)), dtype=torch.uint8)


def _wire_device() -> torch.device:
    """Where collective tensors must live: NCCL moves only CUDA tensors, gloo CPU ones."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def launched_world() -> World:
    """The world torchrun (or SLURM through it) describes in the environment; one process without it."""
    if "WORLD_SIZE" not in os.environ:
        return SINGLE
    missing = [name for name in _LAUNCHER_VARIABLES if name not in os.environ]
    if missing:
        raise ConfigError(f"WORLD_SIZE is set but {', '.join(missing)} is not: start the processes with torchrun "
                          f"(it sets them all), or unset WORLD_SIZE for one process")
    try:
        world = World(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"]))
    except ValueError:
        raise ConfigError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (torchrun sets them)") from None
    if not 0 <= world.rank < world.world_size:
        raise ConfigError(f"RANK {world.rank} is outside 0..WORLD_SIZE-1 ({world.world_size - 1})")
    return world


@contextlib.contextmanager
def process_group(config: TrainerConfig, device: torch.device) -> Iterator[World]:
    """The launched world with its process group up (gloo on CPU, nccl on CUDA) until the block ends. A rank that
    dies or stops answering makes the others fail within ``trainer.distributed_timeout`` seconds instead of
    waiting forever."""
    world = launched_world()
    if not world.distributed:
        yield world
        return
    if config.sync_batchnorm and device.type != "cuda":
        raise ConfigError("trainer.sync_batchnorm needs CUDA devices (torch's SyncBatchNorm runs on GPUs only); on "
                          "CPU leave it off: BatchNorm then normalises each rank's share of the batch, and the "
                          "running statistics are averaged across ranks before every evaluation")
    if device.type == "cuda":
        torch.cuda.set_device(world.device(device))
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                            timeout=datetime.timedelta(seconds=config.distributed_timeout))
    try:
        yield world
        dist.barrier()  # no rank tears the group down while another is still finishing
    except RuntimeError as error:  # outside training too: a rank that dies while the run starts
        if not lost_peer(error):
            raise
        raise DistributedError(
            f"rank {world.rank}: lost the other processes of this run ({type(error).__name__}: "
            f"{str(error).splitlines()[0][:300]}); one of them stopped or stopped answering within "
            f"trainer.distributed_timeout ({config.distributed_timeout:g} s)"
        ) from None
    finally:
        dist.destroy_process_group()


# What a collective raises when a peer is gone: gloo raises a plain RuntimeError (from inside backward, too).
_LOST_PEER = ("Connection reset by peer", "Connection closed by peer", "gloo", "NCCL", "timed out", "Timed out")


def lost_peer(error: RuntimeError) -> bool:
    """Whether ``error``, raised under torchrun, says that another process of the run is gone or not answering."""
    return isinstance(error, dist.DistError) or any(marker in str(error) for marker in _LOST_PEER)


def data_parallel(module: nn.Module, device: torch.device) -> nn.Module:
    """``module`` wrapped so that backward averages its gradients over the ranks. Buffers are copied from rank 0
    when it is built, but not at each forward: the per-domain BatchNorm swaps running statistics in and out of the
    layers (domain_norm.py), which DDP's captured buffer list would not follow; the trainer averages them instead
    (:meth:`World.average_`)."""
    return nn.parallel.DistributedDataParallel(
        module, device_ids=[device.index] if device.type == "cuda" else None, forward_sync_buffers=False,
    )
