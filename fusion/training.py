"""The training loop: basicsr's building blocks, an exact iteration count and exact resumption.

Differences from ``basicsr.train.train_pipeline`` (1.4.2), each for a reason:

* ``while current_iter < total_iter``: exactly ``train.total_iter`` iterations. basicsr's
  epoch-bounded loop with ``drop_last`` can stop early (basicsr_notes row 10).
* Data are a pure function of (seed, epoch, position): every sample is loaded with the global
  python/numpy/torch RNGs seeded from those three (and restored afterwards in the main process),
  the epoch order comes from basicsr's ``EnlargedSampler`` (seeded by the epoch), and a resumed
  epoch skips the batches already consumed without loading them. So crops/flips and the order
  are identical with or without interruption, for any number of workers. The position is the
  sample's place in the epoch's *global* order, so under DDP (torchrun) every rank reads
  distinct samples with distinct seeds, and N processes with batch b read exactly the samples
  (same crops) of one process with batch N x b (docs/distributed.md).
* Data loaders draw their worker seeds from their own generators, so validation and loader
  restarts never move the global RNG; the model's RNG states are saved and restored.
* ``train.stop_at_iter`` stops cleanly after that iteration with a checkpoint (for jobs with a
  time limit, and for the resume test); ``--auto_resume`` continues.
* Tensorboard: every loss term (``losses/l_*``), every network's learning rate (``lr/<net>``),
  and an image grid (IR, visible, teacher, student) every ``logger.image_freq`` iterations.
"""
from __future__ import annotations

import datetime
import logging
import math
import os.path as osp
import time
from dataclasses import dataclass
from typing import Iterator, List, Optional, Tuple

import torch
from basicsr.data import build_dataloader, build_dataset
from basicsr.data.data_sampler import EnlargedSampler
from basicsr.data.prefetch_dataloader import CPUPrefetcher, CUDAPrefetcher
from basicsr.models import build_model
from basicsr.train import init_tb_loggers
from basicsr.utils import (AvgTimer, MessageLogger, get_env_info, get_root_logger, get_time_str, make_exp_dirs,
                           mkdir_and_rename)
from basicsr.utils.options import copy_opt_file, dict2str
from torch.utils.data import Sampler

from fusion.utils.compat import load_resume_state
from fusion.utils.dist_util import RankWait, destroy_dist
from fusion.utils.option_parser import parse_options
from fusion.utils.option_schema import Range, Required, declare_check, declare_options
from fusion.utils.options_util import check_option_paths, check_run_folders, resolve_relative_paths
from fusion.utils.rng_util import restore_rng_state
from fusion.utils.run_dirs import NewRunFolders
from fusion.utils.seeded_samples import SeededSamples, sample_seed


__all__ = ['train_pipeline', 'run_training', 'SeededSamples', 'ResumableSampler', 'sample_seed', 'LoopSchedule']

# how long (seconds) the other ranks wait for rank 0's validation by default (dist_params.validation_timeout)
DEFAULT_VALIDATION_TIMEOUT = 6 * 3600

# the options this loop reads (fusion.utils.option_schema; docs/options.md)
declare_options({
    'num_threads': Range('int', 1),
    'train': Required({'total_iter': Required(Range('int', 1)), 'stop_at_iter': Range('int', 1),
                       'deterministic': 'bool'}),
    'val': {'val_freq': Range('int', 1), 'save_img': 'bool'},
    'logger': {'print_freq': Range('int', 1), 'save_checkpoint_freq': Range('int', 1), 'image_freq': Range('int', 1),
               'use_tb_logger': 'bool',
               'wandb': {'project': 'str', 'resume_id': 'str', 'entity': 'str'}},
    'path': {'ignore_resume_networks': 'str|list'},
}, phase='train')


def _check_dataset_phases(opt: dict):
    bad = [p for p in (opt.get('datasets') or {}) if p != 'train' and p.split('_')[0] != 'val']
    if bad:
        return f'datasets.{bad[0]}: unknown dataset phase (use train, val, val_1, ...)'
    if 'train' not in (opt.get('datasets') or {}):
        return 'datasets.train: required option is missing (the training data)'
    return None


declare_check(_check_dataset_phases, phase='train')


class ResumableSampler(Sampler):
    """basicsr's ``EnlargedSampler`` order, yielding ``(index, sample_seed)`` and able to start
    an epoch at a given position (resumption skips what was consumed without loading it)."""

    def __init__(self, base: EnlargedSampler, seed: int, rank: int = 0, world_size: int = 1) -> None:
        self.base = base
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch = int(epoch)
        self.start = int(start)
        self.base.set_epoch(epoch)

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        indices = list(iter(self.base))
        for position in range(self.start, len(indices)):
            # EnlargedSampler gives rank r the global positions r, r + W, r + 2W, ...
            yield indices[position], sample_seed(self.seed, self.epoch, self.rank + self.world_size * position)

    def __len__(self) -> int:
        return len(self.base) - self.start


def _seeded_generator(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(int(seed))
    return g


def create_dataloaders(opt: dict, logger: logging.Logger):
    """Train loader (seeded samples, resumable order) and validation loaders."""
    train_loader, train_sampler, val_loaders = None, None, []
    for phase, dataset_opt in opt['datasets'].items():
        if phase == 'train':
            enlarge = dataset_opt.get('dataset_enlarge_ratio', 1)
            train_set = build_dataset(dataset_opt)
            base_sampler = EnlargedSampler(train_set, opt['world_size'], opt['rank'], enlarge)
            train_sampler = ResumableSampler(base_sampler, opt['manual_seed'], opt['rank'], opt['world_size'])
            train_loader = build_dataloader(SeededSamples(train_set), dataset_opt, num_gpu=opt['num_gpu'],
                                            dist=opt['dist'], sampler=train_sampler, seed=opt['manual_seed'])
            # worker base seeds from the loader's own generator: the global RNG is not touched
            train_loader.generator = _seeded_generator(opt['manual_seed'])
            iters_per_epoch = len(base_sampler) // train_loader.batch_size
            if iters_per_epoch == 0:
                raise ValueError(f'datasets.train: {len(train_set)} images x dataset_enlarge_ratio {enlarge} give '
                                 f'fewer samples per process ({len(base_sampler)}) than one batch '
                                 f'({train_loader.batch_size}); '
                                 'raise dataset_enlarge_ratio or lower batch_size_per_gpu')
            total_iter = int(opt['train']['total_iter'])
            logger.info('Training statistics:'
                        f'\n\tNumber of train images: {len(train_set)}'
                        f'\n\tDataset enlarge ratio: {enlarge}'
                        f'\n\tBatch size per gpu: {dataset_opt["batch_size_per_gpu"]}'
                        f'\n\tWorld size (gpu number): {opt["world_size"]}'
                        f'\n\tIters per epoch: {iters_per_epoch}'
                        f'\n\tTotal iters: {total_iter} (about {math.ceil(total_iter / iters_per_epoch)} epochs).')
        elif phase.split('_')[0] == 'val':
            val_set = build_dataset(dataset_opt)
            val_loader = build_dataloader(val_set, dataset_opt, num_gpu=opt['num_gpu'], dist=opt['dist'],
                                          sampler=None, seed=opt['manual_seed'])
            val_loader.generator = _seeded_generator(opt['manual_seed'])
            logger.info(f'Number of val images in {dataset_opt["name"]}: {len(val_set)}')
            val_loaders.append(val_loader)
        else:
            raise ValueError(f'Dataset phase {phase} is not recognized (use train, val, val_1, ...).')
    if train_loader is None:
        raise ValueError('datasets.train is required for training')
    return train_loader, train_sampler, val_loaders


def _make_prefetcher(opt: dict, loader):
    mode = opt['datasets']['train'].get('prefetch_mode')
    if mode is None or mode == 'cpu':
        return CPUPrefetcher(loader)
    if mode == 'cuda':
        if opt['datasets']['train'].get('pin_memory') is not True:
            raise ValueError('prefetch_mode cuda needs pin_memory: true in datasets.train')
        return CUDAPrefetcher(loader, opt)
    raise ValueError(f'datasets.train.prefetch_mode must be none, cpu or cuda, got {mode!r}')


def _log_images(model, tb_logger, current_iter: int) -> None:
    if tb_logger is None:
        return
    from torchvision.utils import make_grid

    visuals = model.get_current_visuals()
    if not visuals:
        return
    keys = list(visuals)
    rows = torch.stack([visuals[k] for k in keys], dim=1)  # N x K x 1 x H x W: one row per sample
    grid = make_grid(rows.flatten(0, 1), nrow=len(keys), padding=2, pad_value=1.0)
    tb_logger.add_image(f'train/{"_".join(keys)}', grid, current_iter)


def _validate(model, val_loaders: List, opt: dict, current_iter: int, tb_logger) -> None:
    for val_loader in val_loaders:
        model.validation(val_loader, current_iter, tb_logger, opt['val'].get('save_img', True))


# ---------------------------------------------------------------------------------------------- the steps
# run_training reads top to bottom: folders, logger and torch settings, data, model and resumption
# (with the world-size warnings), per-rank RNG, then the loop. What the loop and the model hand to
# each other is FusionBaseModel's documented interface (loop_state, resumed_rng, learning_rates,
# get_current_visuals, validation).

@dataclass
class LoopSchedule:
    """When the loop does what: exactly ``total_iter`` iterations (``stop_at`` stops early, with
    a checkpoint) and the frequency checks of ``logger`` and ``val``."""

    total_iter: int
    iters_per_epoch: int
    batch_size: int
    stop_at: Optional[int]
    print_freq: int
    save_freq: int
    val_freq: Optional[int]
    image_freq: int

    @classmethod
    def from_options(cls, opt: dict, train_loader, train_sampler: ResumableSampler) -> 'LoopSchedule':
        batch_size = train_loader.batch_size
        stop_at = opt['train'].get('stop_at_iter')
        logger_opt = opt['logger']
        save_freq = int(logger_opt.get('save_checkpoint_freq', 5000))
        val_opt = opt.get('val')
        val_freq = int(val_opt['val_freq']) if val_opt and val_opt.get('val_freq') else None
        return cls(total_iter=int(opt['train']['total_iter']), iters_per_epoch=len(train_sampler.base) // batch_size,
                   batch_size=batch_size, stop_at=None if stop_at in (None, 0) else int(stop_at),
                   print_freq=int(logger_opt.get('print_freq', 100)), save_freq=save_freq, val_freq=val_freq,
                   image_freq=int(logger_opt.get('image_freq') or val_freq or save_freq))

    def prints(self, it: int) -> bool:
        return it % self.print_freq == 0

    def logs_images(self, it: int) -> bool:
        return it % self.image_freq == 0

    def saves(self, it: int) -> bool:
        return it % self.save_freq == 0 or it == self.stop_at

    def validates(self, it: int) -> bool:
        return bool(self.val_freq) and it % self.val_freq == 0

    def stops(self, it: int) -> bool:
        return it == self.stop_at


def _make_run_folders(opt: dict, opt_path: str, resume_state: Optional[dict]) -> None:
    """A fresh run creates the experiment (and tensorboard) folders; every run copies its options."""
    if resume_state is None:
        make_exp_dirs(opt)
        if opt['logger'].get('use_tb_logger') and 'debug' not in opt['name'] and opt['rank'] == 0:
            mkdir_and_rename(osp.join(opt['root_path'], 'tb_logger', opt['name']))
    copy_opt_file(opt_path, opt['path']['experiments_root'])


def _start_logger(opt: dict) -> logging.Logger:
    log_file = osp.join(opt['path']['log'], f"train_{opt['name']}_{get_time_str()}.log")
    logger = get_root_logger(logger_name='basicsr', log_level=logging.INFO, log_file=log_file)
    logger.info(get_env_info())
    logger.info(dict2str(opt))
    return logger


def _apply_torch_settings(opt: dict, logger: logging.Logger) -> None:
    if opt.get('num_threads'):
        # CPU threads of torch. On a CPU shared with other jobs, OpenMP threads that outnumber the
        # free cores spin against each other: 1 thread was 100x faster than 2 on a busy 2-core VM
        torch.set_num_threads(int(opt['num_threads']))
        logger.info(f'torch CPU threads: {torch.get_num_threads()}')
    deterministic = bool(opt['train'].get('deterministic', False))
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cudnn.deterministic = deterministic


def _resume(model, resume_state: Optional[dict], opt: dict, schedule: LoopSchedule, logger: logging.Logger) -> int:
    """Restores the model from ``resume_state`` (warning when the world size or the iterations per
    epoch changed since it was saved) and returns the iteration to continue from (0: fresh run)."""
    if not resume_state:
        return 0
    model.resume_training(resume_state)
    current_iter = int(resume_state['iter'])
    saved_loop = model.loop_state or {}
    saved_world = int(saved_loop.get('world_size', 1)) if saved_loop else opt['world_size']
    if saved_world != opt['world_size']:
        # works by design (per-sample seeds are global; rank 0's checkpoint holds the whole
        # state); the data continue exactly when the global batch stayed the same
        logger.warning(f'resume: the state was saved by {saved_world} process(es), this run has '
                       f'{opt["world_size"]}: global batch {saved_world * int(saved_loop.get("batch_size", 0))} '
                       f'then, {opt["world_size"] * schedule.batch_size} now (docs/distributed.md).')
    if saved_loop and saved_loop.get('iters_per_epoch') != schedule.iters_per_epoch:
        logger.warning(f'resume: {schedule.iters_per_epoch} iterations per epoch now, '
                       f'{saved_loop.get("iters_per_epoch")} when the state was saved (dataset or batch size '
                       'changed): the data order will differ.')
    logger.info(f'Resuming training from iter {current_iter} (epoch {current_iter // schedule.iters_per_epoch}).')
    return current_iter


def _restore_rank_rng(model, resume_state: Optional[dict], opt: dict) -> None:
    """Continues the model's RNG stream exactly where the saved run left it: each rank its own
    stream when the state holds every rank's and the world size is unchanged, else rank 0's."""
    rng = model.resumed_rng
    per_rank = (resume_state or {}).get('rng_per_rank')
    if rng and per_rank and len(per_rank) == opt['world_size']:
        rng = per_rank[opt['rank']]
    if rng:
        restore_rng_state(rng)


class _Loop:
    """The iterations from ``current_iter`` to the end (or ``stop_at``), with the frequency checks:
    log, images, checkpoint, validation (every rank waits for it: :class:`RankWait`), stop."""

    def __init__(self, model, opt: dict, schedule: LoopSchedule, train_sampler: ResumableSampler, prefetcher,
                 val_loaders: List, tb_logger, logger: logging.Logger, current_iter: int) -> None:
        self.model, self.opt, self.schedule = model, opt, schedule
        self.train_sampler, self.prefetcher, self.val_loaders = train_sampler, prefetcher, val_loaders
        self.tb_logger, self.logger = tb_logger, logger
        self.current_iter = current_iter
        self.epoch = current_iter // schedule.iters_per_epoch
        self.msg_logger = MessageLogger(opt, current_iter, tb_logger)
        self.waiter = RankWait(float((opt.get('dist_params') or {}).get('validation_timeout')
                                     or DEFAULT_VALIDATION_TIMEOUT))
        self.data_timer, self.iter_timer = AvgTimer(), AvgTimer()
        self.last_saved = self.last_validated = None
        self.stopped = False

    def run(self) -> None:
        schedule = self.schedule
        start_time = time.time()
        while self.current_iter < schedule.total_iter and not self.stopped:
            self._run_epoch()
        consumed = str(datetime.timedelta(seconds=int(time.time() - start_time)))
        if not self.stopped:
            self._finish(consumed)

    def _run_epoch(self) -> None:
        schedule = self.schedule
        self.epoch = self.current_iter // schedule.iters_per_epoch
        self.train_sampler.set_epoch(self.epoch, (self.current_iter % schedule.iters_per_epoch) * schedule.batch_size)
        self.prefetcher.reset()
        train_data = self.prefetcher.next()
        while train_data is not None and self.current_iter < schedule.total_iter:
            self.data_timer.record()
            self.current_iter += 1
            self.model.feed_data(train_data)
            self.model.optimize_parameters(self.current_iter)
            self.iter_timer.record()
            if self._after_iteration(self.current_iter):
                self.stopped = True
                break
            self.data_timer.start()
            self.iter_timer.start()
            train_data = self.prefetcher.next()

    def _after_iteration(self, it: int) -> bool:
        """The frequency checks after iteration ``it``; True when the run stops here."""
        schedule, model, tb_logger = self.schedule, self.model, self.tb_logger
        if it == 1:
            self.msg_logger.reset_start_time()
        if schedule.prints(it):
            log_vars = {'epoch': self.epoch, 'iter': it, 'lrs': model.get_current_learning_rate(),
                        'time': self.iter_timer.get_avg_time(), 'data_time': self.data_timer.get_avg_time()}
            log_vars.update(model.get_current_log())
            self.msg_logger(log_vars)
            if tb_logger:
                for name, lr in model.learning_rates().items():
                    tb_logger.add_scalar(f'lr/{name}', lr, it)
        if tb_logger and schedule.logs_images(it):
            _log_images(model, tb_logger, it)
        if schedule.saves(it):
            self.logger.info('Saving models and training states.')
            model.save(self.epoch, it)
            self.last_saved = it
        if schedule.validates(it):
            self.validate(it)
        if schedule.stops(it):
            self.logger.info(f'Stopping after iter {it} as train.stop_at_iter asks; continue with --auto_resume.')
            return True
        return False

    def validate(self, it: int) -> None:
        """Validation (rank 0 under DDP) that every rank waits for, up to
        ``dist_params.validation_timeout``; a failure on any rank ends every rank with its error."""
        try:
            self.waiter.run(lambda: _validate(self.model, self.val_loaders, self.opt, it, self.tb_logger),
                            'validation')
        except Exception as err:
            # every rank says it (basicsr's logger shows only errors on ranks other than 0)
            self.logger.error(f'rank {self.opt["rank"]}: training ends at iter {it}: {type(err).__name__}: {err}')
            raise
        self.last_validated = it

    def _finish(self, consumed: str) -> None:
        """The end of a complete run: the last checkpoint, ``latest``, and a last validation."""
        it = self.current_iter
        self.logger.info(f'End of training after {it} iterations. Time consumed: {consumed}')
        if self.last_saved != it:
            self.model.save(self.epoch, it)
        self.logger.info('Save the latest model.')
        self.model.save(epoch=-1, current_iter=-1)
        if self.opt.get('val') is not None and self.last_validated != it:
            self.validate(it)


def run_training(opt: dict, opt_path: str, on_start=None) -> Optional[object]:
    """Trains from parsed options (``opt['root_path']`` set). Returns the model. ``on_start()`` is
    called once everything is built, just before the first iteration."""
    resume_state = load_resume_state(opt)
    _make_run_folders(opt, opt_path, resume_state)
    logger = _start_logger(opt)
    _apply_torch_settings(opt, logger)
    tb_logger = init_tb_loggers(opt)

    train_loader, train_sampler, val_loaders = create_dataloaders(opt, logger)
    schedule = LoopSchedule.from_options(opt, train_loader, train_sampler)
    model = build_model(opt)
    current_iter = _resume(model, resume_state, opt, schedule, logger)
    model.loop_state = {'iters_per_epoch': schedule.iters_per_epoch, 'batch_size': schedule.batch_size,
                        'world_size': opt['world_size']}
    if current_iter >= schedule.total_iter:
        logger.info(f'Training already finished ({current_iter} >= total_iter {schedule.total_iter}); nothing to do.')
        if tb_logger:
            tb_logger.close()
        return model

    loop = _Loop(model, opt, schedule, train_sampler, _make_prefetcher(opt, train_loader), val_loaders, tb_logger,
                 logger, current_iter)
    # everything built: continue the model's RNG stream exactly where the saved run left it
    _restore_rank_rng(model, resume_state, opt)
    logger.info(f'Start training from iter {current_iter} to {schedule.total_iter}.')
    if on_start is not None:
        on_start()
    loop.run()
    if tb_logger:
        tb_logger.close()
    return model


def train_pipeline(root_path: str) -> None:
    """``python fusion/train.py -opt <yml> [--auto_resume] [--force_yml a:b=c ...]``."""
    opt, args = parse_options(root_path, is_train=True)
    opt['root_path'] = root_path
    resolve_relative_paths(opt, root_path)
    check_option_paths(opt)
    check_run_folders(opt, args.opt)
    # a run that fails before its first iteration leaves no experiment / tb_logger folder behind
    folders = NewRunFolders([opt['path']['experiments_root'], osp.join(root_path, 'tb_logger', opt['name'])]
                            if opt['rank'] == 0 else [])  # rank 0 creates them
    try:
        run_training(opt, args.opt, on_start=folders.keep)
    except BaseException:
        folders.discard()
        raise
    finally:
        destroy_dist()  # under torchrun: leave the process group cleanly
