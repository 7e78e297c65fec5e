"""Folders a run creates, removed again when it fails before its first iteration.

basicsr's ``make_exp_dirs`` creates ``experiments/<name>/`` (moving an existing one aside to
``<name>_archived_<time>``) and the tensorboard logger creates ``tb_logger/<name>/`` long before
the first iteration; a run that then fails on its data or networks would leave an empty
experiment behind (and have archived the previous one). :class:`NewRunFolders` notes what
existed before and, on :meth:`discard`, removes what the run created and moves an archived
folder back.
"""
from __future__ import annotations

import os
import os.path as osp
import shutil
from typing import Dict, List, Sequence


class NewRunFolders:
    """Snapshot of ``folders`` (and their ``_archived_`` siblings) at construction."""

    def __init__(self, folders: Sequence[str]) -> None:
        self.folders = [osp.abspath(f) for f in folders]
        self.existed: Dict[str, bool] = {f: osp.exists(f) for f in self.folders}
        self.archives: Dict[str, List[str]] = {f: self._archives(f) for f in self.folders}
        # parents such as tb_logger/ that this run creates go again too (when left empty)
        self.new_parents = [p for p in {osp.dirname(f) for f in self.folders} if not osp.exists(p)]
        self.kept = False

    @staticmethod
    def _archives(folder: str) -> List[str]:
        parent, base = osp.split(folder)
        if not osp.isdir(parent):
            return []
        return sorted(osp.join(parent, n) for n in os.listdir(parent) if n.startswith(base + '_archived_'))

    def keep(self) -> None:
        """The run has started: its folders stay whatever happens next."""
        self.kept = True

    def discard(self) -> None:
        """Removes the folders this run created and restores the ones it archived (no-op after keep)."""
        if self.kept:
            return
        for folder in self.folders:
            new_archives = [a for a in self._archives(folder) if a not in self.archives[folder]]
            if not self.existed[folder] or new_archives:
                shutil.rmtree(folder, ignore_errors=True)
            if new_archives and not osp.exists(folder):
                os.rename(new_archives[-1], folder)
        for parent in self.new_parents:
            if osp.isdir(parent) and not os.listdir(parent):
                os.rmdir(parent)
