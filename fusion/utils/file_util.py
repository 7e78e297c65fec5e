"""Atomic file writes: a file under its final name is always complete."""
from __future__ import annotations

import os
import os.path as osp
import tempfile
from typing import Any, Callable


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def _atomic(path: str, write: Callable[[str], None]) -> None:
    folder = osp.dirname(osp.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix='.tmp_', suffix=osp.splitext(path)[1], dir=folder)
    os.close(fd)
    try:
        write(tmp)
        # mkstemp creates 0600 files; give the result the permissions a plain open() would
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        if osp.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write_bytes(data: bytes, path: str) -> None:
    """Writes ``data`` to a temporary file beside ``path`` and renames it into place."""
    def write(tmp: str) -> None:
        with open(tmp, 'wb') as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    _atomic(path, write)


def atomic_torch_save(obj: Any, path: str) -> None:
    """``torch.save`` that never leaves a truncated checkpoint under the final name."""
    import torch
    _atomic(path, lambda tmp: torch.save(obj, tmp))
