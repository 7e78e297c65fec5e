"""FusionBaseModel: what every fusion model shares on top of basicsr's BaseModel.

basicsr 1.4.2's BaseModel assumes CUDA for DDP, knows only Adam, loads only ``{'params': ...}``
checkpoints and writes checkpoints non-atomically. This class fixes those in one place and adds
the fusion validation loop (fused colour images + fusion metrics + tensorboard).
"""
from __future__ import annotations

import math
import os.path as osp
from collections import OrderedDict
from typing import Dict, Iterator, List, Optional

import cv2
import numpy as np
import torch
from basicsr.archs import build_network
from basicsr.metrics import calculate_metric
from basicsr.models.base_model import BaseModel
from basicsr.utils import get_root_logger
from torch import nn
from torch.nn.parallel import DataParallel, DistributedDataParallel
from tqdm import tqdm

from fusion.inferencer import FusionInferencer
from fusion.utils.checkpoint_util import extract_state_dict, load_checkpoint_file
from fusion.utils.dist_util import all_gather_objects
from fusion.utils.file_util import atomic_torch_save
from fusion.utils.img_util import fused_to_image, imwrite_atomic
from fusion.utils.option_schema import Choice, declare_check
from fusion.utils.precision_util import check_precision_supported, parse_precision
from fusion.utils.rng_util import capture_rng_state
from fusion.utils.sync_batchnorm import convert_sync_batchnorm


def _concat_batches(batches: List[dict]) -> dict:
    out = {}
    for key in batches[0]:
        values = [b[key] for b in batches]
        if isinstance(values[0], torch.Tensor):
            out[key] = torch.cat(values, dim=0)
        else:
            out[key] = [v for vs in values for v in (vs if isinstance(vs, (list, tuple)) else [vs])]
    return out


def _written_grey(img: np.ndarray) -> np.ndarray:
    """A written uint8 image (grey, or RGB: its Y) as float32 [0, 1]."""
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2YCrCb)[..., 0]
    return img.astype(np.float32) / 255.0


def group_equal_sizes(dataloader, max_batch: int) -> Iterator[dict]:
    """Re-batches consecutive loader batches of equal image size into batches of up to
    ``max_batch`` images, so a test set of same-sized pairs runs in fewer, larger forwards."""
    pending: List[dict] = []
    count = 0
    for data in dataloader:
        size = tuple(data['ir'].shape[-2:])
        if pending and (size != tuple(pending[0]['ir'].shape[-2:]) or count + data['ir'].shape[0] > max_batch):
            yield _concat_batches(pending)
            pending, count = [], 0
        pending.append(data)
        count += data['ir'].shape[0]
    if pending:
        yield _concat_batches(pending)


def _check_val_precision(opt: dict) -> Optional[str]:
    """``val.precision`` on the device the run will use (basicsr: CUDA unless ``num_gpu: 0``), with
    the other options, before any work: not at the first validation, hours in."""
    precision = (opt.get('val') or {}).get('precision')
    if precision in (None, 'fp32'):
        return None
    num_gpu = opt.get('num_gpu', 'auto')
    gpus = torch.cuda.device_count() if num_gpu in (None, 'auto') else num_gpu
    device = 'cuda' if gpus and torch.cuda.is_available() else 'cpu'
    try:
        check_precision_supported(precision, device, 'val.precision')
    except ValueError as err:
        return str(err)
    return None


declare_check(_check_val_precision)


class FusionBaseModel(BaseModel):
    """Base for fusion models. Networks are named by suffix: ``net_g`` (the deployed network,
    so basicsr's EMA works), ``net_t`` (teacher), ``net_seg`` ... each built from
    ``network_<x>`` and loaded from ``path.pretrain_network_<x>`` / ``param_key_<x>`` /
    ``strict_load_<x>``."""

    # the option keys read here (fusion.utils.option_schema merges OPTIONS along the MRO; docs/options.md)
    OPTIONS = {
        'sync_bn': 'bool',  # read by model_to_device
        'val': {'save_img': 'bool', 'save_ext': Choice('png', 'jpg', 'jpeg', 'bmp', 'tif', 'tiff'), 'suffix': 'str|int',
                'fast_inference': 'bool', 'batch_size': 'int', 'tile_size': 'int', 'tile_overlap': 'int',
                'pbar': 'bool', 'precision': Choice('fp32', 'bf16', 'fp16')},
    }

    def __init__(self, opt: dict) -> None:
        super().__init__(opt)
        # the training loop's hand-off (fusion/training.py reads and writes only what is documented
        # here, in ``learning_rates`` and in ``get_current_visuals``):
        #: set by the loop before the first iteration (``iters_per_epoch``, ``batch_size``,
        #: ``world_size``); a model saves it in its training state (``extra_training_state``, key
        #: ``loop``) and restores it in ``resume_training``, so the loop can warn when they changed
        self.loop_state: dict = {}
        #: the RNG states of the training state being resumed (``capture_rng_state``; None for a
        #: fresh run), set by ``resume_training``; the loop restores them once everything is built
        self.resumed_rng: Optional[dict] = None

    # ----------------------------------------------------------------------------- training-loop hand-off
    def learning_rates(self) -> Dict[str, float]:
        """The current learning rate of each trained network by name (tensorboard ``lr/<name>``);
        none by default."""
        return {}

    def get_current_visuals(self) -> Dict[str, torch.Tensor]:
        """Images of the last training batch for tensorboard's grid: name -> N x 1 x H x W CPU
        tensor in [0, 1], every entry the same size (one row per sample); none by default."""
        return {}

    # ----------------------------------------------------------------------------- networks
    def build_net(self, suffix: str, wrap: bool = True) -> nn.Module:
        net = build_network(self.opt[f'network_{suffix}'])
        net = self.model_to_device(net) if wrap else net.to(self.device)
        self.print_network(net)
        load_path = self.opt['path'].get(f'pretrain_network_{suffix}')
        if load_path is not None:
            param_key = self.opt['path'].get(f'param_key_{suffix}')
            # an explicit param_key_<x> must exist in the checkpoint; the default falls back
            self.load_network(net, load_path, self.opt['path'].get(f'strict_load_{suffix}', True),
                              param_key or 'params', required=param_key is not None)
        return net

    def model_to_device(self, net: nn.Module) -> nn.Module:
        """Like BaseModel's, but DDP works on CPU (gloo) and fully frozen nets are not wrapped.
        ``sync_bn: true`` (top-level option) gives the DDP-wrapped networks batch statistics over
        all processes (``fusion/utils/sync_batchnorm.py``; docs/distributed.md)."""
        net = net.to(self.device)
        trainable = any(p.requires_grad for p in net.parameters())
        if self.opt.get('dist') and trainable:
            if self.opt.get('sync_bn'):
                before = sum(isinstance(m, nn.BatchNorm2d) for m in net.modules())
                net = convert_sync_batchnorm(net)
                get_root_logger().info(f'sync_bn: {before} BatchNorm2d layer(s) of {net.__class__.__name__} '
                                       'synchronised across processes.')
            device_ids = [torch.cuda.current_device()] if self.device.type == 'cuda' else None
            net = DistributedDataParallel(
                net, device_ids=device_ids, find_unused_parameters=self.opt.get('find_unused_parameters', False))
        elif self.opt.get('num_gpu', 0) > 1 and self.device.type == 'cuda':
            net = DataParallel(net)
        return net

    def load_network(self, net: nn.Module, load_path: str, strict: bool = True, param_key: str = 'params',
                     required: bool = False) -> None:
        """``required``: ``param_key`` must be in the checkpoint (else an error listing its keys)."""
        logger = get_root_logger()
        net = self.get_bare_model(net)
        state = extract_state_dict(load_checkpoint_file(load_path), param_key, load_path, required=required)
        state = OrderedDict((k[7:] if k.startswith('module.') else k, v) for k, v in state.items())
        logger.info(f'Loading {net.__class__.__name__} from {load_path} (param key: {param_key}).')
        self._print_different_keys_loading(net, state, strict)
        try:
            net.load_state_dict(state, strict=strict)
        except RuntimeError as err:
            # wrong architecture or size: a bad input, one line (the first of torch's message)
            own = net.state_dict()
            missing = [k for k in own if k not in state]
            unexpected = [k for k in state if k not in own]
            sizes = [f'{k} {tuple(state[k].shape)} vs {tuple(v.shape)}' for k, v in own.items()
                     if k in state and state[k].shape != v.shape]
            raise ValueError(f'{load_path}: does not fit {net.__class__.__name__} (wrong architecture or size): '
                             f'{len(missing)} missing keys (e.g. {missing[:2]}), {len(unexpected)} unexpected '
                             f'(e.g. {unexpected[:2]}), {len(sizes)} of other size (e.g. {sizes[:1]})') from err

    def save_network(self, net, net_label: str, current_iter: int, param_key='params') -> None:
        """basicsr's save_network, written atomically (no truncated .pth after a crash)."""
        if self.opt.get('rank', 0) != 0:
            return
        name = 'latest' if current_iter == -1 else current_iter
        nets = net if isinstance(net, list) else [net]
        keys = param_key if isinstance(param_key, list) else [param_key]
        save_dict = {}
        for net_, key in zip(nets, keys):
            state = self.get_bare_model(net_).state_dict()
            save_dict[key] = OrderedDict((k[7:] if k.startswith('module.') else k, v.cpu()) for k, v in state.items())
        atomic_torch_save(save_dict, osp.join(self.opt['path']['models'], f'{net_label}_{name}.pth'))

    def save_training_state(self, epoch: int, current_iter: int) -> None:
        """Rank 0 writes the state; under DDP it also holds every rank's RNG states
        (``rng_per_rank``: each rank continues its own stream on resume)."""
        if current_iter == -1:
            return
        # every rank takes part in the gather, before rank 0 alone writes
        rng_per_rank = all_gather_objects(capture_rng_state()) if self.opt.get('dist') else None
        if self.opt.get('rank', 0) != 0:
            return
        state = {'epoch': epoch, 'iter': current_iter,
                 'optimizers': [o.state_dict() for o in self.optimizers],
                 'schedulers': [s.state_dict() for s in self.schedulers]}
        state.update(self.extra_training_state())
        if rng_per_rank is not None:
            state['rng_per_rank'] = rng_per_rank
        atomic_torch_save(state, osp.join(self.opt['path']['training_states'], f'{current_iter}.state'))

    def extra_training_state(self) -> dict:
        """Subclasses add what exact resumption needs (e.g. step counters, RNG states)."""
        return {}

    # ----------------------------------------------------------------------------- optim
    def get_optimizer(self, optim_type: str, params, lr: float, **kwargs) -> torch.optim.Optimizer:
        """Any ``torch.optim`` optimizer by name (basicsr 1.4.2 only knows Adam)."""
        optim_cls = getattr(torch.optim, optim_type, None)
        if optim_cls is None:
            raise ValueError(f'unknown optimizer type {optim_type!r} (any torch.optim class name works)')
        return optim_cls(params, lr, **kwargs)

    def get_current_learning_rate(self) -> List[float]:
        return [group['lr'] for o in self.optimizers for group in o.param_groups[:1]]

    # ----------------------------------------------------------------------------- inference
    def student_inference(self, net: nn.Module, vis_y: torch.Tensor, ir: torch.Tensor) -> torch.Tensor:
        """Fused Y of a deployed student for one batch, as configured in ``val``:
        ``fast_inference`` (default true: the network's deploy-time form from its
        ``fuse_for_inference()``, e.g. BN folded; networks without one run plain), ``tile_size`` /
        ``tile_overlap`` for images too large for memory, ``precision`` (``fp32`` default | ``bf16``
        | ``fp16`` on CUDA; docs/mixed_precision.md). ``net`` is not modified (eval copy), so
        this is safe in the middle of training."""
        val_opt = self.opt.get('val') or {}
        bare = self.get_bare_model(net)
        fast = bool(val_opt.get('fast_inference', True)) and callable(getattr(bare, 'fuse_for_inference', None))
        tile_size = val_opt.get('tile_size')
        precision = parse_precision(val_opt.get('precision'), 'val.precision')
        if fast or tile_size or precision != 'fp32':
            overlap = val_opt.get('tile_overlap')
            runner = FusionInferencer(bare, self.device, fast=fast, max_batch=max(1, vis_y.shape[0]),
                                      tile_size=tile_size, tile_overlap=None if overlap is None else int(overlap),
                                      precision=precision)
            return runner.fuse(vis_y, ir)
        was_training = bare.training
        bare.eval()
        with torch.no_grad():
            out = bare(vis_y.to(self.device), ir.to(self.device))
        bare.train(was_training)
        return out[0] if isinstance(out, (tuple, list)) else out

    # ----------------------------------------------------------------------------- validation
    def fuse_batch(self, data: dict) -> torch.Tensor:
        """Returns the fused Y (B x 1 x H x W) of a validation batch. Subclasses implement."""
        raise NotImplementedError

    def dist_validation(self, dataloader, current_iter, tb_logger, save_img):
        if self.opt.get('rank', 0) == 0:
            self.nondist_validation(dataloader, current_iter, tb_logger, save_img)

    def nondist_validation(self, dataloader, current_iter, tb_logger, save_img: bool) -> Dict[str, float]:
        """Fuses every pair, saves colour images, computes the configured fusion metrics."""
        dataset_name = dataloader.dataset.opt['name']
        val_opt = self.opt.get('val') or {}
        metrics_opt = val_opt.get('metrics') or {}
        if metrics_opt and not hasattr(self, 'metric_results'):
            self.metric_results = {}
        if metrics_opt:
            if not hasattr(self, 'best_metric_results') or dataset_name not in self.best_metric_results:
                self._initialize_best_metric_results(dataset_name)
            self.metric_results = {m: 0.0 for m in metrics_opt}
        ext = val_opt.get('save_ext', 'png').lstrip('.')
        suffix = val_opt.get('suffix')
        count = 0
        metric_counts = {m: 0 for m in metrics_opt}
        pbar = tqdm(total=len(dataloader.dataset), unit='image', disable=not val_opt.get('pbar', True))
        # a network with its own save step (a zoo method: the authors' rounding, per-image rescaling)
        own_writer = getattr(self.get_bare_model(self.net_g), 'image_from_fused', None) \
            if hasattr(self, 'net_g') else None
        for data in group_equal_sizes(dataloader, int(val_opt.get('batch_size', 1))):
            fused = self.fuse_batch(data).float().cpu()
            for i in range(fused.shape[0]):
                name = data['name'][i]
                y = fused[i].clamp(0, 1)
                gray = bool(data['vis_is_gray'][i]) if 'vis_is_gray' in data else False
                if callable(own_writer):
                    img = own_writer(fused[i], data['vis_cr'][i], data['vis_cb'][i], gray)
                    # metrics see the grey of the image as written
                    y = torch.from_numpy(_written_grey(img))[None]
                if save_img:
                    if not callable(own_writer):
                        img = fused_to_image(y, data['vis_cr'][i], data['vis_cb'][i], gray=gray)
                    if self.opt['is_train']:
                        path = osp.join(self.opt['path']['visualization'], dataset_name, f'{name}_{current_iter}.{ext}')
                    else:
                        stem = f'{name}_{suffix}' if suffix else name
                        path = osp.join(self.opt['path']['visualization'], dataset_name, f'{stem}.{ext}')
                    imwrite_atomic(img, path)
                if metrics_opt:
                    # metrics see the 8-bit grey images a user would evaluate (0-255 floats)
                    metric_data = {
                        'img': torch.round(y[0] * 255).double().numpy(),
                        'img_ir': torch.round(data['ir'][i, 0].double() * 255).numpy(),
                        'img_vis': torch.round(data['vis_y'][i, 0].double() * 255).numpy(),
                    }
                    for metric_name, metric_opt in metrics_opt.items():
                        value = float(calculate_metric(metric_data, metric_opt))
                        # undefined values (e.g. SCD when the result equals a source) are left out
                        # of the mean instead of turning it into NaN
                        if math.isfinite(value):
                            self.metric_results[metric_name] += value
                            metric_counts[metric_name] += 1
                count += 1
                pbar.update(1)
                pbar.set_description(f'Fuse {name}')
        pbar.close()
        if metrics_opt and count:
            for metric in self.metric_results:
                n = metric_counts[metric]
                self.metric_results[metric] = self.metric_results[metric] / n if n else float('nan')
                self._update_best_metric_result(dataset_name, metric, self.metric_results[metric], current_iter)
            self._log_validation_metric_values(current_iter, dataset_name, tb_logger)
        return dict(getattr(self, 'metric_results', {}))

    def _log_validation_metric_values(self, current_iter, dataset_name: str, tb_logger) -> None:
        lines = [f'Validation {dataset_name}']
        for metric, value in self.metric_results.items():
            best = self.best_metric_results[dataset_name][metric]
            lines.append(f'\t # {metric}: {value:.4f}\tBest: {best["val"]:.4f} @ {best["iter"]} iter')
        get_root_logger().info('\n'.join(lines))
        if tb_logger:
            for metric, value in self.metric_results.items():
                tb_logger.add_scalar(f'metrics/{dataset_name}/{metric}', value, current_iter)
