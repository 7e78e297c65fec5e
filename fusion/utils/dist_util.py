"""One way to learn rank and world size, and to start and end torch.distributed, for every
distributed job of the package (training, sharded mask generation, segmentation evaluation).

Processes are launched by ``torchrun`` (``python -m torch.distributed.run``), which sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; nothing here spawns processes.
The backend follows the device: NCCL when CUDA is available, gloo otherwise (never NCCL without
CUDA). With CUDA each process uses GPU ``LOCAL_RANK`` (modulo the GPUs it sees).
"""
from __future__ import annotations

import datetime
import os
from typing import Any, List, Optional, Tuple

import torch
import torch.distributed as dist


__all__ = ['get_dist_info', 'launched_by_torchrun', 'local_rank', 'default_backend', 'init_dist', 'destroy_dist',
           'barrier', 'all_gather_objects', 'parse_shard']


def launched_by_torchrun() -> bool:
    """True when the process was started by torchrun (or anything setting its environment)."""
    return 'RANK' in os.environ and 'WORLD_SIZE' in os.environ


def get_dist_info() -> Tuple[int, int]:
    """``(rank, world_size)``: from the process group when one is initialised, else from the
    torchrun environment, else ``(0, 1)``."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if launched_by_torchrun():
        return int(os.environ['RANK']), int(os.environ['WORLD_SIZE'])
    return 0, 1


def local_rank() -> int:
    """This process's index on its node (``LOCAL_RANK``; 0 outside torchrun)."""
    return int(os.environ.get('LOCAL_RANK', 0))


def default_backend() -> str:
    """``nccl`` with CUDA, ``gloo`` without."""
    return 'nccl' if torch.cuda.is_available() else 'gloo'


def init_dist(backend: Optional[str] = None, timeout: Optional[datetime.timedelta] = None) -> Tuple[int, int]:
    """Joins the process group torchrun set up (idempotent) and returns ``(rank, world_size)``.

    ``backend`` None follows the device; ``nccl`` without CUDA is replaced by ``gloo``. With CUDA
    the process's current GPU becomes ``LOCAL_RANK``, so ``cuda`` means this process's own GPU.
    """
    if not launched_by_torchrun():
        raise ValueError('distributed run requested but RANK/WORLD_SIZE are not set: start it with torchrun '
                         '(python -m torch.distributed.run --nproc_per_node=N ...)')
    if backend is None or (backend == 'nccl' and not torch.cuda.is_available()):
        backend = default_backend()
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank() % torch.cuda.device_count())
    if not dist.is_initialized():
        kwargs = {} if timeout is None else {'timeout': timeout}
        dist.init_process_group(backend=backend, **kwargs)
    return dist.get_rank(), dist.get_world_size()


def destroy_dist() -> None:
    """Leaves the process group (no-op without one)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Waits for every rank (no-op without a process group)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def all_gather_objects(obj: Any) -> List[Any]:
    """Every rank's ``obj`` in rank order (``[obj]`` without a process group)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [obj]
    out: List[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def parse_shard(text: str) -> Tuple[int, int]:
    """``'I/N'`` (0 <= I < N, as in job arrays counted from 0) -> ``(I, N)``."""
    try:
        index, count = (int(v) for v in str(text).split('/'))
    except ValueError:
        raise ValueError(f'--shard expects I/N with integers (e.g. 0/4), got {text!r}') from None
    if count < 1 or not 0 <= index < count:
        raise ValueError(f'--shard {text}: need 0 <= I < N')
    return index, count
