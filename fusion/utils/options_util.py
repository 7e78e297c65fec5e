"""Option helpers shared by the train and test pipelines."""
from __future__ import annotations

import os.path as osp
from typing import List, Tuple


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


def check_run_folders(opt: dict) -> None:
    """The run's own folder (``path.experiments_root`` or ``path.results_root``: basicsr moves an
    existing one aside, then writes into it) must neither be nor hold nor sit inside an input."""
    from fusion.utils.file_util import check_output_location
    root_key = 'experiments_root' if opt['path'].get('experiments_root') else 'results_root'
    out = opt['path'][root_key]
    inputs = input_folders(opt)
    if not opt.get('auto_resume') and not opt['path'].get('resume_state'):
        # a new run moves an existing run folder aside: a checkpoint inside it would go with it
        inputs += [(f'path.{k}', v) for k, v in opt['path'].items()
                   if k.startswith('pretrain_network_') and isinstance(v, str) and v]
    check_output_location(out, inputs, what=f'path.{root_key}', nested_inputs=True)
