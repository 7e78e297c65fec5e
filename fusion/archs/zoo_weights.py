"""Reading published weight files for the zoo archs: a CPU-only, tensors-only load with one-line
errors, a strict key/shape check that says when a file belongs to another network, and BN folding
for the archs' deploy-time forms."""
from __future__ import annotations

import os
from typing import Any, Dict

import torch
from torch import nn

from fusion.archs.sage_student_deploy import fold_conv_bn


def load_tensor_file(path: str, method: str, expected: str) -> Any:
    """``torch.load`` on the CPU with ``weights_only=True`` (the published files hold only tensors,
    dicts and ints, so nothing else is ever unpickled); a missing or unreadable file is a ValueError
    naming ``path`` and the ``expected`` file(s)."""
    if not os.path.isfile(path):
        raise ValueError(f'{method} weights: {path} not found; expected {expected}')
    try:
        return torch.load(path, map_location='cpu', weights_only=True)
    except Exception as err:  # noqa: BLE001  (torch raises many types for corrupt or foreign files)
        raise ValueError(f'{method} weights: cannot read {path} ({type(err).__name__}); expected {expected}') from err


def strict_state_dict(net: nn.Module, state: Dict[str, Any], method: str, expected: str) -> Dict[str, torch.Tensor]:
    """``state`` if it loads strictly into ``net`` (same keys, same shapes), else one ValueError line
    saying how far it is from ``method``'s weights (a file of another network fits few keys)."""
    own = net.state_dict()
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    missing = [k for k in own if k not in tensors]
    unexpected = [k for k in tensors if k not in own]
    wrong = [k for k in own if k in tensors and tuple(tensors[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        fits = len(own) - len(missing) - len(wrong)
        detail = []
        if missing:
            detail.append(f'missing {missing[0]}' + (f' and {len(missing) - 1} more' if len(missing) > 1 else ''))
        if unexpected:
            detail.append(f'unexpected {unexpected[0]}' + (f' and {len(unexpected) - 1} more'
                                                           if len(unexpected) > 1 else ''))
        if wrong:
            detail.append(f'{wrong[0]} is {tuple(tensors[wrong[0]].shape)}, not {tuple(own[wrong[0]].shape)}')
        raise ValueError(f'{method} weights: these are not {method}\'s weights ({fits} of {len(own)} tensors fit: '
                         f'{"; ".join(detail)}); expected {expected}')
    return {k: tensors[k] for k in own}


def fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A conv equal to ``bn(conv(x))`` in eval mode (same padding, stride, dilation)."""
    weight, bias = fold_conv_bn(conv, bn)
    out = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                    padding=conv.padding, dilation=conv.dilation, padding_mode=conv.padding_mode, bias=True)
    out = out.to(device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        out.weight.copy_(weight)
        out.bias.copy_(bias)
    return out.requires_grad_(False)
