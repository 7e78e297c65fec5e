"""FusionPairDataset: every IR/visible pair of two folders, full resolution, for test and
validation. No crop, no augmentation: what the deployed student sees."""
from __future__ import annotations

from typing import Dict

import torch
from basicsr.utils.registry import DATASET_REGISTRY
from torch.utils import data as data

from fusion.utils.img_util import list_pairs, read_pair
from fusion.utils.option_schema import Choice, Required


@DATASET_REGISTRY.register()
class FusionPairDataset(data.Dataset):
    """Options: ``dataroot_ir``, ``dataroot_vis`` (files paired by base name; extensions may
    differ). Each item: ``name``, ``ir`` (1xHxW), ``vis_y``, ``vis_cr``, ``vis_cb`` (1xHxW, in
    [0, 1]), ``vis_is_gray``, ``ir_path``, ``vis_path``."""

    OPTIONS = {'dataroot_ir': Required('str'), 'dataroot_vis': Required('str'), 'io_backend': {'type': Choice('disk')},
               'phase': 'str'}

    def __init__(self, opt: dict) -> None:
        super().__init__()
        self.opt = opt
        for key in ('dataroot_ir', 'dataroot_vis'):
            if not opt.get(key):
                raise ValueError(f'dataset "{opt.get("name")}": option {key} is required')
        self.pairs = list_pairs(opt['dataroot_ir'], opt['dataroot_vis'])

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> Dict:
        pair = self.pairs[index]
        ir, ycrcb, is_gray = read_pair(pair['ir_path'], pair['vis_path'])
        vis = torch.from_numpy(ycrcb).permute(2, 0, 1).contiguous()
        return {
            'name': pair['name'],
            'ir': torch.from_numpy(ir)[None],
            'vis_y': vis[0:1], 'vis_cr': vis[1:2], 'vis_cb': vis[2:3],
            'vis_is_gray': is_gray,
            'ir_path': pair['ir_path'], 'vis_path': pair['vis_path'],
        }
