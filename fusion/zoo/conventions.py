"""The authors' test-time conventions of a zoo method: one table, each key with its default, the
values it takes and what it means (docs/zoo.md lists the same table).

The runner applies them in this order. Into the network (:func:`prepare_inputs`): ``in_channels``,
``in_range``, ``in_mean`` / ``in_std``, then ``pad_multiple`` / ``pad_mode`` (``min_size`` is checked
first). Out of it (:func:`finish_output`): crop, ``out_mean`` / ``out_std``, ``out_range``,
``out_channels``. When writing the 8-bit image (:func:`image_from_fused`, whole images, so tiling and
batching never change it): ``colour``, ``clamp``, ``out_rescale``, ``rounding``. ``vis_channel``
records which grey version of the visible image the authors feed.
"""
from __future__ import annotations

import difflib
import math
from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F


class Convention(NamedTuple):
    default: Any
    check: Callable[[Any], bool]
    values: str
    doc: str


def _is_range(v: Any) -> bool:
    return (isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(x, (int, float)) for x in v)
            and v[0] != v[1])


def _is_channel_list(v: Any) -> bool:
    return v is None or (isinstance(v, (list, tuple)) and len(v) in (1, 3)
                         and all(isinstance(x, (int, float)) for x in v))


def _is_positive_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def _one_of(*choices: Any) -> Callable[[Any], bool]:
    return lambda v: v in choices


CONVENTIONS: Dict[str, Convention] = {
    'vis_channel': Convention('y', _one_of('y', 'grey'), 'y | grey',
                              'which grey image of the visible the authors feed: y = Y of the YCrCb of the '
                              'visible image, grey = its RGB->grey conversion. Both are the BT.601 luma '
                              '(0.299 R + 0.587 G + 0.114 B): the runner feeds Y for both, which OpenCV\'s '
                              'fixed-point rounding puts one level from its grey in a few % of colour pixels '
                              '(equal for grey images)'),
    'in_channels': Convention(1, _one_of(1, 3), '1 | 3',
                              'channels per source: 1, or 3 = the single channel repeated (nets trained on RGB)'),
    'in_range': Convention([0, 1], _is_range, '[low, high]',
                           'pixel/255 in [0, 1] mapped linearly onto this range ([0, 255], [-1, 1] ...)'),
    'in_mean': Convention(None, _is_channel_list, 'null | [m] | [m1, m2, m3]',
                          'subtracted per channel after in_range (e.g. ImageNet means)'),
    'in_std': Convention(None, _is_channel_list, 'null | [s] | [s1, s2, s3]',
                         'divides per channel after in_mean'),
    'pad_multiple': Convention(1, _is_positive_int, 'int >= 1',
                               'inputs padded (bottom, right) to a multiple of this, the output cropped back'),
    'pad_mode': Convention('reflect', _one_of('reflect', 'replicate', 'constant'), 'reflect | replicate | constant',
                           'how pad_multiple pads (constant: zeros after normalisation)'),
    'min_size': Convention(1, _is_positive_int, 'int >= 1',
                           'smallest height and width the method takes (smaller images: one error line), '
                           'checked before padding; a network may state a larger one (min_size attribute)'),
    'out_mean': Convention(None, _is_channel_list, 'null | [m] | [m1, m2, m3]',
                           'de-normalisation of the raw output: raw * out_std + out_mean, per channel'),
    'out_std': Convention(None, _is_channel_list, 'null | [s] | [s1, s2, s3]', 'see out_mean'),
    'out_range': Convention([0, 1], _is_range, '[low, high]', 'raw output range mapped linearly back onto [0, 1]'),
    'out_channels': Convention('first', _one_of('first', 'mean', 'luma8'), 'first | mean | luma8',
                               'how a multi-channel output becomes the fused grey: first channel, channel mean, '
                               'or luma8 = the channels clamped to [0, 1], quantised to 8 bits by `rounding`, then '
                               'OpenCV\'s RGB->grey (rounded): the save step of authors who write their RGB '
                               'output as uint8 and convert it to grey'),
    'out_rescale': Convention('none', _one_of('none', 'minmax'), 'none | minmax',
                              'minmax: per-image min-max stretch to [0, 1] of the written image (all its channels, '
                              'after colour and clamp), as some authors\' save step does'),
    'clamp': Convention(True, _one_of(True, False), 'true | false', 'clamp to [0, 1] before out_rescale and writing'),
    'rounding': Convention('round', _one_of('round', 'floor'), 'round | floor',
                           'how the authors quantise to 8 bits (floor: numpy uint8(255 * x) truncation)'),
    'colour': Convention('vis_chroma', _one_of('vis_chroma', 'grey'), 'vis_chroma | grey',
                         'vis_chroma: fused Y + the visible image\'s Cr/Cb (grey when the visible is grey) | '
                         'grey: always a grey image'),
}


def default_conventions() -> Dict[str, Any]:
    return {k: (list(c.default) if isinstance(c.default, list) else c.default) for k, c in CONVENTIONS.items()}


def resolve_conventions(given: Optional[Mapping[str, Any]], source: str) -> Dict[str, Any]:
    """The defaults updated by ``given``; an unknown key or a bad value is a ``ValueError`` naming
    ``source`` (the entry file), the key, the values it takes and the closest known key."""
    conv = default_conventions()
    for key, value in (given or {}).items():
        if key not in CONVENTIONS:
            close = difflib.get_close_matches(str(key), CONVENTIONS, n=3, cutoff=0.5)
            hint = f'; did you mean {", ".join(close)}?' if close else f'; known: {", ".join(CONVENTIONS)}'
            raise ValueError(f'{source}: unknown convention {key!r}{hint}')
        if not CONVENTIONS[key].check(value):
            raise ValueError(f'{source}: convention {key}: {value!r} is not {CONVENTIONS[key].values}')
        conv[key] = value
    for a, b in (('in_mean', 'in_std'), ('out_mean', 'out_std')):
        if (conv[a] is None) != (conv[b] is None):
            raise ValueError(f'{source}: conventions {a} and {b} go together (give both or neither)')
    for key in ('in_mean', 'in_std'):
        if conv[key] is not None and len(conv[key]) not in (1, conv['in_channels']):
            raise ValueError(f'{source}: convention {key} has {len(conv[key])} values for in_channels '
                             f'{conv["in_channels"]}')
    return conv


def _per_channel(values: List[float], like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(values, dtype=like.dtype, device=like.device).reshape(1, -1, 1, 1)


def check_min_size(h: int, w: int, conv: Mapping[str, Any], title: str, net_min: int = 1) -> None:
    need = max(int(conv['min_size']), int(net_min))
    if h < need or w < need:
        raise ValueError(f'{title}: a {w}x{h} (WxH) image is smaller than the method\'s minimum size '
                         f'{need}x{need}')


def padding_for(h: int, w: int, multiple: int) -> Tuple[int, int]:
    return (-h) % multiple, (-w) % multiple


def prepare_inputs(x: torch.Tensor, conv: Mapping[str, Any]) -> torch.Tensor:
    """One source, B x 1 x H x W in [0, 1] -> what the authors' network takes (channels, range,
    normalisation, padding)."""
    if conv['in_channels'] == 3:
        x = x.expand(-1, 3, -1, -1)
    low, high = conv['in_range']
    if (low, high) != (0, 1):
        x = x * (high - low) + low
    if conv['in_mean'] is not None:
        x = (x - _per_channel(conv['in_mean'], x)) / _per_channel(conv['in_std'], x)
    ph, pw = padding_for(x.shape[-2], x.shape[-1], conv['pad_multiple'])
    if ph or pw:
        mode = conv['pad_mode']
        if mode == 'reflect' and (ph >= x.shape[-2] or pw >= x.shape[-1]):
            mode = 'replicate'  # reflection needs more pixels than it pads
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    return x.contiguous()


def finish_output(raw: torch.Tensor, h: int, w: int, conv: Mapping[str, Any]) -> torch.Tensor:
    """The network's raw output -> fused grey, B x 1 x h x w, nominally in [0, 1] (not clamped)."""
    raw = raw[..., :h, :w]
    if conv['out_mean'] is not None:
        raw = raw * _per_channel(conv['out_std'], raw) + _per_channel(conv['out_mean'], raw)
    low, high = conv['out_range']
    if (low, high) != (0, 1):
        raw = (raw - low) / (high - low)
    if raw.shape[1] == 1:
        return raw
    if conv['out_channels'] == 'first':
        return raw[:, :1]
    if conv['out_channels'] == 'mean':
        return raw.mean(1, keepdim=True)
    return _luma8(raw, conv['rounding'])


def _luma8(rgb: torch.Tensor, rounding: str) -> torch.Tensor:
    """luma8: RGB clamped, quantised to 8 bits (floor: as ``astype(uint8)`` truncates), then
    OpenCV's fixed-point RGB->grey (``(R*4899 + G*9617 + B*1868 + 8192) >> 14``), back to [0, 1]."""
    scaled = rgb.clamp(0, 1) * 255
    q = (torch.floor(scaled) if rounding == 'floor' else torch.floor(scaled + 0.5)).to(torch.int32)
    grey = (q[:, 0:1] * 4899 + q[:, 1:2] * 9617 + q[:, 2:3] * 1868 + 8192) >> 14
    return (grey.to(rgb.dtype) + 0.25) / 255  # +0.25 level: any later rounding or floor keeps the level


# OpenCV stores 8-bit chroma around 128 (its YCrCb delta), the authors' float code around 0.5 of
# [0, 1]: centring on 128/255 makes an equal-channel ("grey") RGB image come back exactly grey
CHROMA_CENTRE = 128.0 / 255.0


def chroma_to_rgb(y: torch.Tensor, cr: torch.Tensor, cb: torch.Tensor) -> torch.Tensor:
    """(Y, Cr, Cb), 1 x H x W each, as read by OpenCV then /255 -> RGB, 3 x H x W (not clamped);
    BT.601 inverse as OpenCV's YCrCb2RGB."""
    cr, cb = cr - CHROMA_CENTRE, cb - CHROMA_CENTRE
    return torch.cat([y + 1.403 * cr, y - 0.714 * cr - 0.344 * cb, y + 1.773 * cb], 0)


def image_from_fused(fused_y: torch.Tensor, cr: Optional[torch.Tensor], cb: Optional[torch.Tensor], gray: bool,
                     conv: Mapping[str, Any]) -> np.ndarray:
    """Fused Y (1 x H x W, [0, 1]) + the visible chroma -> the uint8 image the authors would write
    (H x W grey or H x W x 3 RGB), by ``colour``, ``clamp``, ``out_rescale`` and ``rounding``."""
    img = fused_y.detach().float().cpu()
    if conv['colour'] == 'vis_chroma' and not gray and cr is not None:
        img = chroma_to_rgb(img, cr.float().cpu(), cb.float().cpu())
    if conv['clamp']:
        img = img.clamp(0, 1)
    if conv['out_rescale'] == 'minmax':
        low, high = img.min(), img.max()
        img = (img - low) / (high - low) if float(high - low) > 0 else torch.zeros_like(img)
    img = img.mul(255)
    img = torch.floor(img) if conv['rounding'] == 'floor' else torch.floor(img + 0.5)
    arr = img.clamp_(0, 255).to(torch.uint8).numpy()
    return arr[0] if arr.shape[0] == 1 else np.ascontiguousarray(arr.transpose(1, 2, 0))


def lcm(a: int, b: int) -> int:
    return a * b // math.gcd(a, b)
