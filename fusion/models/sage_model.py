"""SAGEModel: teacher pre-training and bi-level teacher/student distillation of SAGE
(the reference notes on the official code, sections 4, 5, 8), assembled entirely from the options.

Networks: ``net_t`` (teacher, :class:`SAGETeacher`), ``net_g`` (student, the deployed network, so
basicsr's EMA, ``param_key_g: params_ema`` and ``fusion/test.py`` work unchanged) and an optional
``net_seg`` (segmentation network of the teacher's segmentation loss).

Schedule (iterations counted from 1, exactly ``train.total_iter`` of them):

* stage 1, iterations 1..``teacher_pretrain_iter``: teacher steps with the teacher's own fusion
  loss and the segmentation loss (pre-training with semantic patches);
* stage 2, the rest: steps follow ``distill_pattern`` (official: student, teacher, student, ...).
  Student step: the teacher runs under no_grad, the student learns from its output (context +
  contrastive + feature alignment). Teacher step: own loss + segmentation loss + the student's
  feedback (``feedback_weight`` x (context + contrastive) with the student's output as the
  reference, + feature alignment to the student's features), the student under no_grad.
  ``offline_distillation: true`` freezes the teacher in stage 2 (all steps are student steps).

Each network has its own optimizer and learning-rate schedule, counted in its **own** steps (the
official scheduler counted all batches and only annealed halfway: bug 5).

Mixed precision (docs/mixed_precision.md): ``train.amp`` (``none`` | ``bf16`` | ``fp16``) autocasts
every network's forward pass (teacher, student, segmentation net, the contrastive loss's SAM
encoder); network outputs are cast back to float32 and every loss is computed and summed in
float32. fp16 scales the loss with a ``GradScaler`` per backward kind (teacher + segmentation net;
student), saved in the training state. ``train.channels_last`` keeps networks and inputs in NHWC
(what makes bf16 pay on CPUs). ``val.precision`` (``fp32`` | ``bf16`` | ``fp16``) is the precision of
validation inference, the teacher's included.
"""
from __future__ import annotations

import inspect
import math
from collections import OrderedDict
from copy import deepcopy
from typing import Dict, List, Optional, Tuple

import torch
from basicsr.archs import build_network
from basicsr.losses import build_loss
from basicsr.utils import get_root_logger
from basicsr.utils.registry import MODEL_REGISTRY
from torch import nn

from fusion.models.fusion_base_model import FusionBaseModel
from fusion.models.lr_scheduler import CosineToMinLR, build_scheduler
from fusion.utils.img_util import ycrcb_to_rgb
from fusion.utils.option_schema import Choice, Component, Required
from fusion.utils.options_util import resolve_path
from fusion.utils.precision_util import (autocast, check_precision_supported, cpu_has_bf16_units, parse_amp,
                                         parse_precision, to_float)
from fusion.utils.rng_util import capture_rng_state


STEP_KINDS = ('pretrain', 'teacher', 'student')
DISTILL_ABLATIONS = ('no_feature', 'no_context', 'no_contrastive')
FEEDBACK_MODES = ('eval', 'batch_stats', 'train')
_CONTEXT_TERMS = ('int_vis', 'int_ir', 'int_ref', 'grad_src', 'grad_ref')


class _RenamedLoader:
    """A dataloader seen under another dataset name (teacher validation gets its own folder and
    metric records without touching the dataset)."""

    class _Dataset:
        def __init__(self, dataset, name: str) -> None:
            self._dataset = dataset
            self.opt = dict(dataset.opt, name=name)

        def __len__(self) -> int:
            return len(self._dataset)

    def __init__(self, loader, name: str) -> None:
        self._loader = loader
        self.dataset = self._Dataset(loader.dataset, name)

    def __iter__(self):
        return iter(self._loader)

    def __len__(self) -> int:
        return len(self._loader)


@MODEL_REGISTRY.register()
class SAGEModel(FusionBaseModel):
    """SAGE training model (module docstring). Options: see ``options/train_sage.yml`` and the
    docs/training.md."""

    # the option keys read here (fusion.utils.option_schema; docs/options.md)
    OPTIONS = {
        'sam': {'model_type': 'str', 'checkpoint': 'str'},
        'network_t': Required(Component('arch')), 'network_g': Required(Component('arch')),
        'network_seg': Component('arch'),
        'train': {
            'teacher_pretrain_iter': 'int', 'total_iter': 'int', 'distill_pattern': 'list',
            'offline_distillation': 'bool', 'distill_ablations': 'list',
            'feedback_student_mode': Choice(*FEEDBACK_MODES), 'feedback_weight': 'number', 'seg_start_iter': 'int',
            'seg_input': Choice('rgb', 'y'), 'seg_trainable': Choice('auto', True, False), 'ema_decay': 'number',
            'nonfinite_loss': Choice('raise', 'skip'), 'fp16_min_scale': 'number',
            'amp': Choice('none', 'bf16', 'fp16', False),
            'channels_last': 'bool',
            'optim_t': Required(Component('optimizer')), 'optim_g': Required(Component('optimizer')),
            'optim_*': Component('optimizer'),  # optim_seg, with network_seg
            'teacher_fusion_opt': Required(Component('loss')), 'context_opt': Required(Component('loss')),
            'scheduler': Component('scheduler'),
            'scheduler_*': Component('scheduler', default_type='CosineAnnealingLR'),
            '*_opt': Component('loss'),
        },
        'val': {'use_ema': 'bool', 'validate_teacher': 'bool'},
    }

    @staticmethod
    def check_options(opt: dict) -> Optional[str]:
        """What the keys' types cannot say: the list entries of ``distill_pattern`` /
        ``distill_ablations``, ``teacher_pretrain_iter`` within ``total_iter``, and the patch modes
        of the datasets and the teacher agreeing (run by the option validator and at construction)."""
        train_opt = opt.get('train') or {}
        message = SAGEModel._check_schedule(train_opt)
        return message if message else SAGEModel._check_patch_modes(opt)

    @staticmethod
    def _check_schedule(train_opt: dict) -> Optional[str]:
        pattern = train_opt.get('distill_pattern')
        if pattern is not None and (not isinstance(pattern, (list, tuple)) or not pattern
                                    or any(p not in ('student', 'teacher') for p in pattern)):
            return f'train.distill_pattern: must be a non-empty list of "student"/"teacher", got {pattern!r}'
        ablations = train_opt.get('distill_ablations') or []
        bad = [a for a in ablations if a not in DISTILL_ABLATIONS]
        if bad:
            return f'train.distill_ablations: unknown {bad}; choose from {DISTILL_ABLATIONS}'
        total, pretrain = train_opt.get('total_iter'), train_opt.get('teacher_pretrain_iter') or 0
        if isinstance(total, int) and isinstance(pretrain, int) and not 0 <= pretrain <= total:
            return f'train.teacher_pretrain_iter: must be in [0, total_iter={total}], got {pretrain}'
        return None

    @staticmethod
    def _check_patch_modes(opt: dict) -> Optional[str]:
        from basicsr.utils.registry import ARCH_REGISTRY
        net_t = opt.get('network_t') or {}
        teacher_cls = ARCH_REGISTRY.get(net_t['type']) if net_t.get('type') in ARCH_REGISTRY else None
        default = None
        if teacher_cls is not None:
            param = inspect.signature(teacher_cls).parameters.get('patch_mode')
            default = None if param is None else param.default
        teacher_mode = net_t.get('patch_mode', default)
        if teacher_mode is None:
            return None
        for phase, ds in (opt.get('datasets') or {}).items():
            if ds and ds.get('type') == 'SAGEFusionDataset':
                mode = ds.get('patch_mode', 'masked_intensity')
                if mode != teacher_mode:
                    return (f'datasets.{phase}.patch_mode ({mode}) and network_t.patch_mode ({teacher_mode}) must '
                            'agree: the teacher reads the patches the dataset makes')
        return None

    def __init__(self, opt: dict) -> None:
        super().__init__(opt)
        self.logger = get_root_logger()
        train_opt = (opt.get('train') or {}) if self.is_train else {}
        self.amp = parse_amp(train_opt.get('amp'))
        check_precision_supported(self.amp, self.device, 'train.amp', allow_cpu_fp16=True)
        self.channels_last = bool(train_opt.get('channels_last', False))  # read by model_to_device
        for key in ('network_t', 'network_g'):
            if key not in opt:
                raise ValueError(f'SAGEModel: option {key} is required (teacher network_t, student network_g)')
        mismatch = self.check_options(opt)
        if mismatch:
            raise ValueError(mismatch)
        self.net_t = self.build_net('t')
        self.net_g = self.build_net('g')
        # wrapped for DDP only once we know it is trained (a frozen DDP module fails)
        self.net_seg = self.build_net('seg', wrap=False) if opt.get('network_seg') else None
        if self.net_seg is not None and self.channels_last:
            self.net_seg.to(memory_format=torch.channels_last)
        self.steps = {'t': 0, 'g': 0, 'seg': 0}
        self.loop_state: dict = {}
        self.resumed_rng: Optional[dict] = None
        self._warned_no_patches = False
        self._visuals: Dict[str, torch.Tensor] = {}
        self._val_net = 'student'
        if self.is_train:
            self.init_training_settings()

    # ------------------------------------------------------------------------------------------ setup
    def init_training_settings(self) -> None:
        # the values are checked by the option validator (OPTIONS, check_options; docs/options.md)
        train_opt = self.opt['train']
        self.total_iter = int(train_opt['total_iter'])
        self.pretrain_iters = int(train_opt.get('teacher_pretrain_iter', 0))
        self.offline = bool(train_opt.get('offline_distillation', False))
        self.pattern = ['student'] if self.offline else list(train_opt.get('distill_pattern') or ['student', 'teacher'])
        self.ablations = set(train_opt.get('distill_ablations') or [])
        self.feedback_mode = train_opt.get('feedback_student_mode', 'eval')
        self.feedback_weight = float(train_opt.get('feedback_weight', 0.1))
        self.seg_start_iter = int(train_opt.get('seg_start_iter', 0))
        self.seg_input = train_opt.get('seg_input', 'rgb')
        self.nonfinite = train_opt.get('nonfinite_loss', 'raise')
        self.fp16_min_scale = float(train_opt.get('fp16_min_scale', 1.0))

        self._build_losses(train_opt)
        self._setup_seg_trainability(train_opt)
        self._setup_ema(train_opt)
        self._setup_amp()
        self.net_t.train()
        self.net_g.train()
        if self.net_seg is not None:
            self.net_seg.train(self.seg_trainable)
        self.setup_optimizers()
        self.setup_schedulers()
        counts = self.count_steps()
        self.logger.info(
            f'SAGE schedule: {self.total_iter} iterations = {self.pretrain_iters} teacher pre-training + '
            f'{self.total_iter - self.pretrain_iters} distillation '
            f'({"offline, frozen teacher" if self.offline else "pattern " + str(self.pattern)}); '
            f'teacher steps {counts["t"]}, student steps {counts["g"]}, segmentation-net steps {counts["seg"]}. '
            f'Ablations: {sorted(self.ablations) or "none"}; student feedback mode: {self.feedback_mode}.')

    def model_to_device(self, net: nn.Module) -> nn.Module:
        """NHWC parameters with ``train.channels_last`` (before any DDP wrapping: DDP's gradient
        buckets follow the parameters' layout at construction)."""
        if getattr(self, 'channels_last', False):
            net = net.to(memory_format=torch.channels_last)
        return super().model_to_device(net)

    def _setup_amp(self) -> None:
        """One GradScaler per backward kind for fp16 ('t': teacher + segmentation net, 'g': student),
        so an overflow in one network's step does not lower the other's scale."""
        self.scalers: Dict[str, torch.amp.GradScaler] = {}
        if self.amp == 'fp16':
            self.scalers = {k: torch.amp.GradScaler(self.device.type) for k in ('t', 'g')}
            if self.device.type == 'cpu':
                self.logger.warning('train.amp: fp16 on the CPU runs in software (slower than fp32); use bf16 there.')
        elif self.amp == 'bf16' and self.device.type == 'cpu' and not cpu_has_bf16_units():
            self.logger.warning('train.amp: bf16 on a CPU without AVX512-BF16/AMX runs in software and is usually '
                                'slower than fp32 (docs/mixed_precision.md).')
        if self.amp != 'none' or self.channels_last:
            self.logger.info(f'Mixed precision: train.amp {self.amp}, channels_last {self.channels_last}; losses in '
                             f'float32{", gradient scaling" if self.scalers else ""}.')

    def _amp_forward(self, net: nn.Module, *inputs: torch.Tensor):
        """``net(*inputs)`` under ``train.amp``'s autocast; outputs back in float32 for the losses
        (identity for ``amp: none``)."""
        with autocast(self.device, self.amp):
            out = net(*inputs)
        return to_float(out)

    def _backward_and_step(self, total: torch.Tensor, scaler_key: str, names: List[str]) -> bool:
        """Backward of ``total`` and a step of the optimizers ``names``; with fp16 through the
        GradScaler ``scaler_key``, which skips a step whose gradients overflowed and lowers its
        scale (the LR schedules still advance, so they end where the options say). Returns whether
        the optimizers stepped (False: the scaler skipped the step; then the EMA must not move)."""
        scaler = self.scalers.get(scaler_key)
        optimizers = [getattr(self, f'optimizer_{n}') for n in names]
        if scaler is None:
            total.backward()
            for optimizer in optimizers:
                optimizer.step()
            return True
        scale = scaler.get_scale()
        scaler.scale(total).backward()
        for optimizer in optimizers:
            scaler.step(optimizer)
        scaler.update()
        # update() lowers the scale exactly when it found inf/NaN gradients, i.e. skipped the step
        return scaler.get_scale() >= scale

    def _build_losses(self, train_opt: dict) -> None:
        def build(key: str, required: bool = False) -> Optional[nn.Module]:
            loss_opt = train_opt.get(key)
            if not loss_opt:
                if required:
                    raise ValueError(f'SAGEModel: train.{key} is required')
                return None
            loss = build_loss(deepcopy(loss_opt))
            return loss.to(self.device)

        self.cri_teacher = build('teacher_fusion_opt', required=True)
        context_opt = deepcopy(train_opt.get('context_opt'))
        if context_opt and 'no_context' in self.ablations:
            # w/o context distillation: drop the reference terms; the source terms stay (without
            # them the student would have no pixel loss at all)
            context_opt.update(w_int_ref=0.0, w_grad_ref=0.0)
        self.cri_context = build_loss(context_opt).to(self.device) if context_opt else None
        if self.cri_context is None:
            raise ValueError('SAGEModel: train.context_opt is required (the student\'s pixel loss)')
        self.cri_feature = None if 'no_feature' in self.ablations else build('feature_opt')
        self.cri_feedback_feature = None if 'no_feature' in self.ablations else build('feedback_feature_opt')
        self.cri_contrastive = None
        contrastive_opt = deepcopy(train_opt.get('contrastive_opt'))
        wanted = contrastive_opt and float(contrastive_opt.get('loss_weight', 1)) != 0
        if wanted and 'no_contrastive' not in self.ablations:
            sam_opt = self.opt.get('sam') or {}
            for key in ('model_type', 'checkpoint'):
                if contrastive_opt.get(key) is None and sam_opt.get(key) is not None:
                    contrastive_opt[key] = sam_opt[key]
            if contrastive_opt.get('checkpoint'):
                contrastive_opt['checkpoint'] = resolve_path(contrastive_opt['checkpoint'],
                                                             self.opt.get('root_path', '.'))
            self.cri_contrastive = build_loss(contrastive_opt).to(self.device)
        self.cri_seg = None
        if self.net_seg is not None:
            self.cri_seg = build('seg_opt', required=True)
        elif train_opt.get('seg_opt') and float(train_opt['seg_opt'].get('loss_weight', 1)) != 0:
            self.logger.warning('train.seg_opt is set but there is no network_seg: the segmentation loss is off.')

    def _setup_seg_trainability(self, train_opt: dict) -> None:
        self.seg_trainable = False
        if self.net_seg is None:
            return
        mode = train_opt.get('seg_trainable', 'auto')
        if mode == 'auto':
            resume_path = self.opt['path'].get('resume_state')
            if resume_path:  # check_resume replaced the pretrain path: ask the saved state
                state = torch.load(resume_path, map_location='cpu', weights_only=False)
                mode = not state.get('sage', {}).get('seg_frozen', False)
            else:
                mode = self.opt['path'].get('pretrain_network_seg') is None
        self.seg_trainable = bool(mode)
        self.net_seg.requires_grad_(self.seg_trainable)
        if self.seg_trainable:
            self.net_seg = self.model_to_device(self.net_seg)
        how = 'trained jointly with the teacher' if self.seg_trainable else 'frozen (pretrained)'
        self.logger.info(f'Segmentation network: {how}.')

    def _setup_ema(self, train_opt: dict) -> None:
        self.ema_decay = float(train_opt.get('ema_decay', 0) or 0)
        if self.ema_decay <= 0:
            return
        self.logger.info(f'Student EMA with decay {self.ema_decay}.')
        self.net_g_ema = build_network(self.opt['network_g']).to(self.device)
        load_path = self.opt['path'].get('pretrain_network_g')
        if load_path is not None:
            self.load_network(self.net_g_ema, load_path, self.opt['path'].get('strict_load_g', True), 'params_ema')
        else:
            self.model_ema(0)
        self.net_g_ema.requires_grad_(False)
        self.net_g_ema.eval()

    def model_ema(self, decay: float = 0.999) -> None:
        """basicsr's EMA averages parameters only; BN running statistics are copied too here,
        otherwise the EMA student keeps its initial statistics (mean 0, var 1) forever."""
        super().model_ema(decay)
        net_g = self.get_bare_model(self.net_g)
        ema_buffers = dict(self.net_g_ema.named_buffers())
        for name, buf in net_g.named_buffers():
            ema_buffers[name].data.copy_(buf.data)

    def setup_optimizers(self) -> None:
        train_opt = self.opt['train']
        self.optimizers = []
        self.optimizer_names: List[str] = []
        nets = [('t', self.net_t), ('g', self.net_g)] + ([('seg', self.net_seg)] if self.net_seg is not None else [])
        for name, net in nets:
            optim_opt = deepcopy(train_opt.get(f'optim_{name}'))
            if not optim_opt:
                raise ValueError(f'SAGEModel: train.optim_{name} is required')
            optim_type = optim_opt.pop('type')
            # every parameter (a frozen seg net's included) keeps the optimizer list constant
            params = list(self.get_bare_model(net).parameters())
            optimizer = self.get_optimizer(optim_type, params, **optim_opt)
            setattr(self, f'optimizer_{name}', optimizer)
            self.optimizers.append(optimizer)
            self.optimizer_names.append(name)

    def count_steps(self) -> Dict[str, int]:
        """Optimizer steps each network takes in the whole run (the cosine period of its LR)."""
        counts = {'t': 0, 'g': 0, 'seg': 0}
        for it in range(1, self.total_iter + 1):
            kind = self.step_kind(it)
            if kind == 'student':
                counts['g'] += 1
            else:
                counts['t'] += 1
                if self.seg_active(it) and self.seg_trainable:
                    counts['seg'] += 1
        return counts

    def setup_schedulers(self) -> None:
        train_opt = self.opt['train']
        counts = self.count_steps()
        self.schedulers = []
        for name, optimizer in zip(self.optimizer_names, self.optimizers):
            sched_opt = deepcopy(train_opt.get('scheduler') or {'type': 'CosineAnnealingLR', 'eta_min': 1e-5})
            sched_opt.update(deepcopy(train_opt.get(f'scheduler_{name}') or {}))
            self.schedulers.append(build_scheduler(optimizer, sched_opt, counts[name]))

    # ------------------------------------------------------------------------------------------ schedule
    def step_kind(self, current_iter: int) -> str:
        """'pretrain' (stage 1), then 'student' / 'teacher' following ``distill_pattern``."""
        if current_iter <= self.pretrain_iters:
            return 'pretrain'
        return self.pattern[(current_iter - self.pretrain_iters - 1) % len(self.pattern)]

    def seg_active(self, current_iter: int) -> bool:
        return self.cri_seg is not None and current_iter > self.seg_start_iter

    def update_learning_rate(self, current_iter: int, warmup_iter: int = -1) -> None:
        """No-op: each network's scheduler steps after its own optimizer step."""

    def learning_rates(self) -> Dict[str, float]:
        return {name: o.param_groups[0]['lr'] for name, o in zip(self.optimizer_names, self.optimizers)}

    # ------------------------------------------------------------------------------------------ data
    def feed_data(self, data: dict) -> None:
        self.vis_y = data['vis_y'].to(self.device)
        self.ir = data['ir'].to(self.device)
        self.vis_cr = data['vis_cr'].to(self.device) if 'vis_cr' in data else None
        self.vis_cb = data['vis_cb'].to(self.device) if 'vis_cb' in data else None
        self.label = data['label'].to(self.device) if torch.is_tensor(data.get('label')) else None
        self.vis_patches, self.ir_patches = self._patches(data)
        # the contrastive loss weighs SAM features with the true binary masks (masks rebuilt from
        # masked intensities would drop the pixels whose source value is 0)
        if torch.is_tensor(data.get('vis_masks')) and torch.is_tensor(data.get('ir_masks')):
            self.vis_masks, self.ir_masks = data['vis_masks'].to(self.device), data['ir_masks'].to(self.device)
        else:
            self.vis_masks, self.ir_masks = self.vis_patches, self.ir_patches
        if self.channels_last:
            for key in ('vis_y', 'ir', 'vis_cr', 'vis_cb', 'vis_patches', 'ir_patches'):
                t = getattr(self, key)
                if t is not None:
                    setattr(self, key, t.contiguous(memory_format=torch.channels_last))
        self._visuals = {}

    def _patches(self, data: dict) -> Tuple[torch.Tensor, torch.Tensor]:
        if torch.is_tensor(data.get('vis_patches')) and torch.is_tensor(data.get('ir_patches')):
            return data['vis_patches'].to(self.device), data['ir_patches'].to(self.device)
        # the official dataset pads missing masks with the unmasked images: do the same
        mask_num = int(self.opt['network_t'].get('mask_num', 4))
        if not self._warned_no_patches:
            self.logger.warning('SAGEModel: the data has no vis_patches/ir_patches; the teacher gets copies of the '
                                'unmasked images (use SAGEFusionDataset for semantic patches).')
            self._warned_no_patches = True
        vis = data['vis_y'].to(self.device)
        ir = data['ir'].to(self.device)
        if self.opt['network_t'].get('patch_mode') == 'binary':
            return torch.ones_like(vis).expand(-1, mask_num, -1, -1), torch.ones_like(ir).expand(-1, mask_num, -1, -1)
        return vis.expand(-1, mask_num, -1, -1), ir.expand(-1, mask_num, -1, -1)

    # ------------------------------------------------------------------------------------------ forwards
    def _teacher(self, grad: bool) -> Tuple[torch.Tensor, Tuple[torch.Tensor, ...]]:
        net = self.net_t if grad else self.get_bare_model(self.net_t)
        with torch.set_grad_enabled(grad):
            return self._amp_forward(net, self.vis_y, self.ir, self.vis_patches, self.ir_patches)

    def _student_for_feedback(self) -> Tuple[torch.Tensor, Tuple[torch.Tensor, ...]]:
        """The student's output for the teacher's feedback term, without gradient. ``eval``
        (default): running BN statistics, none updated (official: train mode, so BN statistics
        also moved on teacher batches: bug 18); ``batch_stats``: batch statistics, running ones
        restored afterwards; ``train``: the official behaviour."""
        net = self.get_bare_model(self.net_g)
        with torch.no_grad():
            if self.feedback_mode == 'eval':
                net.eval()
                try:
                    return self._amp_forward(net, self.vis_y, self.ir)
                finally:
                    net.train()
            if self.feedback_mode == 'batch_stats':
                saved = {k: v.clone() for k, v in net.named_buffers()}
                out = self._amp_forward(net, self.vis_y, self.ir)
                buffers = dict(net.named_buffers())
                for k, v in saved.items():
                    buffers[k].copy_(v)
                return out
            return self._amp_forward(net, self.vis_y, self.ir)

    def _seg_logits(self, fused_y: torch.Tensor) -> torch.Tensor:
        # a segmenter (pretrained and frozen, or trained here) sees a real image in [0, 1], as the
        # saved fused images are: Y clamped, and the RGB from it clamped again
        if self.seg_input == 'rgb':
            if self.vis_cr is None or self.vis_cb is None:
                raise ValueError('SAGEModel: seg_input "rgb" needs vis_cr/vis_cb in the training data')
            img = ycrcb_to_rgb(fused_y.clamp(0, 1), self.vis_cr, self.vis_cb)
        else:
            img = fused_y
        return self._amp_forward(self.net_seg, img.clamp(0, 1))

    # ------------------------------------------------------------------------------------------ steps
    TEACHER_LOG_KEYS = tuple([f'l_t_{k}' for k in _CONTEXT_TERMS] + ['l_t_seg']
                             + [f'l_t_fb_{k}' for k in _CONTEXT_TERMS]
                             + ['l_t_fb_cs_vis', 'l_t_fb_cs_ir', 'l_t_fb_feature', 'l_t_total'])
    STUDENT_LOG_KEYS = tuple([f'l_g_{k}' for k in _CONTEXT_TERMS]
                             + ['l_g_cs_vis', 'l_g_cs_ir', 'l_g_feature', 'l_g_total'])

    def optimize_parameters(self, current_iter: int) -> None:
        """One iteration: a teacher or a student step (``step_kind``). The log always has the
        same keys (DDP's reduce needs that): the network that did not step reports the values of
        its last step (zeros before its first), so curves show no artificial zeros."""
        kind = self.step_kind(current_iter)
        zero = torch.zeros((), device=self.device)
        keys = self.STUDENT_LOG_KEYS if kind == 'student' else self.TEACHER_LOG_KEYS
        log = OrderedDict((k, zero) for k in keys)
        if kind == 'student':
            self._student_step(log)
        else:
            self._teacher_step(current_iter, log, feedback=(kind == 'teacher'))
        self.last_step_kind = kind
        if not hasattr(self, '_last_log'):
            self._last_log = OrderedDict((k, zero) for k in self.TEACHER_LOG_KEYS + self.STUDENT_LOG_KEYS)
        self._last_log.update(log)
        self.log_dict = self.reduce_loss_dict(OrderedDict(self._last_log))

    def _check_finite(self, total: torch.Tensor, log: dict, which: str, scaler_key: str) -> bool:
        """Whether to run the backward and step for the loss ``total``. The rule
        (``train.nonfinite_loss``; docs/mixed_precision.md): a finite loss steps. With fp16 a
        non-finite loss is an overflow: its scaled gradients are non-finite too, so the GradScaler
        skips the step and lowers its scale (True: go through it), until the scale would fall
        below ``train.fp16_min_scale`` (the overflow is beyond what scaling can fix). A non-finite
        fp32 / bf16 loss, or an fp16 overflow beyond that range, raises ``FloatingPointError``
        (``raise``, the default) or skips the step without touching the networks (``skip``)."""
        if torch.isfinite(total).all():
            return True
        terms = {k: float(v) for k, v in log.items() if float(v) != 0 or not math.isfinite(float(v))}
        msg = f'SAGEModel: non-finite {which} loss ({float(total.detach())}); terms: {terms}'
        scaler = self.scalers.get(scaler_key)
        if scaler is not None:
            scale, lowered = scaler.get_scale(), scaler.get_scale() * scaler.get_backoff_factor()
            if lowered >= self.fp16_min_scale:
                self.logger.warning(f'{msg} - fp16 overflow: step skipped, loss scale {scale:g} -> {lowered:g}')
                return True
            msg += (f' with the fp16 loss scale at {scale:g} (train.fp16_min_scale {self.fp16_min_scale:g}): '
                    'an overflow that loss scaling cannot fix')
        if self.nonfinite == 'raise':
            raise FloatingPointError(msg + ' (set train.nonfinite_loss: skip to skip such steps)')
        self.logger.warning(msg + ' - step skipped')
        return False

    def _teacher_step(self, current_iter: int, log: dict, feedback: bool) -> None:
        self.net_t.train()
        self.optimizer_t.zero_grad(set_to_none=True)
        seg_on = self.seg_active(current_iter)
        if seg_on:
            self.optimizer_seg.zero_grad(set_to_none=True)
            self.net_seg.train(self.seg_trainable)
        fused_t, feats_t = self._teacher(grad=True)
        total = 0
        for k, v in self.cri_teacher.components(fused_t, self.vis_y, self.ir).items():
            log[f'l_t_{k}'] = v.detach()
            total = total + v
        if seg_on:
            if self.label is None:
                raise ValueError('SAGEModel: the segmentation loss needs "label" in the training data '
                                 '(dataroot_label), or remove network_seg')
            l_seg = self.cri_seg(self._seg_logits(fused_t), self.label)
            log['l_t_seg'] = l_seg.detach()
            total = total + l_seg
        if feedback:
            fused_s, feats_s = self._student_for_feedback()
            self._visuals['student'] = fused_s
            total = self._distillation_terms(total, log, 'l_t_fb_', fused_t, feats_t, fused_s, feats_s,
                                             self.feedback_weight, self.cri_feedback_feature)
        log['l_t_total'] = total.detach()
        self._visuals['teacher'] = fused_t.detach()
        seg_steps = seg_on and self.seg_trainable
        if self._check_finite(total, log, 'teacher', 't'):
            self._backward_and_step(total, 't', ['t', 'seg'] if seg_steps else ['t'])
        # a skipped step still counts in the schedule (count_steps): the LR ends at eta_min
        self.scheduler_step('t')
        if seg_steps:
            self.scheduler_step('seg')

    def _distillation_terms(self, total, log: dict, prefix: str, fused: torch.Tensor, feats, ref: torch.Tensor,
                            ref_feats, weight: float, feature_loss) -> torch.Tensor:
        """Adds the distillation objective of ``fused`` towards ``ref`` (computed without gradient)
        to ``total``: ``weight`` x (context + contrastive) + the feature alignment. The student step
        uses it with the teacher as reference; the teacher's feedback uses it with the roles swapped."""
        if weight != 0:
            terms = dict(self.cri_context.components(fused, self.vis_y, self.ir, ref))
            if self.cri_contrastive is not None:
                # binary weights from the true masks; a loss that weighs with the masked intensities
                # (faithful: true, the official behaviour) gets the patches
                if getattr(self.cri_contrastive, 'binarize_masks', True):
                    vis_w, ir_w = self.vis_masks, self.ir_masks
                else:
                    vis_w, ir_w = self.vis_patches, self.ir_patches
                # its SAM encoder is a network (autocast); the loss takes its distances in float32
                with autocast(self.device, self.amp):
                    parts = self.cri_contrastive.components(fused, ref, self.vis_y, self.ir, vis_w, ir_w)
                terms.update((f'cs_{k}', v) for k, v in parts.items())
            for k, v in terms.items():
                v = weight * v if weight != 1 else v
                log[f'{prefix}{k}'] = v.detach()
                total = total + v
        if feature_loss is not None:
            l_feat = feature_loss(feats, ref_feats)
            log[f'{prefix}feature'] = l_feat.detach()
            total = total + l_feat
        return total

    def _student_step(self, log: dict) -> None:
        fused_t, feats_t = self._teacher(grad=False)
        self._visuals['teacher'] = fused_t
        self.net_g.train()
        self.optimizer_g.zero_grad(set_to_none=True)
        fused_s, feats_s = self._amp_forward(self.net_g, self.vis_y, self.ir)
        total = self._distillation_terms(0, log, 'l_g_', fused_s, feats_s, fused_t, feats_t, 1.0, self.cri_feature)
        log['l_g_total'] = total.detach()
        self._visuals['student'] = fused_s.detach()
        # the EMA follows the student's steps only: none when the fp16 scaler skipped the step
        if self._check_finite(total, log, 'student', 'g') and self._backward_and_step(total, 'g', ['g']) \
                and self.ema_decay > 0:
            self.model_ema(decay=self.ema_decay)
        self.scheduler_step('g')  # a skipped step still counts in the schedule (count_steps)

    def scheduler_step(self, name: str) -> None:
        self.steps[name] += 1
        self.schedulers[self.optimizer_names.index(name)].step()

    # ------------------------------------------------------------------------------------------ visuals
    def get_current_visuals(self, max_images: int = 4) -> 'OrderedDict[str, torch.Tensor]':
        """IR, visible Y, teacher and student outputs of the last batch (up to ``max_images``),
        CPU tensors in [0, 1]; an output the last step did not compute is computed here."""
        n = min(max_images, self.vis_y.shape[0])
        if 'teacher' not in self._visuals:
            with torch.no_grad():
                self._visuals['teacher'] = self._amp_forward(
                    self.get_bare_model(self.net_t), self.vis_y[:n], self.ir[:n], self.vis_patches[:n],
                    self.ir_patches[:n])[0]
        if 'student' not in self._visuals:
            self._visuals['student'] = self._plain_student(self.vis_y[:n], self.ir[:n])
        out = OrderedDict(ir=self.ir[:n], vis=self.vis_y[:n], teacher=self._visuals['teacher'][:n],
                          student=self._visuals['student'][:n])
        return OrderedDict((k, v.detach().float().clamp(0, 1).cpu()) for k, v in out.items())

    # ------------------------------------------------------------------------------------------ validation
    def _plain_student(self, vis_y: torch.Tensor, ir: torch.Tensor, use_ema: bool = False) -> torch.Tensor:
        ema = getattr(self, 'net_g_ema', None)
        net = ema if (use_ema and ema is not None) else self.net_g
        return self.student_inference(net, vis_y, ir)

    def fuse_batch(self, data: dict) -> torch.Tensor:
        vis_y = data['vis_y'].to(self.device)
        ir = data['ir'].to(self.device)
        if self._val_net == 'teacher':
            vis_p, ir_p = self._patches(data)
            return self._teacher_inference(vis_y, ir, vis_p, ir_p)
        use_ema = bool((self.opt.get('val') or {}).get('use_ema', True))
        return self._plain_student(vis_y, ir, use_ema=use_ema)

    def _teacher_inference(self, vis_y: torch.Tensor, ir: torch.Tensor, vis_p: torch.Tensor,
                           ir_p: torch.Tensor) -> torch.Tensor:
        """Teacher on a full validation image: padded (reflect) to even sides >= 16, cropped back;
        in ``val.precision`` (autocast; float32 out), NHWC with ``train.channels_last``."""
        precision = parse_precision((self.opt.get('val') or {}).get('precision'), 'val.precision')
        check_precision_supported(precision, self.device, 'val.precision')
        h, w = vis_y.shape[-2:]
        ph, pw = max(16, h + h % 2), max(16, w + w % 2)
        tensors = [vis_y, ir, vis_p, ir_p]
        if (ph, pw) != (h, w):
            mode = 'reflect' if (ph - h < h and pw - w < w) else 'replicate'
            tensors = [torch.nn.functional.pad(t, (0, pw - w, 0, ph - h), mode=mode) for t in tensors]
        if self.channels_last:
            tensors = [t.contiguous(memory_format=torch.channels_last) for t in tensors]
        net = self.get_bare_model(self.net_t)
        was_training = net.training
        net.eval()
        with torch.no_grad(), autocast(self.device, precision):
            out = net(*tensors)[0]
        net.train(was_training)
        return out[..., :h, :w].float()

    def nondist_validation(self, dataloader, current_iter, tb_logger, save_img: bool) -> Dict[str, float]:
        """Validates the student (its EMA when there is one; ``val.use_ema``), and the teacher too
        when ``val.validate_teacher`` is true (results under ``<dataset>_teacher``)."""
        self._val_net = 'student'
        results = super().nondist_validation(dataloader, current_iter, tb_logger, save_img)
        if (self.opt.get('val') or {}).get('validate_teacher', False):
            self._val_net = 'teacher'
            try:
                name = f'{dataloader.dataset.opt["name"]}_teacher'
                teacher_results = super().nondist_validation(_RenamedLoader(dataloader, name), current_iter,
                                                             tb_logger, save_img)
            finally:
                self._val_net = 'student'
            results.update({f'teacher_{k}': v for k, v in teacher_results.items()})
        return results

    # ------------------------------------------------------------------------------------------ save / resume
    def save(self, epoch: int, current_iter: int) -> None:
        self.save_network(self.net_t, 'net_t', current_iter)
        if getattr(self, 'net_g_ema', None) is not None:
            self.save_network([self.net_g, self.net_g_ema], 'net_g', current_iter, ['params', 'params_ema'])
        else:
            self.save_network(self.net_g, 'net_g', current_iter)
        if self.net_seg is not None:
            self.save_network(self.net_seg, 'net_seg', current_iter)
        self.save_training_state(epoch, current_iter)

    def extra_training_state(self) -> dict:
        # the logged values (under DDP rank 0's log_dict holds the mean over ranks), so a resumed
        # run logs for the network that did not step what the uninterrupted run logs
        last_log = {k: float(v) for k, v in (getattr(self, 'log_dict', None) or getattr(self, '_last_log', {})).items()}
        return {'sage': {'steps': dict(self.steps), 'seg_frozen': not self.seg_trainable,
                         'optimizer_names': list(self.optimizer_names), 'last_log': last_log},
                'rng': capture_rng_state(), 'loop': dict(self.loop_state),
                'amp': {'mode': self.amp, 'scalers': {k: s.state_dict() for k, s in self.scalers.items()}}}

    def resume_training(self, resume_state: dict) -> None:
        sage = resume_state.get('sage') or {}
        names = sage.get('optimizer_names')
        if names is not None and list(names) != self.optimizer_names:
            raise ValueError(f'resume: the saved state has optimizers {names}, the options give {self.optimizer_names} '
                             '(network_seg added or removed?)')
        super().resume_training(resume_state)
        # the options decide the schedule length: re-apply it in case total_iter changed
        counts = self.count_steps()
        for name, sched in zip(self.optimizer_names, self.schedulers):
            if isinstance(sched, CosineToMinLR) and sched.T_max != max(1, counts[name]) and \
                    (self.opt['train'].get(f'scheduler_{name}') or {}).get('T_max', 'auto') in (None, 'auto') and \
                    (self.opt['train'].get('scheduler') or {}).get('T_max', 'auto') in (None, 'auto'):
                self.logger.warning(f'resume: LR schedule of net_{name} changed from {sched.T_max} to '
                                    f'{counts[name]} steps')
                sched.T_max = max(1, counts[name])
        self.steps.update(sage.get('steps') or {})
        if sage.get('last_log'):  # the logged values of the network that does not step next
            self._last_log = OrderedDict((k, torch.tensor(v, device=self.device)) for k, v in sage['last_log'].items())
        self.loop_state = dict(resume_state.get('loop') or {})
        self.resumed_rng = resume_state.get('rng')
        saved_scalers = (resume_state.get('amp') or {}).get('scalers') or {}
        for key, scaler in self.scalers.items():
            if saved_scalers.get(key):
                scaler.load_state_dict(saved_scalers[key])
            else:  # e.g. the run was started with amp none or bf16
                self.logger.warning(f'resume: no saved fp16 gradient scaler "{key}"; starting a fresh one')
