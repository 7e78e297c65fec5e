"""Option helpers shared by the train and test pipelines."""
from __future__ import annotations

import os.path as osp
from typing import List, Optional, Tuple


# option keys holding file or folder paths that may be given relative to the repository root
_PATH_KEY_PREFIXES = ('dataroot_', 'pretrain_network_', 'resume_state', 'mask_cache', 'meta_info')


def resolve_path(value, root_path: str):
    """A relative path that does not exist from the CWD but does under ``root_path`` is
    returned joined to it; other values are returned as they are (``~`` expanded)."""
    if isinstance(value, str) and value and not osp.isabs(value):
        expanded = osp.expanduser(value)
        if not osp.exists(expanded) and osp.exists(osp.join(root_path, expanded)):
            return osp.join(root_path, expanded)
        return expanded
    return value


def resolve_relative_paths(opt: dict, root_path: str) -> None:
    """Data roots, caches and checkpoints given relative to the repository root work from any
    working directory (basicsr resolves them against the CWD only)."""
    def visit(node: dict) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                visit(value)
            elif key.startswith(_PATH_KEY_PREFIXES) or key in ('checkpoint',):
                node[key] = resolve_path(value, root_path)
    for section in ('datasets', 'path', 'sam'):
        if isinstance(opt.get(section), dict):
            visit(opt[section])


def check_option_paths(opt: dict) -> None:
    """Fails before anything is created or archived when a data folder, cache or checkpoint named
    in the options does not exist (basicsr would first archive the experiment folder, then crash)."""
    missing = []
    for phase, ds in (opt.get('datasets') or {}).items():
        for key, value in ds.items():
            if key.startswith(('dataroot_', 'mask_cache', 'meta_info')) and value and not osp.exists(value):
                missing.append(f'datasets.{phase}.{key}: {value}')
    for key, value in (opt.get('path') or {}).items():
        if key.startswith(('pretrain_network_', 'resume_state')) and value and not osp.exists(value):
            missing.append(f'path.{key}: {value}')
    sam_ckpt = (opt.get('sam') or {}).get('checkpoint')
    if sam_ckpt and not osp.exists(sam_ckpt):
        missing.append(f'sam.checkpoint: {sam_ckpt}')
    if missing:
        raise FileNotFoundError('options name files or folders that do not exist:\n  ' + '\n  '.join(missing))


def input_folders(opt: dict) -> List[Tuple[str, str]]:
    """``(option name, path)`` of every data folder / cache the options read."""
    inputs = []
    for phase, ds in (opt.get('datasets') or {}).items():
        for key, value in (ds or {}).items():
            if key.startswith(('dataroot_', 'mask_cache', 'meta_info')) and isinstance(value, str) and value:
                inputs.append((f'datasets.{phase}.{key}', value))
    return inputs


PathList = List[Tuple[str, str, str]]


def option_paths(opt: dict, opt_path: Optional[str] = None) -> Tuple[PathList, PathList]:
    """``(inputs, outputs)`` of parsed options, ``(option, path, kind)`` each (the YAML entry points'
    declaration, fusion.utils.entry_io): inputs are the option file (``-opt``), the data folders,
    mask caches and meta-info files, ``sam.checkpoint`` and, for a new run (it moves an existing run
    folder aside), the ``path.pretrain_network_*`` checkpoints; a resumed run keeps its folder, so
    its own checkpoints and ``path.resume_state`` may lie inside it. Outputs are the run folder
    (``path.experiments_root`` or ``path.results_root``; logs, models, visualization inside it)
    and, when training with ``logger.use_tb_logger``, ``tb_logger/<name>``."""
    paths = opt.get('path') or {}
    inputs: List[Tuple[str, str, str]] = []
    if opt_path:
        inputs.append(('-opt', opt_path, 'file'))
    inputs += [(name, path, 'dir') for name, path in input_folders(opt)]
    sam_ckpt = (opt.get('sam') or {}).get('checkpoint')
    if isinstance(sam_ckpt, str) and sam_ckpt:
        inputs.append(('sam.checkpoint', sam_ckpt, 'file'))
    if not opt.get('auto_resume') and not paths.get('resume_state'):
        inputs += [(f'path.{k}', v, 'file') for k, v in paths.items()
                   if k.startswith('pretrain_network_') and isinstance(v, str) and v]
    root_key = 'experiments_root' if paths.get('experiments_root') else 'results_root'
    outputs: List[Tuple[str, str, str]] = []
    if paths.get(root_key):
        outputs.append((f'path.{root_key}', paths[root_key], 'dir'))
    if paths.get('visualization'):
        outputs.append(('path.visualization', paths['visualization'], 'dir'))
    logger = opt.get('logger') or {}
    if opt.get('is_train') and logger.get('use_tb_logger') and opt.get('root_path') and opt.get('name') \
            and 'debug' not in opt['name']:
        outputs.append(('logger.use_tb_logger (tb_logger/<name>)',
                        osp.join(opt['root_path'], 'tb_logger', opt['name']), 'dir'))
    return inputs, outputs


def check_run_folders(opt: dict, opt_path: Optional[str] = None) -> None:
    """Every output of the options (:func:`option_paths`: the run folder, basicsr moves an existing
    one aside, then writes into it; the tb_logger folder) must neither be nor hold nor sit inside an
    input, and must be writable; one ``ValueError`` line naming both options otherwise."""
    from fusion.utils.entry_io import check_paths
    inputs, outputs = option_paths(opt, opt_path)
    check_paths(outputs, inputs)
