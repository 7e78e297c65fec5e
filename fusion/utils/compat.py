"""Fixes that make basicsr 1.4.2 work on torch >= 2.x, torchvision >= 0.17, CPU-only machines.

Every fix lives here, is idempotent, and only applies when the problem is actually present,
so a future basicsr release that fixes one upstream is left alone. ``fusion/__init__.py`` calls
:func:`apply_pre_import` before anything imports basicsr and :func:`apply_post_import` after.
Each fix has a test in ``tests/test_compat.py`` that fails without it.
"""
from __future__ import annotations

import datetime
import functools
import importlib
import os.path as osp
import sys
from typing import Any, Callable, Optional

import torch


_APPLIED: dict = {}
# the replaced basicsr functions, kept so the tests can show the failure each fix removes
_ORIGINALS: dict = {}


def fix_functional_tensor_alias() -> bool:
    """basicsr/data/degradations.py imports ``torchvision.transforms.functional_tensor``, which
    torchvision 0.17 renamed to ``_functional_tensor``. Alias the new module under the old name."""
    try:
        importlib.import_module('torchvision.transforms.functional_tensor')
        return False
    except ImportError:
        pass
    from torchvision.transforms import _functional_tensor
    sys.modules['torchvision.transforms.functional_tensor'] = _functional_tensor
    return True


def _load_state_file(path: str, map_location: str) -> dict:
    """A training state, or ValueError naming the file when it is truncated or not a state."""
    try:
        # our own files: they hold optimizer states with python objects, so weights_only=False
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:  # noqa: BLE001  (torch raises many types for corrupt files)
        raise ValueError(f'{path}: cannot read the training state ({type(err).__name__}: '
                         f'{str(err).splitlines()[0] if str(err) else "truncated or corrupt"})') from err
    if not isinstance(state, dict) or 'iter' not in state:
        raise ValueError(f'{path}: not a training state (no "iter" entry)')
    return state


def load_resume_state(opt: dict) -> Optional[dict]:
    """CPU-safe replacement of ``basicsr.train.load_resume_state``.

    The original calls ``torch.cuda.current_device()`` (crashes without a GPU) and looks for
    ``experiments/<name>/training_states`` relative to the CWD instead of the experiment root.
    ``--auto_resume`` takes the newest state that loads: a truncated or corrupt newer one (a run
    killed while saving on a file system without atomic rename) is skipped with a warning naming
    it; when none loads, the error names the newest. An explicit ``path.resume_state`` that does
    not load is an error naming it.
    """
    from basicsr.utils import check_resume, scandir

    if torch.cuda.is_available() and opt.get('num_gpu', 0) != 0:
        map_location = f'cuda:{torch.cuda.current_device()}'
    else:
        map_location = 'cpu'
    resume_state = None
    if opt.get('auto_resume'):
        state_dir = opt['path'].get('training_states') or osp.join(
            opt.get('root_path', '.'), 'experiments', opt['name'], 'training_states')
        if osp.isdir(state_dir):
            states = [v for v in scandir(state_dir, suffix='state', recursive=False, full_path=False)]
            iters = []
            for v in states:
                try:
                    iters.append(int(float(v.split('.state')[0])))
                except ValueError:  # e.g. a temporary file of an interrupted save
                    continue
            bad = []
            for it in sorted(iters, reverse=True):
                path = osp.join(state_dir, f'{it}.state')
                try:
                    resume_state = _load_state_file(path, map_location)
                except ValueError as err:
                    bad.append(err)
                    print(f'warning: --auto_resume: skipping {path}: {str(err).split(": ", 1)[-1]}',
                          file=sys.stderr, flush=True)
                    continue
                opt['path']['resume_state'] = path
                break
            if resume_state is None and bad:
                raise ValueError(f'--auto_resume: no training state in {state_dir} can be read; '
                                 f'the newest: {bad[0]}')
    elif opt['path'].get('resume_state'):
        path = opt['path']['resume_state']
        if not osp.isfile(path):
            raise FileNotFoundError(f'resume_state: no such training state file: {path}')
        resume_state = _load_state_file(path, map_location)

    if resume_state is None:
        return None
    check_resume(opt, resume_state['iter'])
    return resume_state


def init_dist(launcher: str, backend: Optional[str] = None, timeout: Optional[float] = None, **kwargs: Any) -> None:
    """Replacement of ``basicsr.utils.dist_util.init_dist`` (``--launcher pytorch``, i.e. torchrun):
    the original forces NCCL and divides by the GPU count (CPU DDP crashes). Delegates to
    :func:`fusion.utils.dist_util.init_dist`: gloo without CUDA, ``set_device`` only with CUDA;
    ``backend`` and ``timeout`` (seconds) are ``dist_params.backend`` / ``dist_params.timeout``."""
    import torch.multiprocessing as mp

    from fusion.utils.dist_util import init_dist as _init

    if mp.get_start_method(allow_none=True) is None:
        mp.set_start_method('spawn')
    if launcher != 'pytorch':
        raise ValueError(f'Invalid launcher type: {launcher} (only "pytorch", i.e. torchrun, is supported)')
    _init(backend, None if timeout is None else datetime.timedelta(seconds=float(timeout)))


def fix_message_logger_eta() -> bool:
    """basicsr's MessageLogger estimates the remaining time as avg x (total - current - 1): one
    iteration short, so the last log line reads ``eta: -1 day, 23:59:59``. Counting one more
    iteration during the call gives avg x (total - current)."""
    from basicsr.utils.logger import MessageLogger

    original = MessageLogger.__call__
    if getattr(original, '_fusion_eta_fix', False):
        return False
    _ORIGINALS.setdefault('basicsr.utils.logger.MessageLogger.__call__', original)

    @functools.wraps(original)
    def __call__(self, log_vars):
        self.max_iters += 1
        try:
            return original(self, log_vars)
        finally:
            self.max_iters -= 1

    __call__._fusion_eta_fix = True
    MessageLogger.__call__ = __call__
    return True


def _patch(module_name: str, attr: str, new: Callable) -> bool:
    module = importlib.import_module(module_name)
    current = getattr(module, attr, None)
    if current is new:
        return False
    _ORIGINALS.setdefault(f'{module_name}.{attr}', current)
    setattr(module, attr, new)
    return True


def apply_pre_import() -> None:
    """Fixes needed before ``import basicsr`` works at all."""
    if not _APPLIED.get('pre'):
        _APPLIED['functional_tensor'] = fix_functional_tensor_alias()
        _APPLIED['pre'] = True


def apply_post_import() -> None:
    """Replace basicsr functions that assume a GPU. The pipelines look the names up at call time."""
    apply_pre_import()
    _patch('basicsr.train', 'load_resume_state', load_resume_state)
    # parse_options imported init_dist into its own namespace: patch both places
    _patch('basicsr.utils.options', 'init_dist', init_dist)
    _patch('basicsr.utils.dist_util', 'init_dist', init_dist)
    _APPLIED['message_logger_eta'] = fix_message_logger_eta() or _APPLIED.get('message_logger_eta', False)
    _APPLIED['post'] = True
