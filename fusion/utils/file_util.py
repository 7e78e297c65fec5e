"""Atomic file writes (a file under its final name is always complete), output-location checks, and
content digests of files (what a resumed run compares to know its inputs are unchanged).

Temporary files are named ``.tmp_<pid>_*`` beside their target; readers skip hidden files, and
the first atomic write of a process into a folder removes the temporary files that runs which
are no longer alive left there (a run killed while writing).
"""
from __future__ import annotations

import hashlib
import os
import os.path as osp
import re
import tempfile
from typing import Any, Callable, Iterable, Mapping, Set, Tuple


TMP_PREFIX = '.tmp_'
_TMP_PID = re.compile(r'^\.tmp_(\d+)_')
_CLEANED: Set[str] = set()


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temporaries(folder: str) -> int:
    """Removes the ``.tmp_*`` files in ``folder`` whose writing process is gone (or unknown: older
    names carry no pid). Returns how many were removed."""
    removed = 0
    try:
        names = os.listdir(folder)
    except OSError:
        return 0
    for name in names:
        if not name.startswith(TMP_PREFIX):
            continue
        match = _TMP_PID.match(name)
        if match and _pid_alive(int(match.group(1))):
            continue
        try:
            os.remove(osp.join(folder, name))
            removed += 1
        except OSError:
            pass
    return removed


def _atomic(path: str, write: Callable[[str], None]) -> None:
    folder = osp.dirname(osp.abspath(path))
    os.makedirs(folder, exist_ok=True)
    if folder not in _CLEANED:
        _CLEANED.add(folder)
        remove_stale_temporaries(folder)
    fd, tmp = tempfile.mkstemp(prefix=f'{TMP_PREFIX}{os.getpid()}_', suffix=osp.splitext(path)[1], dir=folder)
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


def check_output_location(output: str, inputs: Iterable[Tuple[str, str]], what: str = '--output',
                          nested_inputs: bool = False, is_file: bool = False) -> None:
    """Fails (``ValueError`` naming the option) before any work when ``output`` is, or lies inside,
    one of the ``(name, path)`` inputs, when ``nested_inputs`` and an input lies inside ``output``,
    when it is of the wrong kind, or when it cannot be created or written. Creates nothing. The
    one implementation is :func:`fusion.utils.entry_io.check_output_path` (entry points declare
    their paths there); this keeps the older call for library functions."""
    from fusion.utils.entry_io import check_output_path
    check_output_path(what, output, 'file' if is_file else 'dir', [(n, p, 'dir') for n, p in inputs],
                      holds=nested_inputs)


def file_sha256(path: str, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(chunk), b''):
            h.update(block)
    return h.hexdigest()


def files_digest(files: Mapping[str, str]) -> str:
    """One short digest of ``{name: path}``: every name, its file's base name, size and content
    (changes when any file is added, removed, renamed or rewritten with other bytes)."""
    h = hashlib.sha256()
    for name in sorted(files):
        path = files[name]
        h.update(f'{name}\0{osp.basename(path)}\0{osp.getsize(path)}\0{file_sha256(path)}\n'.encode())
    return h.hexdigest()[:16]
