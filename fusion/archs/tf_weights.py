"""What the TensorFlow-trained zoo networks share: reading their authors' TF1 checkpoints (or a
state dict converted from one) into strict PyTorch state dicts, and the reflection-padded 3x3
convolution their graphs use (``tf.pad(..., mode='REFLECT')`` then a ``VALID`` convolution).

Not an ``*_arch.py``: imported by the archs that need it (densefuse_arch, u2fusion_arch).
"""
from __future__ import annotations

import copy
import os
import os.path as osp
from typing import Dict, Mapping, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fusion.utils.tf_checkpoint import TFCheckpoint, TFCheckpointError, check_variables


class ReflectConv3x3(nn.Conv2d):
    """3x3 convolution after a 1-pixel reflection pad (TF's MirrorPad REFLECT + VALID conv)."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__(in_ch, out_ch, 3, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, (1, 1, 1, 1), mode='reflect'))


class ChannelsLastNet(nn.Module):
    """The deploy form of the TF-trained nets: an eval-mode copy in channels-last memory layout
    (NHWC, the layout their graphs ran in), which oneDNN convolves faster on CPU than NCHW;
    the same arithmetic, results equal within float rounding. Keeps the deploy attributes."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = copy.deepcopy(net).eval().to(memory_format=torch.channels_last)
        for attr in ('size_multiple', 'tile_margin', 'min_size'):
            setattr(self, attr, getattr(net, attr))

    def forward(self, vis: torch.Tensor, ir: torch.Tensor) -> torch.Tensor:
        out = self.net(vis.contiguous(memory_format=torch.channels_last),
                       ir.contiguous(memory_format=torch.channels_last))
        return out.contiguous()


def check_min_size(x: torch.Tensor, min_size: int, method: str) -> None:
    """One clear error for images too small for the network's reflection padding."""
    h, w = x.shape[-2:]
    if h < min_size or w < min_size:
        raise ValueError(f'{method} needs images of at least {min_size} x {min_size} px '
                         f'(reflection padding), got {h} x {w}')


LayerSpec = Tuple  # (TF scope, (in, out)[, kernel size[, (weight name, bias name)]])


def _spec(spec: LayerSpec) -> Tuple[str, int, int, int, str, str]:
    """(scope, in, out, kernel size, weight variable, bias variable) of a layer table entry:
    ``(scope, (in, out))`` is a 3x3 conv with TF's default ``kernel`` / ``bias`` names; a third and
    fourth item give another kernel size and the authors' own variable names."""
    scope, (cin, cout) = spec[0], spec[1]
    k = spec[2] if len(spec) > 2 else 3
    wname, bname = spec[3] if len(spec) > 3 else ('kernel', 'bias')
    return scope, cin, cout, k, f'{scope}/{wname}', f'{scope}/{bname}'


def conv_variables(layers: Mapping[str, LayerSpec]) -> Dict[str, Tuple[int, ...]]:
    """TF variable name -> TF shape (HWIO kernels) for a layer table ``torch prefix -> spec``."""
    expected: Dict[str, Tuple[int, ...]] = {}
    for spec in layers.values():
        _, cin, cout, k, wname, bname = _spec(spec)
        expected[wname] = (k, k, cin, cout)
        expected[bname] = (cout,)
    return expected


def tf_convs_to_state_dict(tensors: Mapping[str, np.ndarray],
                           layers: Mapping[str, LayerSpec]) -> Dict[str, torch.Tensor]:
    """Maps TF conv variables onto ``<prefix>.weight`` (HWIO -> OIHW) and ``<prefix>.bias``."""
    state: Dict[str, torch.Tensor] = {}
    for prefix, spec in layers.items():
        _, _, _, _, wname, bname = _spec(spec)
        kernel = np.ascontiguousarray(tensors[wname].transpose(3, 2, 0, 1))
        state[f'{prefix}.weight'] = torch.from_numpy(kernel.astype(np.float32))
        state[f'{prefix}.bias'] = torch.from_numpy(np.array(tensors[bname], dtype=np.float32))
    return state


def _expected_torch_shapes(layers: Mapping[str, LayerSpec]) -> Dict[str, Tuple[int, ...]]:
    shapes: Dict[str, Tuple[int, ...]] = {}
    for prefix, spec in layers.items():
        _, cin, cout, k, _, _ = _spec(spec)
        shapes[f'{prefix}.weight'] = (cout, cin, k, k)
        shapes[f'{prefix}.bias'] = (cout,)
    return shapes


def _is_torch_file(path: str) -> bool:
    if not osp.isfile(path):
        return False
    with open(path, 'rb') as f:
        head = f.read(4)
    return head[:2] == b'PK' or head[:1] == b'\x80'  # zip (torch >= 1.6) or legacy pickle


# every TF-trained method's layer table, registered when its arch module is imported: a file that
# fits another method's table is named as that method's
KNOWN_LAYOUTS: Dict[str, Mapping[str, LayerSpec]] = {}


def register_layout(method: str, layers: Mapping[str, LayerSpec]) -> None:
    KNOWN_LAYOUTS[method] = layers


def _other_method(method: str, fits) -> str:
    for other, layers in KNOWN_LAYOUTS.items():
        if other != method and fits(layers):
            return other
    return ''


def load_tf_method_weights(path: str, layers: Mapping[str, LayerSpec], method: str,
                           files: Sequence[str], source: str) -> Dict[str, torch.Tensor]:
    """The state dict of a TF-trained zoo network from ``path``: its authors' TF1 checkpoint (the
    prefix, any of its files, or the folder holding them) or a ``.pth`` written by
    ``scripts/convert_tf_checkpoint.py``. Every problem is one ``ValueError`` line naming the
    expected files and where they are published; a checkpoint of another TF graph names the
    variables expected and found."""
    where = f'{method} expects its TensorFlow checkpoint {" + ".join(files)} ({source})'
    if not osp.exists(path) and not osp.exists(path + '.index'):
        raise ValueError(f'{path}: not found; {where}')
    if _is_torch_file(path):
        return _load_converted(path, layers, method, where)
    try:
        ckpt = TFCheckpoint(path)
        shapes = ckpt.shapes()
        other = _other_method(method, lambda lay: all(shapes.get(k) == v for k, v in conv_variables(lay).items()))
        check_variables(shapes, conv_variables(layers), method, ckpt.index_path,
                        hint=f'It is a {other} checkpoint' if other else '')
        tensors = ckpt.read(list(conv_variables(layers)))
    except TFCheckpointError as err:
        raise ValueError(f'{err}; {where}') from None
    return tf_convs_to_state_dict(tensors, layers)


def _load_converted(path: str, layers: Mapping[str, LayerSpec], method: str,
                    where: str) -> Dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the same one-line error
        raise ValueError(f'{path}: not a readable PyTorch file ({type(err).__name__}); {where}') from None
    if isinstance(state, dict) and isinstance(state.get('params'), dict):
        state = state['params']
    expected = _expected_torch_shapes(layers)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f'{path}: not a state dict; {where}, or a .pth converted from it')
    missing = [k for k in expected if k not in state]
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != expected[k]]
    extra = [k for k in state if k not in expected]
    if missing or wrong or extra:
        other = _other_method(method, lambda lay: {k: tuple(v.shape) for k, v in state.items()}
                              == _expected_torch_shapes(lay))
        if other:
            raise ValueError(f'{path}: these are {other} weights, not {method}; {where}')
        found = ', '.join(f'{k} {list(v.shape)}' for k, v in list(state.items())[:4])
        raise ValueError(f'{path}: weights of another network, not {method} '
                         f'(missing {len(missing)}, other shapes {len(wrong)}, unexpected {len(extra)} tensors; '
                         f'found {found}{" ..." if len(state) > 4 else ""}); {where}')
    return {k: state[k].float() for k in expected}


# the zoo's TensorFlow-trained methods: --method name -> ARCH_REGISTRY type
TF_METHODS = {'densefuse': 'DenseFuseNet', 'u2fusion': 'U2FusionNet', 'sdnet': 'SDNetNet'}


def convert_tf_checkpoint(method: str, checkpoint: str, output: str) -> Dict[str, object]:
    """Converts a TF-trained zoo method's TF1 checkpoint into a PyTorch state dict at ``output``
    (written atomically; refused when ``output`` is one of the checkpoint's files). The state
    dict is loaded strictly into a fresh network first. Returns a summary (tensors, parameters)."""
    from basicsr.utils.registry import ARCH_REGISTRY

    from fusion.utils.file_util import atomic_torch_save, check_output_location
    from fusion.utils.tf_checkpoint import resolve_checkpoint_prefix

    if method not in TF_METHODS:
        raise ValueError(f'--method {method}: not a TensorFlow-trained zoo method; choose {", ".join(TF_METHODS)}')
    cls = ARCH_REGISTRY.get(TF_METHODS[method])
    prefix = resolve_checkpoint_prefix(checkpoint) if osp.exists(checkpoint) or osp.exists(checkpoint + '.index') \
        else checkpoint
    inputs = [('--checkpoint', checkpoint)] if osp.isfile(checkpoint) else []
    folder = osp.dirname(prefix) or '.'
    if osp.isdir(folder):
        base = osp.basename(prefix)
        inputs += [('--checkpoint', osp.join(folder, f)) for f in sorted(os.listdir(folder))
                   if f == base or f.startswith(base + '.')]
    check_output_location(output, inputs, what='--output', is_file=True)
    state = cls.published_state_dict(checkpoint)
    net = cls()
    net.load_state_dict(state, strict=True)
    atomic_torch_save(state, output)
    return {'method': method, 'network': TF_METHODS[method], 'checkpoint': prefix, 'output': output,
            'tensors': len(state), 'parameters': int(sum(v.numel() for v in state.values()))}
