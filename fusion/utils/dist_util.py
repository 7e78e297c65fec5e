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
from typing import Any, Callable, List, Optional, Tuple

import torch
import torch.distributed as dist


__all__ = ['get_dist_info', 'launched_by_torchrun', 'local_rank', 'default_backend', 'init_dist', 'destroy_dist',
           'barrier', 'all_gather_objects', 'parse_shard', 'RankFailure', 'RankWait']


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


class RankFailure(RuntimeError):
    """Another rank failed during a step that every rank waits for (the message names it)."""


class RankWait:
    """Every rank waits for a step that some ranks run (e.g. validation on rank 0), for up to
    ``timeout_s`` seconds, and a failure on any rank ends every rank at once with that rank's error.

    The wait is an all-gather of each rank's outcome over a gloo group of its own, created with
    ``timeout_s`` as its timeout: independent of the training process group's timeout (which
    stays what ``dist_params.timeout`` says) and of its backend (NCCL or gloo). Every rank must
    construct it at the same point (``new_group`` is collective), and call :meth:`run` at the
    same points. Without a process group (one process) :meth:`run` just runs ``fn``."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = float(timeout_s)
        self.group = None
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            self.group = dist.new_group(backend='gloo', timeout=datetime.timedelta(seconds=self.timeout_s))

    def run(self, fn: Callable[[], Any], what: str) -> Any:
        """Runs ``fn()`` here, then waits until every rank has run its part. Re-raises this rank's
        own error; raises :class:`RankFailure` naming another rank and its error when that rank
        failed; a rank that does not report within the timeout ends the wait with torch's error."""
        error: Optional[Exception] = None
        result = None
        try:
            result = fn()
        except Exception as err:  # reported to the other ranks first, then re-raised
            error = err
        if self.group is None:
            if error is not None:
                raise error
            return result
        reports: List[Optional[str]] = [None] * dist.get_world_size(self.group)
        dist.all_gather_object(reports, None if error is None else f'{type(error).__name__}: {error}', group=self.group)
        if error is not None:
            raise error
        failed = [(rank, report) for rank, report in enumerate(reports) if report is not None]
        if failed:
            rank, report = failed[0]
            raise RankFailure(f'{what} failed on rank {rank}: {report}')
        return result


def parse_shard(text: str) -> Tuple[int, int]:
    """``'I/N'`` (0 <= I < N, as in job arrays counted from 0) -> ``(I, N)``."""
    try:
        index, count = (int(v) for v in str(text).split('/'))
    except ValueError:
        raise ValueError(f'--shard expects I/N with integers (e.g. 0/4), got {text!r}') from None
    if count < 1 or not 0 <= index < count:
        raise ValueError(f'--shard {text}: need 0 <= I < N')
    return index, count
