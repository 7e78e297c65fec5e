"""Numeric precision for training (``train.amp``) and inference (``precision``): names, checks,
the autocast context and the cast back to float32 (docs/mixed_precision.md).

Training autocasts network forwards (``none | bf16 | fp16``); inference runs a network in one
precision (``fp32 | bf16 | fp16``). fp16 needs a GPU for speed (no CPU here has fp16 units that
torch's CPU kernels use); bf16 pays on CPUs with AVX512-BF16 or AMX and on recent GPUs.
"""
from __future__ import annotations

import contextlib
from typing import Any, ContextManager, Optional, Union

import torch

from fusion.utils.option_schema import declare_check


AMP_MODES = ('none', 'bf16', 'fp16')
PRECISIONS = ('fp32', 'bf16', 'fp16')
_DTYPES = {'fp32': torch.float32, 'bf16': torch.bfloat16, 'fp16': torch.float16}


def parse_amp(value: Any, what: str = 'train.amp') -> str:
    """``train.amp`` as one of :data:`AMP_MODES` (YAML ``~`` / ``false`` mean ``none``)."""
    if value is None or value is False:
        return 'none'
    if value not in AMP_MODES:
        raise ValueError(f'{what} must be one of {AMP_MODES}, got {value!r}')
    return value


def parse_precision(value: Any, what: str = 'precision') -> str:
    """An inference precision as one of :data:`PRECISIONS` (``~`` means ``fp32``)."""
    if value is None:
        return 'fp32'
    if value not in PRECISIONS:
        raise ValueError(f'{what} must be one of {PRECISIONS}, got {value!r}')
    return value


def precision_dtype(precision: str) -> torch.dtype:
    """``fp32`` / ``bf16`` / ``fp16`` (``none`` counts as ``fp32``) -> the torch dtype."""
    return _DTYPES['fp32' if precision == 'none' else precision]


def check_precision_supported(precision: str, device: Union[str, torch.device], what: str = 'precision',
                              allow_cpu_fp16: bool = False) -> None:
    """Raises ValueError when ``device`` cannot run ``precision`` (bf16 on a GPU without bf16;
    fp16 on the CPU unless ``allow_cpu_fp16``: it runs there, in software, far slower than fp32)."""
    device = torch.device(device)
    if precision in ('fp32', 'none'):
        return
    if device.type == 'cuda' and precision == 'bf16' and not torch.cuda.is_bf16_supported():
        raise ValueError(f'{what}: bf16 is not supported by this GPU ({torch.cuda.get_device_name(device)}); '
                         'use fp16 or fp32')
    if device.type == 'cpu' and precision == 'fp16' and not allow_cpu_fp16:
        raise ValueError(f'{what}: fp16 needs a CUDA device; on the CPU use bf16 (or fp32)')


def cpu_has_bf16_units() -> bool:
    """True when oneDNN runs bf16 on hardware (AVX512-BF16 or AMX) on this CPU."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def autocast(device: torch.device, precision: str) -> ContextManager:
    """``torch.autocast`` for ``precision`` (``bf16`` / ``fp16``) on the device's type; a no-op
    context for ``none`` / ``fp32`` (results then bit-identical to no context at all)."""
    if precision in ('none', 'fp32'):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=precision_dtype(precision))


def to_float(obj: Any) -> Any:
    """Floating tensors (also inside tuples / lists / dicts) cast to float32; float32 tensors are
    returned as they are (same object), so fp32 runs are untouched."""
    if torch.is_tensor(obj):
        return obj.float() if obj.is_floating_point() else obj
    if isinstance(obj, (tuple, list)):
        return type(obj)(to_float(o) for o in obj)
    if isinstance(obj, dict):
        return {k: to_float(v) for k, v in obj.items()}
    return obj


def memory_format(channels_last: Optional[bool]) -> torch.memory_format:
    return torch.channels_last if channels_last else torch.contiguous_format


def runs_on_cpu(opt: dict) -> bool:
    """Whether options with this ``num_gpu`` (``auto``: every visible GPU) put the networks on the
    CPU (basicsr: CUDA when ``num_gpu`` is not 0)."""
    num_gpu = opt.get('num_gpu', 'auto')
    if num_gpu == 'auto' or num_gpu is None:
        return torch.cuda.device_count() == 0
    return num_gpu == 0 or not torch.cuda.is_available()


def check_fp16_on_cpu(opt: dict) -> Optional[str]:
    """Option check (fusion/train.py, fusion/test.py): fp16 on a CPU is refused before any work.
    CPUs without fp16 arithmetic units run fp16 convolutions, matrix products and attention in
    slow reference kernels, far slower than fp32 (docs/mixed_precision.md has the measurement);
    ``train.amp: bf16`` is the CPU's reduced precision. The models themselves still accept CPU fp16
    (``allow_cpu_fp16``) so that unit tests can exercise the fp16 code path without a GPU."""
    if not runs_on_cpu(opt):
        return None
    train = opt.get('train') or {}
    val = opt.get('val') or {}
    if isinstance(train, dict) and train.get('amp') not in (None, False) and str(train.get('amp')).lower() == 'fp16':
        return ('train.amp: fp16 on a CPU device runs in software, far slower than fp32 (an iteration took minutes '
                'instead of seconds); use train.amp: bf16 (or none) on the CPU, fp16 on a CUDA device')
    if isinstance(val, dict) and str(val.get('precision')).lower() == 'fp16':
        return 'val.precision: fp16 needs a CUDA device; on the CPU use bf16 (or fp32)'
    return None


declare_check(check_fp16_on_cpu)
