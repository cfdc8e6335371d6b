"""Process setup shared by every script: torchrun or plain python, CPU or CUDA, model/data parallel.

Under ``torchrun`` the usual RANK/WORLD_SIZE/LOCAL_RANK variables are set; under plain ``python``
they are not and we run as a single process without any process group.  The model-parallel size
is the number of checkpoint shards; the remaining factor of the world size is data parallel.
"""

from __future__ import annotations

import atexit
import datetime
import os
import sys
from dataclasses import dataclass
from typing import Any, List, Optional

import torch
import torch.distributed as dist

DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "fp16": torch.float16,
    "float16": torch.float16,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
}


@dataclass
class Runtime:
    rank: int
    world_size: int
    local_rank: int
    mp_size: int
    device: torch.device
    dtype: torch.dtype

    @property
    def mp_rank(self) -> int:
        # fairscale puts consecutive ranks in one model-parallel group.
        return self.rank % self.mp_size

    @property
    def dp_rank(self) -> int:
        return self.rank // self.mp_size

    @property
    def dp_size(self) -> int:
        return self.world_size // self.mp_size

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def all_gather_object(self, obj: Any) -> List[Any]:
        """Gather one object from every data-parallel rank (index = dp_rank)."""
        if not self.distributed:
            return [obj]
        out: List[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        # Every rank of a model-parallel group holds the same result; keep mp_rank 0's.
        return [out[r] for r in range(0, self.world_size, self.mp_size)]

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def resolve_dtype(name: Optional[str], device: torch.device) -> torch.dtype:
    if name is None:
        if device.type != "cuda":
            return torch.float32
        # bf16 keeps fp32's range (bf16-trained models such as Llama-3 and SmolLM2 can overflow
        # fp16); GPUs without it (V100) get fp16.
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    try:
        return DTYPES[str(name).lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; use one of fp32, fp16, bf16") from None


def setup_runtime(
    model_parallel_size: int = 1,
    dtype: Optional[str] = None,
    device: Optional[str] = None,
    quiet_workers: bool = True,
    source: str = "the checkpoint",
) -> Runtime:
    """Initialise (or skip) torch.distributed and fairscale's model-parallel groups.

    ``device``: "cpu", "cuda" or None (CUDA when available).  ``dtype``: fp32/fp16/bf16 or None
    (bf16 on CUDA devices that support it, else fp16; fp32 on CPU).  Ranks other than 0 print nothing when ``quiet_workers``.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if model_parallel_size < 1 or world_size % model_parallel_size != 0:
        raise ValueError(
            f"world size {world_size} is not a multiple of the {model_parallel_size} shard(s) of {source}: "
            f"run torchrun --nproc_per_node with a multiple of {model_parallel_size}, "
            "or re-shard the checkpoint with `python -m llama.convert convert SRC OUT --shards N`"
        )
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
        # Without this, gloo's threads can still be alive at interpreter exit and abort the
        # process ("terminate called without an active exception") after a successful run.
        atexit.register(_close_process_group)
    if model_parallel_size > 1:
        from fairscale.nn.model_parallel import initialize as fs_init

        if not fs_init.model_parallel_is_initialized():
            fs_init.initialize_model_parallel(model_parallel_size)
    # Sampling must agree across model-parallel ranks.
    torch.manual_seed(1)
    if quiet_workers and rank > 0:
        sys.stdout = open(os.devnull, "w")
    return Runtime(rank, world_size, local_rank, model_parallel_size, dev, resolve_dtype(dtype, dev))


def _close_process_group() -> None:
    if not dist.is_initialized():
        return
    try:  # no rank tears down while another still talks to it; bounded if a rank has died
        if dist.get_backend() == "gloo":
            dist.monitored_barrier(timeout=datetime.timedelta(seconds=60))
        else:
            dist.barrier()
    except Exception:
        pass
    dist.destroy_process_group()
