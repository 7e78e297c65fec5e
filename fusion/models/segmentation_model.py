"""SegmentationModel: trains and tests a semantic segmenter on (fused) images with mIoU validation,
the model of the downstream segmentation protocol (``docs/segmentation.md``)."""
from __future__ import annotations

import inspect
import math
import os.path as osp
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from basicsr.metrics import calculate_metric
from basicsr.utils import get_root_logger
from basicsr.utils.registry import MODEL_REGISTRY
from torch import nn
from tqdm import tqdm

from fusion.metrics.segmentation_metrics import confusion_matrix, segmentation_scores
from fusion.models.fusion_base_model import FusionBaseModel
from fusion.models.lr_scheduler import build_scheduler
from fusion.utils.img_util import imwrite_atomic
from fusion.utils.option_schema import Component, Required
from fusion.utils.palette_util import as_palette, colorize
from fusion.utils.rng_util import capture_rng_state


# parameters of these kinds get no weight decay with train.no_decay_norm (SegFormer recipe)
_NO_DECAY_KEYS = ('norm', 'pos_block', 'bias')


def segmenter_param_groups(net: nn.Module, lr: float, weight_decay: float, head_lr_mult: float = 1.0,
                           no_decay_norm: bool = True, encoder_prefix: str = 'model.encoder.') -> List[dict]:
    """AdamW parameter groups of the SegFormer recipe: the decoder/head at ``head_lr_mult`` x the
    rate, norm layers / positional blocks / biases without weight decay."""
    groups: Dict[tuple, dict] = {}
    for name, param in net.named_parameters():
        if not param.requires_grad:
            continue
        is_head = not name.startswith(encoder_prefix)
        no_decay = no_decay_norm and (param.ndim <= 1 or any(k in name for k in _NO_DECAY_KEYS))
        key = (is_head, no_decay)
        if key not in groups:
            groups[key] = {'params': [], 'lr': lr * (head_lr_mult if is_head else 1.0),
                           'weight_decay': 0.0 if no_decay else weight_decay}
        groups[key]['params'].append(param)
    return [groups[k] for k in sorted(groups)]


@MODEL_REGISTRY.register()
class SegmentationModel(FusionBaseModel):
    """A segmenter (``network_g``, e.g. ``SMPSegmenter``) trained with cross-entropy on
    ``SegmentationDataset`` items (``img``, ``label``) and validated with mIoU.

    Options:

    ======================== ============ =========================================================
    network_g                required     the segmenter (``type: SMPSegmenter``, ...)
    path.pretrain_network_g  ~            a whole-segmenter checkpoint (e.g. for fusion/test.py)
    train.total_iter         required     iterations (``fusion/train.py``)
    train.optim_g            AdamW        ``type`` (any torch.optim), ``lr``, ``weight_decay``, ``betas``
    train.head_lr_mult       1.0          decoder/head learning-rate multiplier (SegFormer: 10)
    train.no_decay_norm      true         no weight decay on norm layers, positional blocks, biases
    train.scheduler          WarmupPolyLR ``type`` + its options (``warmup_iter``, ``power`` ...)
    train.seg_loss           {}           ``ignore_index`` (255), ``class_weight`` (list or ~)
    val.metrics              ~            e.g. ``miou: {type: calculate_seg_miou, include_background: true}``
    val.save_img             false        prediction pictures in the dataset's ``palette``
    val.pbar                 true         progress bar during validation
    ======================== ============ =========================================================

    Validation accumulates ONE confusion matrix over the whole validation set (labels at their
    resolution when the dataset has ``label_full_res: true``; logits are resized to the label) and
    calls the configured metrics on it; ``self.last_scores`` keeps per-class IoU as well.
    """

    # the option keys read here (fusion.utils.option_schema merges OPTIONS along the MRO; docs/options.md)
    OPTIONS = {
        'network_g': Required(Component('arch')),
        'train': {'optim_g': Component('optimizer', default_type='AdamW'), 'head_lr_mult': 'number',
                  'no_decay_norm': 'bool', 'scheduler': Component('scheduler', default_type='WarmupPolyLR'),
                  'seg_loss': {'ignore_index': 'int', 'class_weight': 'list'}},
    }

    @staticmethod
    def check_options(opt: dict) -> Optional[str]:
        """The class count and ``ignore_index`` appear in several places (each dataset, the network,
        the loss); the loss reads ``train.seg_loss``, the metric the validation dataset: every copy
        must agree (run by the option validator)."""
        from basicsr.utils.registry import ARCH_REGISTRY

        def counts(where: str, ds: dict):
            yield f'{where}.num_classes', ds.get('num_classes')
            for key in ('classes', 'palette'):
                if isinstance(ds.get(key), list):
                    yield f'{where}.{key} (length)', len(ds[key])

        classes, ignores = [], []
        for phase, ds in (opt.get('datasets') or {}).items():
            if isinstance(ds, dict) and ds.get('type') == 'SegmentationDataset':
                classes += list(counts(f'datasets.{phase}', ds))
                ignores.append((f'datasets.{phase}.ignore_index', ds.get('ignore_index', 255)))
        net = opt.get('network_g') or {}
        if 'num_classes' in net:
            classes.append(('network_g.num_classes', net['num_classes']))
        elif net.get('type') in ARCH_REGISTRY:
            param = inspect.signature(ARCH_REGISTRY.get(net['type'])).parameters.get('num_classes')
            if param is not None and param.default is not inspect.Parameter.empty:
                classes.append(('network_g.num_classes (default)', param.default))
        if isinstance(opt.get('train'), dict):
            loss = opt['train'].get('seg_loss') or {}
            ignores.append(('train.seg_loss.ignore_index', loss.get('ignore_index', 255)))
        for what, copies in (('the number of classes', classes), ('ignore_index', ignores)):
            if what != 'ignore_index':  # ~ ignore_index is a value (nothing ignored); ~ num_classes is missing
                copies = [(k, v) for k, v in copies if v is not None]
            if len({v for _, v in copies}) > 1:
                return (f'{what} disagrees between ' + ', '.join(f'{k} ({v})' for k, v in copies)
                        + ': the network, the loss and the metric must read the same value')
        return None

    def __init__(self, opt: dict) -> None:
        super().__init__(opt)
        self.net_g = self.build_net('g')
        self.resumed_rng: Optional[dict] = None
        self.loop_state: dict = {}
        self.last_confusion: Optional[np.ndarray] = None
        self.last_scores: Dict = {}
        if self.is_train:
            self.init_training_settings()
        else:
            self.net_g.eval()

    # ----------------------------------------------------------------------------- training
    def init_training_settings(self) -> None:
        train_opt = self.opt['train']
        self.net_g.train()
        loss_opt = dict(train_opt.get('seg_loss') or {})
        self.ignore_index = loss_opt.get('ignore_index', 255)
        weight = loss_opt.get('class_weight')
        weight = torch.tensor(weight, dtype=torch.float32, device=self.device) if weight is not None else None
        self.criterion = nn.CrossEntropyLoss(weight=weight, ignore_index=self.ignore_index if
                                             self.ignore_index is not None else -100)
        optim_opt = dict(train_opt.get('optim_g') or {'type': 'AdamW', 'lr': 6e-5})
        optim_type = optim_opt.pop('type', 'AdamW')
        lr = float(optim_opt.pop('lr'))
        weight_decay = float(optim_opt.pop('weight_decay', 0.0))
        groups = segmenter_param_groups(self.get_bare_model(self.net_g), lr, weight_decay,
                                        float(train_opt.get('head_lr_mult', 1.0)),
                                        bool(train_opt.get('no_decay_norm', True)))
        self.optimizer_g = self.get_optimizer(optim_type, groups, lr, **optim_opt)
        self.optimizers = [self.optimizer_g]
        sched_opt = dict(train_opt.get('scheduler') or {'type': 'WarmupPolyLR'})
        self.schedulers = [build_scheduler(self.optimizer_g, sched_opt, int(train_opt['total_iter']))]
        self.log_dict = OrderedDict()

    def feed_data(self, data: dict) -> None:
        self.img = data['img'].to(self.device).float()
        self.label = data['label'].to(self.device).long() if 'label' in data else None

    def optimize_parameters(self, current_iter: int) -> None:
        self.optimizer_g.zero_grad(set_to_none=True)
        logits = self.net_g(self.img)
        loss = self.criterion(logits, self.label)
        if not torch.isfinite(loss):
            raise FloatingPointError(f'iteration {current_iter}: the segmentation loss is {loss.item()}')
        loss.backward()
        self.optimizer_g.step()
        for scheduler in self.schedulers:
            scheduler.step()
        self.log_dict = OrderedDict(l_seg=float(loss.detach()))

    def learning_rates(self) -> Dict[str, float]:
        return {'g': self.optimizer_g.param_groups[0]['lr']}

    # ----------------------------------------------------------------------------- inference
    def predict(self, img: torch.Tensor, out_size: Optional[Sequence[int]] = None) -> torch.Tensor:
        """Class ids (B x H x W, int64, on the CPU) of a batch of [0, 1] images; logits are resized
        bilinearly to ``out_size`` (the label's size) first when given."""
        bare = self.get_bare_model(self.net_g)
        was_training = bare.training
        bare.eval()
        with torch.no_grad():
            logits = bare(img.to(self.device).float())
            if out_size is not None and tuple(logits.shape[-2:]) != tuple(out_size):
                logits = F.interpolate(logits, size=tuple(int(s) for s in out_size), mode='bilinear',
                                       align_corners=False)
            pred = logits.argmax(dim=1).cpu()
        bare.train(was_training)
        return pred

    def test(self) -> None:
        self.output = self.predict(self.img, None if self.label is None else self.label.shape[-2:])

    # ----------------------------------------------------------------------------- validation
    def nondist_validation(self, dataloader, current_iter, tb_logger, save_img: bool) -> Dict[str, float]:
        dataset = dataloader.dataset
        dataset_name = dataset.opt['name']
        num_classes = int(dataset.num_classes)
        ignore_index = dataset.ignore_index
        palette = as_palette(dataset.opt.get('palette'), num_classes)
        val_opt = self.opt.get('val') or {}
        metrics_opt = val_opt.get('metrics') or {}
        cm = np.zeros((num_classes, num_classes), np.int64)
        pbar = tqdm(total=len(dataset), unit='image', disable=not val_opt.get('pbar', True))
        for data in dataloader:
            label = data['label']
            pred = self.predict(data['img'], label.shape[-2:])
            cm += confusion_matrix(pred, label, num_classes, ignore_index)
            if save_img:
                for i, name in enumerate(data['name']):
                    stem = f'{name}_{current_iter}' if self.opt['is_train'] else name
                    path = osp.join(self.opt['path']['visualization'], dataset_name, f'{stem}.png')
                    imwrite_atomic(colorize(pred[i].numpy(), palette), path)
            pbar.update(label.shape[0])
        pbar.close()
        self.last_confusion = cm
        self.last_scores = segmentation_scores(cm, dataset.opt.get('classes'))
        if metrics_opt:
            if not hasattr(self, 'best_metric_results') or dataset_name not in self.best_metric_results:
                self._initialize_best_metric_results(dataset_name)
            self.metric_results = {}
            for name, metric_opt in metrics_opt.items():
                self.metric_results[name] = float(calculate_metric({'confusion_matrix': cm}, metric_opt))
                self._update_best_metric_result(dataset_name, name, self.metric_results[name], current_iter)
            self._log_validation_metric_values(current_iter, dataset_name, tb_logger)
        iou = ', '.join(f'{k} {v:.3f}' if math.isfinite(v) else f'{k} -'
                        for k, v in self.last_scores['per_class_iou'].items())
        get_root_logger().info(f'Validation {dataset_name}: per-class IoU: {iou}')
        return dict(getattr(self, 'metric_results', {}))

    # ----------------------------------------------------------------------------- checkpoints
    def save(self, epoch: int, current_iter: int) -> None:
        self.save_network(self.net_g, 'net_g', current_iter)
        self.save_training_state(epoch, current_iter)

    def extra_training_state(self) -> dict:
        return {'rng': capture_rng_state(), 'loop': dict(self.loop_state)}

    def resume_training(self, resume_state: dict) -> None:
        super().resume_training(resume_state)
        self.resumed_rng = resume_state.get('rng')
