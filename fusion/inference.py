"""Folder-to-folder fusion with the student, without YAML (used by ``scripts/inference.py``)."""
from __future__ import annotations

import os.path as osp
from typing import Callable, List, Optional, Union

import numpy as np
import torch
from tqdm import tqdm

from fusion.archs.sage_student_arch import SAGEStudent
from fusion.inferencer import FusionInferencer
from fusion.utils.checkpoint_util import extract_state_dict, load_checkpoint_file
from fusion.utils.file_util import check_output_location
from fusion.utils.img_util import fused_to_image, imwrite_atomic, list_pairs, read_pair


DEFAULT_MODEL = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), 'experiments', 'pretrained_models',
                         'sage_student_official.pth')


def resolve_device(device: Union[str, torch.device] = 'auto') -> torch.device:
    if str(device) == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    device = torch.device(device)
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise ValueError('--device: "cuda" was asked for, but no CUDA GPU is available (use --device cpu)')
    return device


def load_student(model_path: Optional[str] = None, device: Union[str, torch.device] = 'cpu',
                 param_key: Optional[str] = None, dim: int = 32) -> SAGEStudent:
    """SAGEStudent in eval mode with weights from ``model_path`` (released plain state dict or
    our ``{'params', 'params_ema'}`` checkpoints). ``param_key`` None: ``params`` or the plain
    state dict; given: it must be in the checkpoint (else an error listing the keys it has)."""
    model_path = model_path or DEFAULT_MODEL
    net = SAGEStudent(dim=dim)
    state = extract_state_dict(load_checkpoint_file(model_path), param_key or 'params', model_path,
                               required=param_key is not None)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f'{model_path}: not a SAGE student state dict for SAGEStudent(dim={dim}) '
                         f'({str(err).splitlines()[0]})') from err
    return net.to(resolve_device(device)).eval()


def image_writer(net: torch.nn.Module) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor, bool], np.ndarray]:
    """How the fused Y of ``net`` becomes the written uint8 image: the network's own
    ``image_from_fused(fused_y, cr, cb, gray)`` when it has one (a zoo method's save step:
    rounding, per-image rescaling ...), else clamp + the visible chroma (:func:`fused_to_image`)."""
    own = getattr(net, 'image_from_fused', None)
    if callable(own):
        return own
    return lambda fused, cr, cb, gray: fused_to_image(fused.clamp(0, 1), cr, cb, gray=gray)


def fuse_folders(ir_dir: str, vis_dir: str, output_dir: str, net: torch.nn.Module, ext: str = 'png',
                 fast: bool = True, batch_size: int = 4, tile_size: Optional[int] = None,
                 tile_overlap: Optional[int] = None, progress: bool = True, precision: str = 'fp32') -> List[str]:
    """Fuses every pair of ``ir_dir``/``vis_dir`` into ``output_dir/<pair name>.<ext>``.

    Pairs are checked before any work starts, so a missing partner fails fast; up to
    ``batch_size`` pairs of equal size are fused together; each output file is written
    atomically. ``tile_overlap`` None: the network's default (see :class:`FusionInferencer`);
    ``precision``: fp32 | bf16 | fp16 (CUDA), see :class:`FusionInferencer`. Returns the written paths.
    """
    check_output_location(output_dir, [('--ir', ir_dir), ('--vis', vis_dir)], what='--output')
    pairs = list_pairs(ir_dir, vis_dir)
    device = next(net.parameters()).device
    write_image = image_writer(net)
    runner = FusionInferencer(net, device, fast=fast, max_batch=batch_size, tile_size=tile_size,
                              tile_overlap=tile_overlap, precision=precision)
    written = []
    with tqdm(total=len(pairs), unit='pair', disable=not progress, desc='Fusing') as pbar:
        for start in range(0, len(pairs), batch_size):
            chunk = []
            for pair in pairs[start:start + batch_size]:
                ir, ycrcb, is_gray = read_pair(pair['ir_path'], pair['vis_path'])
                chunk.append((pair, torch.from_numpy(ycrcb).permute(2, 0, 1), torch.from_numpy(ir), is_gray))
            try:
                fused_list = runner([(vis[0], ir) for _, vis, ir, _ in chunk])
            except ValueError as err:  # e.g. an image smaller than a zoo method's minimum size
                raise ValueError(f'{", ".join(p["vis_path"] for p, _, _, _ in chunk)}: {err}') from err
            for (pair, vis, _, is_gray), fused in zip(chunk, fused_list):
                img = write_image(fused, vis[1:2], vis[2:3], is_gray)
                out_path = osp.join(output_dir, f'{pair["name"]}.{ext.lstrip(".")}')
                imwrite_atomic(img, out_path)
                written.append(out_path)
                pbar.update(1)
    return written
