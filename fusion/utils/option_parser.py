"""Reading the ``-opt`` file of fusion/train.py and fusion/test.py: basicsr 1.4.2's ``parse_options``
with clear errors and option validation.

Differences from ``basicsr.utils.options.parse_options``, each for a reason:

* a missing file, a YAML syntax error, a malformed ``--force_yml`` entry (basicsr ``exec``s it)
  end in an :class:`OptionError` naming the file or the entry, not a traceback;
* the options (as written, plus ``--force_yml``) are validated by
  :func:`fusion.utils.option_schema.validate_options` before anything is created; numeric strings
  (``lr: 2e-3``) become numbers;
* ``--force_yml`` values are read as YAML (``[1, 2]``, ``true``, ``~``, ``!!float 1e-4``), never eval'd;
* ``num_gpu`` defaults to ``auto`` and ``path`` / ``logger`` / ``val`` may be left out.

What basicsr then adds (``dist``, ``rank``, ``world_size``, ``auto_resume``, ``is_train``,
``datasets.*.phase``, ``path.experiments_root`` / ``results_root`` / ``log`` / ``visualization``
...) is added here the same way, after validation. ``--debug`` keeps basicsr's meaning (name
prefixed ``debug_``, frequent logs and checkpoints) and also shows tracebacks (fusion.utils.cli).
"""
from __future__ import annotations

import argparse
import os.path as osp
import random
from typing import Any, Tuple

import torch
import yaml

from fusion.utils.entry_io import input_arg, number_arg, parse_checked, plain_arg
from fusion.utils.option_schema import (Choice, Component, DictOf, OptionError, Range, Required, declare_check,
                                        declare_options, validate_options)


# the keys basicsr's parse_options, build_dataloader and train loop read (the framework's own)
declare_options({
    'name': Required('label'),
    'model_type': 'str',
    'num_gpu': 'int|str',
    'manual_seed': Range('int', 0),
    'scale': Range('int', 1),
    # under --launcher pytorch (torchrun sets the address and port): the process group's backend
    # and timeout, and how long ranks wait for rank 0's validation (docs/distributed.md)
    'dist_params': {'backend': Choice('nccl', 'gloo'), 'timeout': Range('number', 0, open_min=True),
                    'validation_timeout': Range('number', 0, open_min=True)},
    'find_unused_parameters': 'bool',
    'datasets': Required(DictOf(Component('dataset', extra={
        'name': Required('label'), 'type': 'str',
        # basicsr.data.build_dataloader
        'batch_size_per_gpu': Range('int', 1), 'num_worker_per_gpu': Range('int', 0),
        'dataset_enlarge_ratio': Range('number', 0, open_min=True),
        'use_shuffle': 'bool', 'pin_memory': 'bool', 'persistent_workers': 'bool',
        'prefetch_mode': Choice('cpu', 'cuda'), 'num_prefetch_queue': Range('int', 1)}))),
    'network_*': Component('arch'),
    'path': {
        'pretrain_network_*': 'str', 'strict_load_*': 'bool', 'param_key_*': 'str',
        'resume_state': 'str',
    },
    'val': {'metrics': DictOf(Component('metric'))},
    'logger': {},
})


def _check_num_gpu(opt: dict):
    value = opt.get('num_gpu', 'auto')
    if value is None or value == 'auto' or (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
        return None
    return f'num_gpu: expected auto or a number of GPUs (0: CPU), got {value!r}'


declare_check(_check_num_gpu)


def read_option_file(path: str) -> dict:
    """The YAML of ``path`` as an ordered dict; errors name the file (and line)."""
    from basicsr.utils.options import ordered_yaml
    if not osp.isfile(path):
        raise OptionError(f'-opt {path}: no such option file')
    try:
        with open(path) as f:
            opt = yaml.load(f, Loader=ordered_yaml()[0])
    except yaml.YAMLError as err:
        mark = getattr(err, 'problem_mark', None)
        where = f' line {mark.line + 1}, column {mark.column + 1}' if mark is not None else ''
        problem = getattr(err, 'problem', None) or str(err).splitlines()[0]
        raise OptionError(f'{path}:{where}: YAML syntax error: {problem}') from err
    except UnicodeDecodeError as err:
        raise OptionError(f'{path}: not a text (YAML) file') from err
    if not isinstance(opt, dict):
        raise OptionError(f'{path}: expected options as key: value lines, got {type(opt).__name__}')
    return opt


def _force_value(text: str, entry: str) -> Any:
    text = text.strip()
    if text == '~' or text.lower() == 'none':
        return None
    if text.startswith('!!float'):
        try:
            return float(text.replace('!!float', ''))
        except ValueError as err:
            raise OptionError(f'--force_yml {entry}: {text!r} is not a number') from err
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise OptionError(f'--force_yml {entry}: cannot read the value {text!r}') from err


def apply_force_yml(opt: dict, entries) -> None:
    """``section:key=value`` entries (basicsr's syntax) applied to ``opt``; the sections must exist."""
    for entry in entries or []:
        if '=' not in entry:
            raise OptionError(f'--force_yml {entry}: expected section:key=value (e.g. train:ema_decay=0.999)')
        keys, value = entry.split('=', 1)
        path = [k.strip() for k in keys.strip().split(':')]
        if not all(path):
            raise OptionError(f'--force_yml {entry}: empty key in {keys!r} (expected section:key=value)')
        node = opt
        for i, key in enumerate(path[:-1]):
            if not isinstance(node, dict) or key not in node or not isinstance(node[key], dict):
                raise OptionError(f'--force_yml {entry}: the options have no section {":".join(path[:i + 1])}')
            node = node[key]
        node[path[-1]] = _force_value(value, entry)


def build_parser() -> argparse.ArgumentParser:
    """basicsr's arguments of fusion/train.py and fusion/test.py; the paths the option file names
    are declared by :func:`fusion.utils.options_util.option_paths`."""
    parser = argparse.ArgumentParser()
    input_arg(parser, '-opt', kind='file', type=str, required=True, help='Path to option YAML file.')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm'], default='none', help='job launcher')
    parser.add_argument('--auto_resume', action='store_true')
    parser.add_argument('--debug', action='store_true', help='basicsr debug mode; errors show their traceback')
    number_arg(parser, '--local_rank', int, min=0, default=0)
    plain_arg(parser, '--force_yml', nargs='+', default=None,
              help='Force to update yml files. Examples: train:ema_decay=0.999')
    return parser


def parse_options(root_path: str, is_train: bool = True, argv=None) -> Tuple[dict, argparse.Namespace]:
    """basicsr's parse_options (same arguments and result), validating the options first."""
    import basicsr.utils.options as bs_options
    from basicsr.utils import set_random_seed
    from basicsr.utils.dist_util import get_dist_info
    from basicsr.utils.options import init_dist  # noqa: F401  (patched by fusion.utils.compat)

    args = parse_checked(build_parser(), argv)

    opt = read_option_file(args.opt)
    apply_force_yml(opt, args.force_yml)
    validate_options(opt, is_train, source=args.opt)

    if args.launcher == 'none':
        opt['dist'] = False
        print('Disable distributed.', flush=True)
    else:
        opt['dist'] = True
        dist_params = opt.get('dist_params') or {}
        bs_options.init_dist(args.launcher, backend=dist_params.get('backend'), timeout=dist_params.get('timeout'))
    opt['rank'], opt['world_size'] = get_dist_info()

    seed = opt.get('manual_seed')
    if seed is None:
        seed = random.randint(1, 10000)
        opt['manual_seed'] = seed
    set_random_seed(seed + opt['rank'])

    opt['auto_resume'] = args.auto_resume
    opt['is_train'] = is_train
    if args.debug and not opt['name'].startswith('debug'):
        opt['name'] = 'debug_' + opt['name']
    if opt.get('num_gpu', 'auto') == 'auto':
        opt['num_gpu'] = torch.cuda.device_count()
    opt['path'] = opt.get('path') or {}
    opt['logger'] = opt.get('logger') or {}

    for phase, dataset in opt['datasets'].items():
        dataset['phase'] = phase.split('_')[0]
        if 'scale' in opt:
            dataset['scale'] = opt['scale']
    for key, val in opt['path'].items():
        if val is not None and ('resume_state' in key or 'pretrain_network' in key):
            opt['path'][key] = osp.expanduser(val)

    if is_train:
        experiments_root = osp.join(root_path, 'experiments', opt['name'])
        opt['path'].update(experiments_root=experiments_root, models=osp.join(experiments_root, 'models'),
                           training_states=osp.join(experiments_root, 'training_states'), log=experiments_root,
                           visualization=osp.join(experiments_root, 'visualization'))
        if 'debug' in opt['name']:
            if opt.get('val'):
                opt['val']['val_freq'] = 8
            opt['logger']['print_freq'] = 1
            opt['logger']['save_checkpoint_freq'] = 8
    else:
        results_root = osp.join(root_path, 'results', opt['name'])
        opt['path'].update(results_root=results_root, log=results_root,
                           visualization=osp.join(results_root, 'visualization'))
    return opt, args
