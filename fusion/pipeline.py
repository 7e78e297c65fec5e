"""Test pipeline (and the door to the training loop) on basicsr's option parsing and folders.

Differences from basicsr 1.4.2's ``test_pipeline``: relative data/checkpoint paths that do not
exist from the current folder are resolved against the repository root (so the options work
from any folder), ``path.results_root`` in the options is honoured, and the log ends with where
the fused images went.
"""
from __future__ import annotations

import logging
import os.path as osp

import torch
import yaml
from basicsr.data import build_dataloader, build_dataset
from basicsr.models import build_model
from basicsr.utils import get_env_info, get_root_logger, get_time_str, make_exp_dirs
from basicsr.utils.options import dict2str, ordered_yaml

import fusion  # noqa: F401  (fixes + registries)
from fusion.utils.option_parser import parse_options
from fusion.utils.option_schema import declare_options
from fusion.utils.options_util import check_option_paths, check_run_folders, resolve_relative_paths


# the options this pipeline reads (fusion.utils.option_schema; docs/options.md)
declare_options({'path': {'results_root': 'str'}, 'val': {'save_img': 'bool'}}, phase='test')


def _requested_results_root(opt_path: str):
    with open(opt_path) as f:
        raw = yaml.load(f, Loader=ordered_yaml()[0]) or {}
    return (raw.get('path') or {}).get('results_root')


def test_pipeline(root_path: str) -> None:
    """Builds the test datasets and the model from ``-opt`` and fuses every pair."""
    opt, args = parse_options(root_path, is_train=False)
    results_root = _requested_results_root(args.opt)
    if results_root:
        results_root = osp.abspath(osp.expanduser(results_root))
        opt['path'].update(results_root=results_root, log=results_root,
                           visualization=osp.join(results_root, 'visualization'))
    resolve_relative_paths(opt, root_path)
    check_option_paths(opt)
    check_run_folders(opt, args.opt)
    torch.backends.cudnn.benchmark = True

    make_exp_dirs(opt)
    log_file = osp.join(opt['path']['log'], f"test_{opt['name']}_{get_time_str()}.log")
    logger = get_root_logger(logger_name='basicsr', log_level=logging.INFO, log_file=log_file)
    logger.info(get_env_info())
    logger.info(dict2str(opt))

    test_loaders = []
    for _, dataset_opt in sorted(opt['datasets'].items()):
        test_set = build_dataset(dataset_opt)
        test_loader = build_dataloader(test_set, dataset_opt, num_gpu=opt['num_gpu'], dist=opt['dist'],
                                       sampler=None, seed=opt['manual_seed'])
        logger.info(f"Number of test pairs in {dataset_opt['name']}: {len(test_set)}")
        test_loaders.append(test_loader)

    model = build_model(opt)
    val_opt = opt.setdefault('val', {})
    for test_loader in test_loaders:
        name = test_loader.dataset.opt['name']
        logger.info(f'Testing {name}...')
        model.validation(test_loader, current_iter=opt['name'], tb_logger=None, save_img=val_opt.get('save_img', True))
        if val_opt.get('save_img', True):
            logger.info(f"Fused images of {name}: {osp.join(opt['path']['visualization'], name)}")


def train_pipeline(root_path: str) -> None:
    """Trains the model from ``-opt`` (see ``fusion.training``)."""
    from fusion.training import train_pipeline as _train
    _train(root_path)
